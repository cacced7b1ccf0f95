// Adapters from the attest component onto the channel's attestation hooks.
#include <mutex>

#include "channel/channel.h"

namespace veil::channel {

Attester attester_from_provider(std::shared_ptr<attest::Provider> provider) {
  // Providers are not thread-safe (attest.h): serialise quotes from concurrent handshakes.
  auto mu = std::make_shared<std::mutex>();
  return [provider = std::move(provider), mu](const attest::ReportData& rd) -> Result<attest::Evidence> {
    if (!provider) return make_error(ErrorCode::kInvalidArgument, "attester: no provider");
    std::lock_guard<std::mutex> lock(*mu);
    return provider->quote(rd);
  };
}

EvidenceVerifier verifier_from_policy(attest::Policy policy, attest::Collateral collateral,
                                      std::function<std::chrono::system_clock::time_point()> now) {
  if (!now) now = [] { return std::chrono::system_clock::now(); };
  return [policy = std::move(policy), collateral = std::move(collateral), now = std::move(now)](
             const attest::Evidence& evidence, const attest::ReportData& expected) -> Result<attest::Claims> {
    return attest::verify_evidence(evidence, collateral, policy, expected, now());
  };
}

}  // namespace veil::channel
