#include "support/sim_tee.h"

#include <chrono>
#include <functional>
#include <string>

#include "attest/sim.h"

namespace veil::testsupport {

Result<SimTee> make_sim_tee(const std::filesystem::path& dir, std::string_view config) {
  attest::ProviderOptions options;
  options.sim_platform_key = dir / "platform.key";
  options.sim_create_key = true;
  if (!config.empty()) {
    options.sim_config = dir / ("sim-config-" + std::to_string(std::hash<std::string_view>{}(config)));
    VEIL_TRY(write_file_atomic(options.sim_config, as_bytes(config)));
  }
  SimTee tee;
  VEIL_ASSIGN_OR_RETURN(auto provider, attest::make_provider("sim", options));
  tee.provider = std::move(provider);
  VEIL_ASSIGN_OR_RETURN(tee.collateral.items["sim_platform_public_key"],
                        attest::sim_platform_public_key(options.sim_platform_key, false));
  VEIL_ASSIGN_OR_RETURN(attest::Evidence evidence, tee.provider->quote(attest::ReportData{}));
  VEIL_ASSIGN_OR_RETURN(attest::Claims claims, attest::verifier_for(attest::TeeType::kSim)
                                                   ->verify(evidence, tee.collateral, std::chrono::system_clock::now()));
  tee.measurement = claims.measurements.at("measurement");
  return tee;
}

attest::Policy sim_policy(const Bytes& measurement) {
  attest::Policy p;
  p.allowed_types = {attest::TeeType::kSim};
  p.allow_simulated = true;
  p.expected_measurements[attest::TeeType::kSim]["measurement"] = {measurement};
  p.max_evidence_age = std::chrono::seconds(60);
  return p;
}

attest::Policy SimTee::policy() const { return sim_policy(measurement); }

}  // namespace veil::testsupport
