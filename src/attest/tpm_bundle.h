// tpm_bundle: Veil's TPM 2.0 evidence ("tpm" Evidence.data), attest-internal.
//
// A JSON object, every field required unless noted, unknown fields refused (hex = lower/upper hex):
//   {"format": "veil-tpm-quote/1",
//    "report_data": hex(64),                 the report_data this evidence binds
//    "ak_public": hex(TPMT_PUBLIC),          the attestation key (restricted, sign, fixedTPM)
//    "ak_cert": hex(DER),                    optional: an X.509 certificate for the AK
//    "quotes": [{"attest": hex(TPMS_ATTEST), "signature": hex(TPMT_SIGNATURE)}, ...]   1..4
//    "pcrs": {"sha256": {"0": hex, ...}, "sha1": {...}, ...}   the values of the quoted PCRs
//    "event_log": hex                        optional: TCG crypto-agile event log}
// Binding: every quote's extraData (qualifyingData) = SHA-256(report_data) (32 bytes fit every TPM's
// TPM2B_DATA, unlike the 64-byte report_data itself).
// Thread-safety: pure functions.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "attest/attest.h"
#include "attest/tpm_quote.h"

namespace veil::attest::tpm {

inline constexpr const char* kBundleFormat = "veil-tpm-quote/1";
inline constexpr size_t kMaxBundleSize = 40u << 20;
// Collateral items read by the tpm verifier.
inline constexpr const char* kAkPublicItem = "tpm_ak_public";  // a pinned AK: TPMT_PUBLIC bytes
inline constexpr const char* kAkCaItem = "tpm_ak_ca";          // AK CA certificates: PEM bundle or one DER

struct BundleQuote {
  Bytes attest;
  Bytes signature;
};

struct Bundle {
  ReportData report_data{};
  Bytes ak_public;
  std::optional<Bytes> ak_cert;
  std::vector<BundleQuote> quotes;
  PcrBanks pcrs;
  std::optional<Bytes> event_log;
};

Bytes qualifying_data(const ReportData& report_data);
std::string bundle_to_json(const Bundle& bundle);
Result<Bundle> bundle_from_json(std::string_view json);

// The algorithm id for a bank name ("sha1", "sha256", "sha384", "sha512").
Result<uint16_t> bank_from_name(std::string_view name);

}  // namespace veil::attest::tpm
