// libFuzzer target: the SEV-SNP report parser and the verifier without collateral.
#include <cstddef>
#include <cstdint>

#include "attest/formats.h"
#include "attest/snp.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  veil::ByteView in(data, size);
  auto r = veil::attest::parse_snp_report(in);
  if (r.ok()) {
    if (r->signed_region.size() != veil::attest::kSnpSignedSize || r->measurement.size() != 48) __builtin_trap();
    for (auto p : {veil::attest::SnpProduct::kMilan, veil::attest::SnpProduct::kTurin})
      (void)veil::attest::decode_snp_tcb(r->reported_tcb, p);
  }
  auto v = veil::attest::verify_snp_report(in, veil::attest::Collateral{}, std::chrono::system_clock::time_point{});
  if (v.ok()) __builtin_trap();
  return 0;
}
