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
  std::vector<std::string> looked{"-m/--model (not given)"};
  const char* env = std::getenv("VEIL_MODEL");
  const bool env_set = env && *env;
  if (env_set) {
    if (fs::is_regular_file(env, ec)) return fs::path(env);
    looked.push_back(fmt::format("$VEIL_MODEL={} (no such file)", env));
  } else {
    looked.push_back("$VEIL_MODEL (unset)");
  }
  fs::path shared = (fs::path(source_dir()) / ".." / "shared" / "models" / "stories260K" / "stories260K.gguf")
                        .lexically_normal();
  fs::path cache;
  if (const char* home = std::getenv("HOME"); home && *home) cache = fs::path(home) / ".cache" / "veil" / "models";
  // A $VEIL_MODEL naming a missing file is a mistake to report, never a reason to load another model.
  if (!env_set) {
    if (fs::is_regular_file(shared, ec)) return shared;
    if (!cache.empty() && fs::is_directory(cache, ec)) {
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
  }
  looked.push_back(shared.string());
  if (!cache.empty()) looked.push_back(cache.string() + "/*.gguf|*.vsm");
  std::string where;
  for (const auto& l : looked) where += (where.empty() ? "" : ", ") + l;
  return make_error(ErrorCode::kNotFound, "no model found; looked in: {}", where);
}

}  // namespace veil
