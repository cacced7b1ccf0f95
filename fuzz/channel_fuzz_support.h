// FUZZ-ONLY attestation shared by the channel fuzz targets: evidence = report_data (no TEE; the targets exercise
// parsing and the state machine, not trust).
#pragma once

#include "channel/channel.h"

namespace veil::channel::fuzz {

inline Attester echo_attester() {
  return [](const attest::ReportData& rd) -> Result<attest::Evidence> {
    return attest::Evidence{attest::TeeType::kSim, Bytes(rd.begin(), rd.end())};
  };
}

inline EvidenceVerifier echo_verifier() {
  return [](const attest::Evidence& ev, const attest::ReportData& expected) -> Result<attest::Claims> {
    if (!ct_equal(ev.data, expected)) return make_error(ErrorCode::kSecurity, "fuzz evidence mismatch");
    return attest::Claims{};
  };
}

}  // namespace veil::channel::fuzz
