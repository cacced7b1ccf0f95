// RA-TLS identity: a TLS key generated inside the TEE at startup and a self-signed certificate that carries
// the TEE's evidence in a non-critical X.509 extension (docs/api.md, "RA-TLS certificate").
//
// Extension OID: 2.25.17505852550387204589340577362206097946.1 — under the UUID arc 2.25 (ITU-T X.667:
// any UUID, written as an integer, is an OID arc its generator owns), UUID 0d2b812b-0874-4508-8da2-12cfd069821a,
// sub-arc 1 = "Veil attestation evidence v1". extnValue is the UTF-8 JSON
//   {"version": 1, "binding": "veil-report-data-v1", "evidence": {"type": ..., "data": base64},
//    "signing_keys": {"ed25519": hex, "secp256k1": hex}}
// whose evidence report_data = report_data_binding(nonce = empty, SHA-256(certificate SPKI DER), keys).
//
// Thread-safety: free functions, safe from any thread.
#pragma once

#include <string>
#include <vector>

#include "attest/attest.h"
#include "core/core.h"
#include "server/signing.h"

namespace veil::server {

// The evidence travels as an RFC 9999 conceptual message wrapper: extension id-pe-cmw, whose value is the DER
// UTF8String of a JSON CMW record [media type, base64url(attestation JSON), indicator 4 = Evidence].
inline constexpr const char* kRaTlsExtensionOid = "1.3.6.1.5.5.7.1.35";  // id-pe-cmw
inline constexpr const char* kCmwMediaType = "application/vnd.veil.attestation+json";
inline constexpr unsigned kCmwIndicatorEvidence = 4;  // bit 2 of the CMW indicator bitmap

struct TlsIdentity {
  std::string cert_pem;
  SecretBytes key_pem;  // PKCS#8 PEM of the TLS private key (never leaves the process)
  Bytes cert_der;
  crypto::Sha256Digest spki_sha256{};
  std::string extension_json;
};

// Generates an ECDSA P-256 key, quotes report_data over its SPKI and the signing keys, and self-signs a
// certificate for `dns_names` (and 127.0.0.1) valid for 30 days.
Result<TlsIdentity> make_tls_identity(attest::Provider& provider, const SigningKeys& keys,
                                      const std::vector<std::string>& dns_names);

// Reads the Veil evidence extension and the SPKI hash from a DER certificate (for verifying clients and
// tests). kNotFound when the extension is absent, kCorrupt when the certificate or the CMW record does not parse
// (the message names the field).
struct RaTlsCertificateInfo {
  std::string extension_json;
  crypto::Sha256Digest spki_sha256{};
};
Result<RaTlsCertificateInfo> read_ratls_certificate(ByteView cert_der);

// The attestation JSON shared by the extension and /v1/attestation.
std::string attestation_json(const attest::Evidence& evidence, const SigningKeys& keys, ByteView nonce,
                             const crypto::Sha256Digest& tls_spki_sha256);

}  // namespace veil::server
