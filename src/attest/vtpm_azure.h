// vtpm_azure: Azure confidential VM vTPM evidence (attest-internal), as trustee's az-snp-vtpm and
// az-tdx-vtpm attesters record it.
//
// Evidence.data is trustee's JSON, any of its versions:
//   v0:   {"quote": {"signature", "message", "pcrs"}, "report": [bytes], "vcek": PEM}            (SNP)
//         {"tpm_quote": {...}, "hcl_report": [bytes], "td_quote": [bytes]}                     (TDX)
//   v1/2: {"version": N, "tpm_quote": {"signature": hex, "message": hex, "pcrs": [hex x 24]},
//          "hcl_report": base64url, "vcek": base64url DER (SNP) | "td_quote": base64url (TDX)}
// plus an optional Veil field "report_data": hex(64) (see binding below). Unknown fields are refused.
//
// HCL report (little-endian; Azure "HCLA" layout): 0x000 "HCLA", u32 version, u32 report_size,
// u32 request_type, u32 status, 3 x u32 reserved; 0x020 hardware report (SNP report, 1184 bytes, or
// TDREPORT, 1024 bytes); 0x4C0 IGVM request data: u32 data_size, u32 version, u32 report_type
// (2 = SNP, 4 = TDX), u32 hash_type (1 = SHA-256, 2 = SHA-384, 3 = SHA-512), u32 var_size, then the
// runtime data (JSON) at 0x4D4.
//
// Chain of checks: hardware report verified (verify_snp_report / verify_tdx_quote) -> its report_data =
// H_hash_type(runtime data) zero-padded -> the runtime data's JWK "HCLAkPub" (RSA) is the vTPM AK ->
// the TPM quote (TPMS_ATTEST) carries an RSASSA-PKCS1-v1_5/SHA-256 signature by that AK -> nonce ->
// pcrDigest = SHA-256(PCR0..PCR23 of the SHA-256 bank).
//
// Report data binding: with "report_data" present the quote's extraData must be SHA-256(report_data)
// (as the tpm provider quotes) and Claims.report_data = report_data. Without it (as trustee records
// evidence) Claims.report_data = extraData zero-padded to 64 bytes (extraData <= 64 bytes), so a
// caller that sent nonce N expects N || zeros.
// Thread-safety: pure functions.
#pragma once

#include <optional>
#include <string>

#include "attest/formats.h"
#include "attest/tpm_quote.h"

namespace veil::attest::vtpm {

inline constexpr size_t kHclHwReportOffset = 0x20;
inline constexpr size_t kHclIgvmOffset = 0x4C0;
inline constexpr size_t kHclVarDataOffset = 0x4D4;
inline constexpr size_t kMaxEvidenceSize = 1u << 20;

struct AzEvidence {
  Bytes hcl_report;
  Bytes tpm_message;    // TPMS_ATTEST
  Bytes tpm_signature;  // raw RSASSA signature
  std::vector<Bytes> pcrs;  // SHA-256 bank, PCR0..23
  std::optional<Bytes> vcek;      // SNP: DER or PEM
  std::optional<Bytes> td_quote;  // TDX
  std::optional<ReportData> report_data;
};

struct HclReport {
  uint32_t version = 0;
  uint32_t report_type = 0;  // 2 SNP, 4 TDX
  uint32_t hash_type = 0;
  ByteView hw_report;  // SNP: 1184 bytes; TDX: TDREPORT 1024 bytes
  ByteView var_data;   // runtime data (JSON)
};

Result<AzEvidence> parse_evidence(ByteView json);
Result<HclReport> parse_hcl_report(ByteView data);

// The checks after the hardware report: `hw_report_data` is the verified hardware report's
// report_data. Returns claims with the TPM PCRs ("pcr0".."pcr23"), report_data and the AK's modulus
// hash as platform_id; the caller merges the hardware claims.
Result<Claims> verify_after_hardware(const AzEvidence& ev, const HclReport& hcl, const ReportData& hw_report_data);

}  // namespace veil::attest::vtpm
