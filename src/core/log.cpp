#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace veil {

Result<LogFormat> parse_log_format(std::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return make_error(ErrorCode::kUsage, "--log-format: unknown format '{}' (expected text or json)", name);
}

Status init_logging(std::string_view level, LogFormat format) {
  auto lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return make_error(ErrorCode::kUsage,
                      "--log-level: unknown level '{}' (expected trace, debug, info, warn, error, critical or off)",
                      level);
  }
  auto logger = spdlog::stderr_color_mt("veil");
  if (!logger) logger = spdlog::get("veil");
  spdlog::set_default_logger(logger);
  spdlog::set_level(lvl);
  if (format == LogFormat::kJson) {
    // Messages are produced by Veil itself (ids, sizes, timings): they never hold quotes that need
    // escaping beyond what %v gives; see docs/security.md.
    spdlog::set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,"msg":"%v"})",
                        spdlog::pattern_time_type::utc);
  } else {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  return ok_status();
}

}  // namespace veil
