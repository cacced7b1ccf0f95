#include "core/model_path.h"

#include <algorithm>
#include <cstdlib>
#include <system_error>
#include <vector>

#include "core/version.h"

namespace veil {

Result<std::filesystem::path> resolve_model_path(const std::string& flag_value) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!flag_value.empty()) {
    if (fs::is_regular_file(flag_value, ec)) return fs::path(flag_value);
    return make_error(ErrorCode::kNotFound, "model {}: no such file (from -m/--model)", flag_value);
  }
  std::vector<std::string> looked;
  if (const char* env = std::getenv("VEIL_MODEL"); env && *env) {
    if (fs::is_regular_file(env, ec)) return fs::path(env);
    looked.push_back(fmt::format("$VEIL_MODEL={}", env));
  } else {
    looked.push_back("$VEIL_MODEL (unset)");
  }
  fs::path shared = fs::path(source_dir()) / ".." / "shared" / "models" / "stories260K" / "stories260K.gguf";
  shared = shared.lexically_normal();
  if (fs::is_regular_file(shared, ec)) return shared;
  looked.push_back(shared.string());
  fs::path cache;
  if (const char* home = std::getenv("HOME"); home && *home) {
    cache = fs::path(home) / ".cache" / "veil" / "models";
    if (fs::is_directory(cache, ec)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::directory_iterator(cache, ec)) {
        auto ext = entry.path().extension();
        if (entry.is_regular_file(ec) && (ext == ".gguf" || ext == ".vsm")) found.push_back(entry.path());
      }
      if (!found.empty()) {
        std::sort(found.begin(), found.end());
        return found.front();
      }
    }
    looked.push_back(cache.string() + "/*.gguf|*.vsm");
  }
  std::string where;
  for (const auto& l : looked) where += (where.empty() ? "" : ", ") + l;
  return make_error(ErrorCode::kNotFound, "no model given and none found; looked in: -m/--model (not given), {}",
                    where);
}

}  // namespace veil
