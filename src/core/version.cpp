#include "core/version.h"

#include <fmt/format.h>

#include "core/cpu.h"

namespace veil {

const char* version() { return VEIL_VERSION; }
const char* git_commit() { return VEIL_GIT_COMMIT; }
const char* build_type() { return VEIL_BUILD_TYPE; }
const char* source_dir() { return VEIL_SOURCE_DIR; }

std::string version_string() {
  return fmt::format("veil {}\ncommit: {}\nbuild: {}\ncpu: {}\n", version(), git_commit(), build_type(),
                     cpu_features_string());
}

}  // namespace veil
