// Helpers shared by the key broker tests.
#pragma once

#include <string>

#include "core/core.h"
#include "support/temp_dir.h"

namespace veil::kbs::test {

// A release policy for simulated evidence with one allowed measurement and a 60-second freshness bound.
inline std::string sim_policy(const Bytes& measurement) {
  return fmt::format(
      R"({{"allowed_types": ["sim"], "allow_simulated": true, "allow_debug": false,)"
      R"( "expected_measurements": {{"sim": {{"measurement": ["{}"]}}}}, "max_evidence_age_seconds": 60}})",
      to_hex(measurement));
}

}  // namespace veil::kbs::test
