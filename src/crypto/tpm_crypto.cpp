#include "crypto/tpm_crypto.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <memory>
#include <stdexcept>

namespace veil::crypto {
namespace {

const EVP_MD* md_of(DigestAlg alg) {
  switch (alg) {
    case DigestAlg::kSha1: return EVP_sha1();
    case DigestAlg::kSha256: return EVP_sha256();
    case DigestAlg::kSha384: return EVP_sha384();
    case DigestAlg::kSha512: return EVP_sha512();
  }
  return EVP_sha256();
}

struct BnFree { void operator()(BIGNUM* p) const { BN_free(p); } };
struct PkeyFree { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct PkeyCtxFree { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };

}  // namespace

size_t digest_size(DigestAlg alg) {
  switch (alg) {
    case DigestAlg::kSha1: return 20;
    case DigestAlg::kSha256: return 32;
    case DigestAlg::kSha384: return 48;
    case DigestAlg::kSha512: return 64;
  }
  return 0;
}

const char* digest_name(DigestAlg alg) {
  switch (alg) {
    case DigestAlg::kSha1: return "sha1";
    case DigestAlg::kSha256: return "sha256";
    case DigestAlg::kSha384: return "sha384";
    case DigestAlg::kSha512: return "sha512";
  }
  return "?";
}

Bytes digest(DigestAlg alg, ByteView data) {
  Bytes out(digest_size(alg));
  unsigned len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, md_of(alg), nullptr) != 1 || len != out.size()) {
    ERR_clear_error();
    throw std::runtime_error("crypto: digest failed");
  }
  return out;
}

Status rsa_verify_digest(RsaPadding padding, ByteView modulus, ByteView exponent, DigestAlg alg, ByteView dgst,
                         ByteView signature) {
  size_t start = 0;
  while (start < modulus.size() && modulus[start] == 0) ++start;
  size_t bits = (modulus.size() - start) * 8;
  if (bits < 2048 || bits > 4096) {
    return make_error(ErrorCode::kSecurity, "RSA key of about {} bits refused (2048..4096 accepted)", bits);
  }
  if (exponent.empty() || exponent.size() > 8) {
    return make_error(ErrorCode::kCorrupt, "RSA public exponent has {} bytes", exponent.size());
  }
  if (dgst.size() != digest_size(alg)) {
    return make_error(ErrorCode::kInvalidArgument, "digest has {} bytes, {} needs {}", dgst.size(), digest_name(alg),
                      digest_size(alg));
  }
  if (signature.size() != modulus.size() - start) {
    return make_error(ErrorCode::kSecurity, "RSA signature has {} bytes, the key needs {}", signature.size(),
                      modulus.size() - start);
  }
  std::unique_ptr<BIGNUM, BnFree> n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  std::unique_ptr<BIGNUM, BnFree> e(BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
  if (!n || !e) throw std::runtime_error("crypto: BN_bin2bn");
  // OSSL_PARAM integers are native-endian: build them from BIGNUMs with OSSL_PARAM_BLD-free helpers.
  Bytes nle(BN_num_bytes(n.get())), ele(BN_num_bytes(e.get()));
  if (BN_bn2nativepad(n.get(), nle.data(), static_cast<int>(nle.size())) < 0 ||
      BN_bn2nativepad(e.get(), ele.data(), static_cast<int>(ele.size())) < 0) {
    throw std::runtime_error("crypto: BN_bn2nativepad");
  }
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_N, nle.data(), nle.size()),
      OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_E, ele.data(), ele.size()),
      OSSL_PARAM_construct_end()};
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> fctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!fctx || EVP_PKEY_fromdata_init(fctx.get()) != 1 ||
      EVP_PKEY_fromdata(fctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    ERR_clear_error();
    return make_error(ErrorCode::kCorrupt, "RSA public key (modulus, exponent) is not valid");
  }
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(raw);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> vctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  bool setup = vctx && EVP_PKEY_verify_init(vctx.get()) == 1 &&
               EVP_PKEY_CTX_set_signature_md(vctx.get(), md_of(alg)) == 1;
  if (setup && padding == RsaPadding::kPss) {
    setup = EVP_PKEY_CTX_set_rsa_padding(vctx.get(), RSA_PKCS1_PSS_PADDING) == 1 &&
            EVP_PKEY_CTX_set_rsa_pss_saltlen(vctx.get(), RSA_PSS_SALTLEN_AUTO) == 1 &&
            EVP_PKEY_CTX_set_rsa_mgf1_md(vctx.get(), md_of(alg)) == 1;
  } else if (setup) {
    setup = EVP_PKEY_CTX_set_rsa_padding(vctx.get(), RSA_PKCS1_PADDING) == 1;
  }
  if (!setup) {
    ERR_clear_error();
    throw std::runtime_error("crypto: RSA verify setup");
  }
  int rc = EVP_PKEY_verify(vctx.get(), signature.data(), signature.size(), dgst.data(), dgst.size());
  ERR_clear_error();
  if (rc != 1) {
    return make_error(ErrorCode::kSecurity, "RSA {} signature does not verify",
                      padding == RsaPadding::kPss ? "PSS" : "PKCS#1 v1.5");
  }
  return ok_status();
}

}  // namespace veil::crypto
