// Helpers shared by the key broker tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "core/core.h"

namespace veil::kbs::test {

// A fresh folder under the test temp dir; all are removed when the test binary exits.
inline std::filesystem::path temp_dir(const std::string& tag) {
  struct Cleanup {
    std::vector<std::filesystem::path> dirs;
    ~Cleanup() {
      std::error_code ec;
      for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
    }
  };
  static Cleanup cleanup;
  static std::atomic<int> n{0};
  auto d = std::filesystem::path(::testing::TempDir()) / fmt::format("veil_{}_{}_{}", tag, ::getpid(), n++);
  std::filesystem::create_directories(d);
  cleanup.dirs.push_back(d);
  return d;
}

// A release policy for simulated evidence with one allowed measurement and a 60-second freshness bound.
inline std::string sim_policy(const Bytes& measurement) {
  return fmt::format(
      R"({{"allowed_types": ["sim"], "allow_simulated": true, "allow_debug": false,)"
      R"( "expected_measurements": {{"sim": {{"measurement": ["{}"]}}}}, "max_evidence_age_seconds": 60}})",
      to_hex(measurement));
}

}  // namespace veil::kbs::test
