// Build information for `veil --version`.
#pragma once

#include <string>

namespace veil {

const char* version();
const char* git_commit();
const char* build_type();
const char* source_dir();  // the repository root at build time
std::string version_string();  // multi-line human summary

}  // namespace veil
