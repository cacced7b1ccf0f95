// X.509 helpers for the TDX and SNP verifiers (see pki.h).
#include "attest/pki.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cstring>

#include "crypto/crypto.h"

namespace veil::attest::pki {

namespace {

struct BioFree { void operator()(BIO* p) const { BIO_free(p); } };
struct StoreFree { void operator()(X509_STORE* p) const { X509_STORE_free(p); } };
struct StoreCtxFree { void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); } };
struct StackFree { void operator()(STACK_OF(X509)* p) const { sk_X509_free(p); } };
struct CrlStackFree { void operator()(STACK_OF(X509_CRL)* p) const { sk_X509_CRL_free(p); } };
struct ObjFree { void operator()(ASN1_OBJECT* p) const { ASN1_OBJECT_free(p); } };

bool looks_pem(ByteView data) {
  std::string_view s = as_chars(data);
  return s.find("-----BEGIN") != std::string_view::npos;
}

std::unique_ptr<BIO, BioFree> mem_bio(ByteView data) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

}  // namespace

Result<CertPtr> parse_cert(ByteView data, std::string_view what) {
  if (data.empty() || data.size() > (1u << 20)) return make_error(ErrorCode::kCorrupt, "{}: empty or oversized certificate", what);
  X509* cert = nullptr;
  if (looks_pem(data)) {
    auto bio = mem_bio(data);
    cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
  } else {
    const unsigned char* p = data.data();
    cert = d2i_X509(nullptr, &p, static_cast<long>(data.size()));
  }
  ERR_clear_error();
  if (cert == nullptr) return make_error(ErrorCode::kCorrupt, "{}: not a valid X.509 certificate (DER or PEM)", what);
  return CertPtr(cert);
}

Result<std::vector<CertPtr>> parse_pem_chain(ByteView pem, std::string_view what) {
  std::vector<CertPtr> out;
  std::string_view s = as_chars(pem);
  // Strip trailing NULs (the TDX quote's certification data often ends in one).
  while (!s.empty() && s.back() == '\0') s.remove_suffix(1);
  constexpr std::string_view kBegin = "-----BEGIN CERTIFICATE-----";
  constexpr std::string_view kEnd = "-----END CERTIFICATE-----";
  size_t pos = 0;
  while (true) {
    size_t b = s.find(kBegin, pos);
    if (b == std::string_view::npos) break;
    size_t e = s.find(kEnd, b);
    if (e == std::string_view::npos)
      return make_error(ErrorCode::kCorrupt, "{}: unterminated PEM certificate at byte {}", what, b);
    e += kEnd.size();
    auto bio = mem_bio(as_bytes(s.substr(b, e - b)));
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    ERR_clear_error();
    if (cert == nullptr) return make_error(ErrorCode::kCorrupt, "{}: invalid PEM certificate at byte {}", what, b);
    out.emplace_back(cert);
    pos = e;
    if (out.size() > 8) return make_error(ErrorCode::kCorrupt, "{}: more than 8 certificates", what);
  }
  if (out.empty()) return make_error(ErrorCode::kCorrupt, "{}: no PEM certificate found", what);
  return out;
}

Result<CrlPtr> parse_crl(ByteView data, std::string_view what) {
  if (data.empty() || data.size() > (16u << 20)) return make_error(ErrorCode::kCorrupt, "{}: empty or oversized CRL", what);
  X509_CRL* crl = nullptr;
  if (looks_pem(data)) {
    auto bio = mem_bio(data);
    crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr);
  } else {
    const unsigned char* p = data.data();
    crl = d2i_X509_CRL(nullptr, &p, static_cast<long>(data.size()));
  }
  ERR_clear_error();
  if (crl == nullptr) return make_error(ErrorCode::kCorrupt, "{}: not a valid X.509 CRL (DER or PEM)", what);
  return CrlPtr(crl);
}

