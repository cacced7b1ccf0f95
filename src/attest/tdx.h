// attest internal: Intel TDX DCAP quote v4/v5 parsing (Intel TDX DCAP Quoting Library API, appendix
// "Quote Format"). Offsets are documented in docs/attestation.md. Parsing checks structure only;
// verify_tdx_quote (formats.h) does the cryptography.
#pragma once

#include <array>
#include <memory>

#include "attest/formats.h"

namespace veil::attest {

struct TdxQuote {
  uint16_t version = 0;         // 4 or 5
  uint16_t att_key_type = 0;    // 2 = ECDSA-P256
  uint32_t tee_type = 0;        // 0x81 = TDX
  Bytes qe_vendor_id;           // 16
  uint16_t body_type = 2;       // 2 = TD report 1.0 (584 B), 3 = TD report 1.5 (648 B)
  size_t body_offset = 0;
  size_t signed_end = 0;        // header + body: the bytes the attestation key signs
  // TD report body
  std::array<uint8_t, 16> tee_tcb_svn{};
  Bytes mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam, mr_td, mr_config_id, mr_owner,
      mr_owner_config;
  std::array<Bytes, 4> rtmr;
  ReportData report_data{};
  std::array<uint8_t, 16> tee_tcb_svn2{};  // TD 1.5 only
  Bytes mr_servicetd;                      // TD 1.5 only
  // Signature data
  ByteView signed_region;
  Bytes signature;         // 64, r || s
  Bytes attestation_key;   // 64, X || Y
  Bytes qe_report;         // 384, SGX report body
  Bytes qe_report_signature;  // 64
  Bytes qe_auth_data;
  uint16_t qe_cert_type = 0;  // 5 = PCK chain (PEM)
  Bytes pck_chain_pem;
  size_t total_size = 0;      // bytes used; anything after is ignored

  bool debug() const { return (td_attributes[0] & 0x01) != 0; }
};

// The quote's structure, or kCorrupt naming the field and byte offset. Borrowed views point into `data`.
Result<TdxQuote> parse_tdx_quote(ByteView data);

// Collateral checked once and reused for many quotes: the CRLs parsed, TCB info and QE identity
// signatures, issuer chains (to the pinned Intel SGX Root CA) and validity verified at `now`.
// verify_tdx_quote(quote, collateral, now) == prepare_tdx_collateral + verify_tdx_quote_prepared.
struct PreparedTdxCollateral;
Result<std::shared_ptr<const PreparedTdxCollateral>> prepare_tdx_collateral(const Collateral& collateral, TimePoint now);
Result<Claims> verify_tdx_quote_prepared(ByteView quote, const PreparedTdxCollateral& prepared, TimePoint now);

// Only the cryptographic core, for quotes that come without Intel collateral (tests, the Azure TDX
// vTPM path's diagnostics): quote signature, QE report signature, attestation-key binding and the PCK
// chain to the pinned Intel SGX Root CA at `now`. No CRL, TCB info or QE identity check, so never a
// verdict on its own: verify_tdx_quote is the verifier.
Status verify_tdx_quote_signatures(ByteView quote, TimePoint now);

}  // namespace veil::attest
