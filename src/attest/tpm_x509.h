// tpm_x509: the X.509 work shared by the Nitro, TPM and vTPM verifiers (attest-internal).
// Certificates are parsed from DER or PEM with size bounds; a chain is verified with OpenSSL against
// exactly one trusted root given by the caller, at the caller's time, with no network and no
// system trust store.
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <memory>
#include <string_view>
#include <vector>

#include <openssl/x509.h>

#include "core/core.h"

namespace veil::attest::x509 {

struct X509Free { void operator()(X509* p) const { X509_free(p); } };
using CertPtr = std::unique_ptr<X509, X509Free>;
struct PkeyFree { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

inline constexpr size_t kMaxCertSize = 16 * 1024;

// One DER certificate (the whole input, no trailing bytes).
Result<CertPtr> parse_der(ByteView der, std::string_view what);
// A PEM bundle (one or more CERTIFICATE blocks) or a single DER certificate; at most 16 certificates.
Result<std::vector<CertPtr>> parse_bundle(ByteView data, std::string_view what);

Bytes to_der(X509* cert);

// Verifies leaf <- intermediates... <- root at `now`: signatures, validity periods, CA basic
// constraints and path length. `root` is the only trust anchor. kSecurity with the depth and reason.
Status verify_chain(X509* leaf, const std::vector<X509*>& intermediates, X509* root,
                    std::chrono::system_clock::time_point now, std::string_view what);

// True when `issuer`'s key verifies `subject`'s signature.
bool signed_by(X509* subject, X509* issuer);

// The certificate's public key (owned).
PkeyPtr public_key(X509* cert);

// EC key: the curve's short name ("P-384", "P-256") and its uncompressed point 0x04||X||Y.
Result<std::pair<std::string, Bytes>> ec_point(EVP_PKEY* key, std::string_view what);
// RSA key: big-endian modulus and exponent.
Result<std::pair<Bytes, Bytes>> rsa_numbers(EVP_PKEY* key, std::string_view what);

}  // namespace veil::attest::x509
