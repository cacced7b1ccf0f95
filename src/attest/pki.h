// attest internal: X.509 chains, CRLs and a small DER reader over OpenSSL 3 (used by the TDX and
// SNP verifiers). Every function validates its input and names `what` in its errors.
#pragma once

#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attest/formats.h"

namespace veil::attest::pki {

struct X509Free { void operator()(X509* p) const { X509_free(p); } };
struct CrlFree { void operator()(X509_CRL* p) const { X509_CRL_free(p); } };
using CertPtr = std::unique_ptr<X509, X509Free>;
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;

// One certificate, DER or PEM.
Result<CertPtr> parse_cert(ByteView data, std::string_view what);
// Every certificate of a PEM bundle, in order (a trailing NUL or text between blocks is allowed).
Result<std::vector<CertPtr>> parse_pem_chain(ByteView pem, std::string_view what);
// A CRL, DER or PEM.
Result<CrlPtr> parse_crl(ByteView data, std::string_view what);

Bytes cert_der(X509* cert);
Bytes cert_sha256(X509* cert);  // SHA-256 of the DER encoding (the pinning fingerprint)

// Verifies leaf -> intermediates -> root at `now`, where `root` is the only trust anchor. When `crls`
// is not empty every certificate in the chain must be covered by a valid CRL and not be revoked.
// kSecurity naming `what` and OpenSSL's reason (expired, revoked, bad signature, ...).
Status verify_chain(X509* leaf, const std::vector<X509*>& intermediates, X509* root, const std::vector<X509_CRL*>& crls,
                    TimePoint now, std::string_view what);

// The certificate's EC public key as an uncompressed point (0x04 || X || Y), with its curve size check.
Result<Bytes> ec_public_point(X509* cert, size_t coordinate_bytes, std::string_view what);

// The DER content of a certificate extension by dotted OID, or nullopt when absent.
std::optional<Bytes> extension_value(X509* cert, const char* oid);

// Minimal DER reader: one TLV from the front of `in` (single-byte tags, definite lengths only).
struct Tlv {
  uint8_t tag = 0;
  ByteView content;
};
Result<Tlv> der_next(ByteView& in, std::string_view what);
// A DER INTEGER's content as an unsigned value (at most 8 significant bytes).
Result<uint64_t> der_uint(ByteView content, std::string_view what);
// The dotted text of a DER OBJECT IDENTIFIER's content.
std::string der_oid_text(ByteView content);

}  // namespace veil::attest::pki