Bytes cert_der(X509* cert) {
  unsigned char* buf = nullptr;
  int n = i2d_X509(cert, &buf);
  if (n <= 0) return {};
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

Bytes cert_sha256(X509* cert) {
  auto d = crypto::sha256(cert_der(cert));
  return Bytes(d.begin(), d.end());
}

Status verify_chain(X509* leaf, const std::vector<X509*>& intermediates, X509* root, const std::vector<X509_CRL*>& crls,
                    TimePoint now, std::string_view what) {
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  std::unique_ptr<STACK_OF(X509), StackFree> untrusted(sk_X509_new_null());
  std::unique_ptr<STACK_OF(X509_CRL), CrlStackFree> crl_stack(sk_X509_CRL_new_null());
  if (!store || !ctx || !untrusted || !crl_stack) return make_error(ErrorCode::kInternal, "{}: out of memory", what);
  if (X509_STORE_add_cert(store.get(), root) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kInternal, "{}: cannot add the trust anchor", what);
  }
  for (X509* c : intermediates) sk_X509_push(untrusted.get(), c);
  for (X509_CRL* c : crls) sk_X509_CRL_push(crl_stack.get(), c);
  if (X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kInternal, "{}: cannot initialise chain verification", what);
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_time(param, std::chrono::system_clock::to_time_t(now));
  unsigned long flags = 0;
  if (!crls.empty()) {
    X509_STORE_CTX_set0_crls(ctx.get(), crl_stack.get());
    flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
  }
  X509_VERIFY_PARAM_set_flags(param, flags);
  int rc = X509_verify_cert(ctx.get());
  if (rc != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: certificate chain rejected at depth {}: {}", what, depth,
                      X509_verify_cert_error_string(err));
  }
  ERR_clear_error();
  return ok_status();
}

Result<Bytes> ec_public_point(X509* cert, size_t coordinate_bytes, std::string_view what) {
  EVP_PKEY* pk = X509_get0_pubkey(cert);
  if (pk == nullptr || EVP_PKEY_get_base_id(pk) != EVP_PKEY_EC) {
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: certificate key is not an EC key", what);
  }
  Bytes out(1 + 2 * coordinate_bytes);
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out.data(), out.size(), &len) != 1 ||
      len != out.size() || out[0] != 0x04) {
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: certificate key is not an uncompressed {}-bit EC point", what, coordinate_bytes * 8);
  }
  return out;
}

std::optional<Bytes> extension_value(X509* cert, const char* oid) {
  std::unique_ptr<ASN1_OBJECT, ObjFree> obj(OBJ_txt2obj(oid, 1));
  if (!obj) {
    ERR_clear_error();
    return std::nullopt;
  }
  int idx = X509_get_ext_by_OBJ(cert, obj.get(), -1);
  if (idx < 0) return std::nullopt;
  X509_EXTENSION* ext = X509_get_ext(cert, idx);
  ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(ext);
  if (data == nullptr) return std::nullopt;
  return Bytes(data->data, data->data + data->length);
}

Result<Tlv> der_next(ByteView& in, std::string_view what) {
  if (in.size() < 2) return make_error(ErrorCode::kCorrupt, "{}: truncated DER", what);
  Tlv t;
  t.tag = in[0];
  if ((t.tag & 0x1f) == 0x1f) return make_error(ErrorCode::kCorrupt, "{}: multi-byte DER tag", what);
  size_t len = in[1];
  size_t hdr = 2;
  if (len & 0x80) {
    size_t n = len & 0x7f;
    if (n == 0 || n > 4 || in.size() < 2 + n) return make_error(ErrorCode::kCorrupt, "{}: bad DER length", what);
    len = 0;
    for (size_t i = 0; i < n; ++i) len = (len << 8) | in[2 + i];
    hdr += n;
  }
  if (len > in.size() - hdr) return make_error(ErrorCode::kCorrupt, "{}: DER length {} exceeds the {} bytes left", what, len, in.size() - hdr);
  t.content = in.subspan(hdr, len);
  in = in.subspan(hdr + len);
  return t;
}

Result<uint64_t> der_uint(ByteView c, std::string_view what) {
  if (c.empty()) return make_error(ErrorCode::kCorrupt, "{}: empty INTEGER", what);
  if (c[0] & 0x80) return make_error(ErrorCode::kCorrupt, "{}: negative INTEGER", what);
  while (c.size() > 1 && c[0] == 0) c = c.subspan(1);
  if (c.size() > 8) return make_error(ErrorCode::kCorrupt, "{}: INTEGER too large", what);
  uint64_t v = 0;
  for (uint8_t b : c) v = (v << 8) | b;
  return v;
}

std::string der_oid_text(ByteView c) {
  std::string out;
  uint64_t v = 0;
  bool first = true;
  for (uint8_t b : c) {
    v = (v << 7) | (b & 0x7f);
    if (b & 0x80) continue;
    if (first) {
      uint64_t a = v < 40 ? 0 : (v < 80 ? 1 : 2);
      out = std::to_string(a) + "." + std::to_string(v - a * 40);
      first = false;
    } else {
      out += "." + std::to_string(v);
    }
    v = 0;
  }
  return out;
}

}  // namespace veil::attest::pki
