// attest internal: the factories of every verifier and provider, and the lower-level format
// verifiers that composite formats reuse (the Azure vTPM verifiers check an SNP report or a TDX
// quote carried in the HCL report with verify_snp_report / verify_tdx_quote).
//
// registry.cpp is the one table that maps TeeType / provider names to these factories.
// Not part of the public interface: code outside src/attest uses attest.h only.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "attest/attest.h"

namespace veil::attest {

using TimePoint = std::chrono::system_clock::time_point;

// ---- Verifiers (stateless; one shared instance each lives in registry.cpp) -------------------------
std::unique_ptr<Verifier> make_sim_verifier();
std::unique_ptr<Verifier> make_tdx_verifier();
std::unique_ptr<Verifier> make_snp_verifier();
// attest-B:
std::unique_ptr<Verifier> make_nitro_verifier();
std::unique_ptr<Verifier> make_tpm_verifier();
std::unique_ptr<Verifier> make_az_snp_vtpm_verifier();
std::unique_ptr<Verifier> make_az_tdx_vtpm_verifier();

// ---- Providers --------------------------------------------------------------------------------------
Result<std::unique_ptr<Provider>> make_sim_provider(const ProviderOptions& options);
Result<std::unique_ptr<Provider>> make_tdx_provider(const ProviderOptions& options);  // configfs-tsm
Result<std::unique_ptr<Provider>> make_snp_provider(const ProviderOptions& options);  // configfs-tsm
// attest-B:
Result<std::unique_ptr<Provider>> make_nitro_provider(const ProviderOptions& options);
Result<std::unique_ptr<Provider>> make_tpm_provider(const ProviderOptions& options);

// ---- Lower-level format verifiers -------------------------------------------------------------------
// Intel TDX DCAP quote v4 or v5: every check of the tdx verifier (signatures, QE binding, PCK chain to
// the pinned Intel SGX Root CA, CRLs, TCB info and QE identity, TCB status). Collateral items:
// "tcb_info", "tcb_info_signature", "tcb_info_issuer_chain", "qe_identity", "qe_identity_signature",
// "qe_identity_issuer_chain", "pck_crl", "pck_crl_issuer_chain", "root_ca_crl" (docs/attestation.md).
// Bytes after the signature data are ignored. kSecurity for a failed check, kCorrupt for bad encoding.
Result<Claims> verify_tdx_quote(ByteView quote, const Collateral& collateral, TimePoint now);

// AMD SEV-SNP attestation report (1184 bytes; versions 2, 3, 5): VCEK/VLEK signature, chain to the
// pinned ARK of the product, reported TCB against the certificate, policy bits. Collateral items:
// "vcek" or "vlek" (DER or PEM), "ask_ark" / "asvk_ark" (PEM: ASK or ASVK, then ARK), optional
// "ark_crl" (DER). Fails on a debug-enabled guest only through check_policy (claims.debug).
Result<Claims> verify_snp_report(ByteView report, const Collateral& collateral, TimePoint now);

// Collateral item names (the verifiers and the CLI's collateral loader share them).
namespace item {
inline constexpr const char* kTcbInfo = "tcb_info";
inline constexpr const char* kTcbInfoSignature = "tcb_info_signature";
inline constexpr const char* kTcbInfoIssuerChain = "tcb_info_issuer_chain";
inline constexpr const char* kQeIdentity = "qe_identity";
inline constexpr const char* kQeIdentitySignature = "qe_identity_signature";
inline constexpr const char* kQeIdentityIssuerChain = "qe_identity_issuer_chain";
inline constexpr const char* kPckCrl = "pck_crl";
inline constexpr const char* kPckCrlIssuerChain = "pck_crl_issuer_chain";
inline constexpr const char* kRootCaCrl = "root_ca_crl";
inline constexpr const char* kVcek = "vcek";
inline constexpr const char* kVlek = "vlek";
inline constexpr const char* kAskArk = "ask_ark";
inline constexpr const char* kAsvkArk = "asvk_ark";
inline constexpr const char* kArkCrl = "ark_crl";
inline constexpr const char* kSimPlatformPublicKey = "sim_platform_public_key";
}  // namespace item

// Collateral files (docs/attestation.md): a JSON object of named items whose values are base64
// strings, e.g. {"vcek": "MIIF...", "ask_ark": "LS0t..."}. A file in Intel's / dcap-qvl's
// QuoteCollateralV3 shape (hex CRLs, tcb_info as a JSON string, hex signatures) is also accepted.
Result<Collateral> collateral_from_json(std::string_view json);
std::string collateral_to_json(const Collateral& collateral);

// RFC 3339 UTC time ("2025-09-01T00:00:00Z", fractional seconds allowed) or unix seconds.
Result<TimePoint> parse_time(std::string_view text);
std::string format_time(TimePoint t);

// Base64 (standard alphabet, padding required; whitespace rejected).
std::string base64_encode(ByteView data);
Result<Bytes> base64_decode(std::string_view text);

}  // namespace veil::attest
