#include "core/version.h"

#include <fmt/format.h>

#include "core/cpu.h"

namespace veil {
namespace detail {
extern const char kGitCommit[];  // build/generated/git_commit.cpp (cmake/GitCommit.cmake)
}

const char* version() { return VEIL_VERSION; }
const char* git_commit() { return detail::kGitCommit; }
const char* build_type() { return VEIL_BUILD_TYPE; }
const char* source_dir() { return VEIL_SOURCE_DIR; }

std::string version_string() {
  return fmt::format("veil {}\ncommit: {}\nbuild: {}\ncpu: {}\n", version(), git_commit(), build_type(),
                     cpu_features_string());
}

}  // namespace veil
