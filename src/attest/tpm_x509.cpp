#include "attest/tpm_x509.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include <ctime>

namespace veil::attest::x509 {
namespace {
struct StoreFree { void operator()(X509_STORE* p) const { X509_STORE_free(p); } };
struct StoreCtxFree { void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); } };
struct StackFree { void operator()(STACK_OF(X509)* p) const { sk_X509_free(p); } };
struct BioFree { void operator()(BIO* p) const { BIO_free(p); } };
struct BnFree { void operator()(BIGNUM* p) const { BN_free(p); } };
}  // namespace

Result<CertPtr> parse_der(ByteView der, std::string_view what) {
  if (der.empty() || der.size() > kMaxCertSize) {
    return make_error(ErrorCode::kCorrupt, "{}: certificate of {} bytes (1..{} accepted)", what, der.size(),
                      kMaxCertSize);
  }
  const unsigned char* p = der.data();
  CertPtr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  ERR_clear_error();
  if (!cert) return make_error(ErrorCode::kCorrupt, "{}: not a DER X.509 certificate", what);
  if (static_cast<size_t>(p - der.data()) != der.size()) {
    return make_error(ErrorCode::kCorrupt, "{}: {} trailing bytes after the DER certificate", what,
                      der.size() - static_cast<size_t>(p - der.data()));
  }
  return cert;
}

Result<std::vector<CertPtr>> parse_bundle(ByteView data, std::string_view what) {
  std::vector<CertPtr> out;
  std::string_view text = as_chars(data);
  if (text.find("-----BEGIN CERTIFICATE-----") == std::string_view::npos) {
    VEIL_ASSIGN_OR_RETURN(auto c, parse_der(data, what));
    out.push_back(std::move(c));
    return out;
  }
  if (data.size() > 16 * kMaxCertSize) return make_error(ErrorCode::kCorrupt, "{}: PEM bundle too large", what);
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (!bio) return make_error(ErrorCode::kInternal, "{}: BIO_new_mem_buf failed", what);
  while (true) {
    X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (!c) break;
    out.emplace_back(c);
    if (out.size() > 16) return make_error(ErrorCode::kCorrupt, "{}: more than 16 certificates", what);
  }
  unsigned long err = ERR_peek_last_error();
  ERR_clear_error();
  if (out.empty() || (err != 0 && ERR_GET_REASON(err) != PEM_R_NO_START_LINE)) {
    return make_error(ErrorCode::kCorrupt, "{}: malformed PEM certificate #{}", what, out.size() + 1);
  }
  return out;
}

Bytes to_der(X509* cert) {
  unsigned char* der = nullptr;
  int n = i2d_X509(cert, &der);
  if (n <= 0) return {};
  Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

Status verify_chain(X509* leaf, const std::vector<X509*>& intermediates, X509* root,
                    std::chrono::system_clock::time_point now, std::string_view what) {
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  std::unique_ptr<STACK_OF(X509), StackFree> chain(sk_X509_new_null());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (!store || !chain || !ctx || X509_STORE_add_cert(store.get(), root) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kInternal, "{}: cannot set up certificate verification", what);
  }
  for (X509* c : intermediates) {
    if (sk_X509_push(chain.get(), c) <= 0) return make_error(ErrorCode::kInternal, "{}: sk_X509_push", what);
  }
  if (X509_STORE_CTX_init(ctx.get(), store.get(), leaf, chain.get()) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kInternal, "{}: X509_STORE_CTX_init failed", what);
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  time_t t = std::chrono::system_clock::to_time_t(now);
  X509_VERIFY_PARAM_set_time(param, t);
  X509_VERIFY_PARAM_set_depth(param, 8);
  int rc = X509_verify_cert(ctx.get());
  int err = X509_STORE_CTX_get_error(ctx.get());
  int depth = X509_STORE_CTX_get_error_depth(ctx.get());
  ERR_clear_error();
  if (rc != 1) {
    return make_error(ErrorCode::kSecurity, "{}: certificate chain refused at depth {}: {}", what, depth,
                      X509_verify_cert_error_string(err));
  }
  return ok_status();
}

bool signed_by(X509* subject, X509* issuer) {
  EVP_PKEY* key = X509_get0_pubkey(issuer);
  bool ok = key != nullptr && X509_verify(subject, key) == 1;
  ERR_clear_error();
  return ok;
}

PkeyPtr public_key(X509* cert) {
  PkeyPtr k(X509_get_pubkey(cert));
  ERR_clear_error();
  return k;
}

Result<std::pair<std::string, Bytes>> ec_point(EVP_PKEY* key, std::string_view what) {
  if (!key || EVP_PKEY_base_id(key) != EVP_PKEY_EC) {
    return make_error(ErrorCode::kSecurity, "{}: public key is not an EC key", what);
  }
  char group[64] = {0};
  size_t glen = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: EC key without a named curve", what);
  }
  Bytes point(200);
  size_t plen = 0;
  if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point.data(), point.size(),
                                      &plen) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: cannot read the EC public point", what);
  }
  point.resize(plen);
  std::string name(group, glen);
  if (name == "secp384r1") name = "P-384";
  if (name == "prime256v1") name = "P-256";
  return std::make_pair(name, point);
}

Result<std::pair<Bytes, Bytes>> rsa_numbers(EVP_PKEY* key, std::string_view what) {
  if (!key || EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    return make_error(ErrorCode::kSecurity, "{}: public key is not an RSA key", what);
  }
  BIGNUM* n = nullptr;
  BIGNUM* e = nullptr;
  if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
      EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1) {
    BN_free(n);
    BN_free(e);
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "{}: cannot read the RSA key", what);
  }
  std::unique_ptr<BIGNUM, BnFree> nn(n), ee(e);
  Bytes nb(BN_num_bytes(n)), eb(BN_num_bytes(e));
  BN_bn2bin(n, nb.data());
  BN_bn2bin(e, eb.data());
  return std::make_pair(nb, eb);
}

}  // namespace veil::attest::x509
