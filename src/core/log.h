// Logging through spdlog. Use spdlog::info/warn/... directly after init_logging().
//
// Review rule (docs/security.md): no prompt, completion, token id sequence, key, API key or
// evidence secret is ever passed to a logger, a metric or an error message. Log ids, sizes,
// counts and timings only.
#pragma once

#include <string>
#include <string_view>

#include "core/result.h"

namespace veil {

enum class LogFormat { kText, kJson };

// level: trace, debug, info, warn, error, critical, off. Logs go to stderr.
Status init_logging(std::string_view level, LogFormat format);
Result<LogFormat> parse_log_format(std::string_view name);

}  // namespace veil
