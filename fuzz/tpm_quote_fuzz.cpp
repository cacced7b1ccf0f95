// Fuzz target: the TPM 2.0 parsers (TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC), the crypto-agile event
// log parser and replay, the HCL report parser and the Veil TPM / Azure vTPM evidence JSON parsers.
#include <cstdint>
#include <cstdlib>

#include "attest/tpm_bundle.h"
#include "attest/tpm_eventlog.h"
#include "attest/tpm_structs.h"
#include "attest/vtpm_azure.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil::attest;
  veil::ByteView in(data, size);
  auto a = tpm::parse_attest(in);
  if (a.ok() && (a->extra_data.size() > 64 || a->selections.empty())) std::abort();
  (void)tpm::parse_signature(in);
  auto p = tpm::parse_public_any(in);
  if (p.ok()) (void)tpm::object_name(*p);
  auto log = tpm::parse_event_log(in);
  if (log.ok()) {
    for (const auto& [alg, sz] : log->digest_sizes) (void)tpm::replay(*log, alg);
  }
  (void)vtpm::parse_hcl_report(in);
  if (size < 64 * 1024) {
    (void)tpm::bundle_from_json(veil::as_chars(in));
    (void)vtpm::parse_evidence(in);
  }
  return 0;
}
