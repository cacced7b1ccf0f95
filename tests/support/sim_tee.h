// Test and benchmark support (never linked into veil): a simulated TEE set up the way attested tests need it.
#pragma once

#include <filesystem>
#include <memory>
#include <string_view>

#include "attest/attest.h"
#include "core/core.h"

namespace veil::testsupport {

// The "sim" provider over a platform key in a folder of the caller's, the collateral that verifies its evidence,
// and its measurement (learned from one quote that the sim verifier itself checked).
struct SimTee {
  std::shared_ptr<attest::Provider> provider;
  attest::Collateral collateral;
  Bytes measurement;
  // Allows simulated evidence with exactly this provider's measurement (sim_policy below).
  attest::Policy policy() const;
};

// The platform key is dir / "platform.key", created (0600) when missing, so every SimTee over one folder is one
// simulated machine. `config`, when given, is written to a file in `dir` and folded into the measurement: two
// workloads with different configurations have different measurements, the same configuration the same.
Result<SimTee> make_sim_tee(const std::filesystem::path& dir, std::string_view config = {});

// A policy allowing simulated evidence with `measurement`, at most 60 seconds old.
attest::Policy sim_policy(const Bytes& measurement);

}  // namespace veil::testsupport
