// libFuzzer target: the TDX quote parser and the verifier's checks that precede the cryptography.
#include <cstddef>
#include <cstdint>

#include "attest/formats.h"
#include "attest/tdx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  veil::ByteView in(data, size);
  auto q = veil::attest::parse_tdx_quote(in);
  if (q.ok()) {
    // Invariants the verifier relies on.
    if (q->signed_end > size || q->total_size > size || q->signature.size() != 64 || q->qe_report.size() != 384) __builtin_trap();
  }
  // The full verifier with no collateral must refuse without crashing.
  auto r = veil::attest::verify_tdx_quote(in, veil::attest::Collateral{}, std::chrono::system_clock::time_point{});
  if (r.ok()) __builtin_trap();
  return 0;
}
