#include "crypto/secp256k1.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <memory>
#include <stdexcept>

#include "crypto/crypto.h"

namespace veil::crypto {
namespace {

struct BnDeleter { void operator()(BIGNUM* p) const { BN_clear_free(p); } };
struct BnCtxDeleter { void operator()(BN_CTX* p) const { BN_CTX_free(p); } };
struct GroupDeleter { void operator()(EC_GROUP* p) const { EC_GROUP_free(p); } };
struct PointDeleter { void operator()(EC_POINT* p) const { EC_POINT_free(p); } };
struct PkeyDeleter { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct PkeyCtxDeleter { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };
struct SigDeleter { void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); } };
using BnPtr = std::unique_ptr<BIGNUM, BnDeleter>;
using GroupPtr = std::unique_ptr<EC_GROUP, GroupDeleter>;
using PointPtr = std::unique_ptr<EC_POINT, PointDeleter>;

[[noreturn]] void fatal(const char* what) {
  ERR_clear_error();
  throw std::runtime_error(std::string("crypto: secp256k1: ") + what);
}

GroupPtr group() {
  GroupPtr g(EC_GROUP_new_by_curve_name(NID_secp256k1));
  if (!g) fatal("curve unavailable");
  return g;
}

// True when 1 <= k < n.
bool valid_scalar(const EC_GROUP* g, ByteView k) {
  BnPtr bn(BN_bin2bn(k.data(), static_cast<int>(k.size()), nullptr));
  if (!bn) fatal("BN_bin2bn");
  return !BN_is_zero(bn.get()) && BN_cmp(bn.get(), EC_GROUP_get0_order(g)) < 0;
}

std::unique_ptr<EVP_PKEY, PkeyDeleter> make_pkey(ByteView priv, const std::array<uint8_t, 65>& pub) {
  BnPtr d(BN_secure_new());
  if (!d || !BN_bin2bn(priv.data(), static_cast<int>(priv.size()), d.get())) fatal("BN_bin2bn");
  std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)> bld(OSSL_PARAM_BLD_new(), OSSL_PARAM_BLD_free);
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "secp256k1", 0) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get()) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()) != 1)
    fatal("param build");
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(OSSL_PARAM_BLD_to_param(bld.get()), OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1)
    fatal("EVP_PKEY_fromdata");
  return std::unique_ptr<EVP_PKEY, PkeyDeleter>(raw);
}

}  // namespace

Result<Secp256k1KeyPair> secp256k1_from_private(ByteView private_key) {
  if (private_key.size() != 32) {
    return make_error(ErrorCode::kInvalidArgument, "secp256k1 private key has {} bytes, expected 32",
                      private_key.size());
  }
  GroupPtr g = group();
  if (!valid_scalar(g.get(), private_key)) {
    return make_error(ErrorCode::kInvalidArgument, "secp256k1 private key is not in [1, n-1]");
  }
  BnPtr d(BN_secure_new());
  if (!d || !BN_bin2bn(private_key.data(), 32, d.get())) fatal("BN_bin2bn");
  PointPtr p(EC_POINT_new(g.get()));
  std::unique_ptr<BN_CTX, BnCtxDeleter> bctx(BN_CTX_new());
  if (!p || !bctx || EC_POINT_mul(g.get(), p.get(), d.get(), nullptr, nullptr, bctx.get()) != 1) fatal("EC_POINT_mul");
  Secp256k1KeyPair kp;
  kp.private_key = SecretBytes(private_key);
  if (EC_POINT_point2oct(g.get(), p.get(), POINT_CONVERSION_UNCOMPRESSED, kp.public_key.data(), kp.public_key.size(),
                         bctx.get()) != kp.public_key.size())
    fatal("EC_POINT_point2oct");
  return kp;
}

Secp256k1KeyPair secp256k1_generate() {
  for (;;) {
    SecretBytes k(32);
    random_bytes(k.span());
    auto kp = secp256k1_from_private(k.view());
    if (kp.ok()) return std::move(kp).value();
  }
}

Secp256k1KeyPair secp256k1_derive(ByteView ikm, std::string_view info) {
  for (uint8_t counter = 0;; ++counter) {
    Bytes label = to_bytes(info);
    label.push_back(counter);
    SecretBytes k = hkdf(HashAlg::kSha256, {}, ikm, label, 32);
    auto kp = secp256k1_from_private(k.view());
    if (kp.ok()) return std::move(kp).value();
    if (counter == 255) fatal("no valid scalar after 256 attempts");
  }
}

Result<std::array<uint8_t, 64>> secp256k1_sign_digest(ByteView private_key, ByteView digest32) {
  if (digest32.size() != 32) {
    return make_error(ErrorCode::kInvalidArgument, "secp256k1 signing needs a 32-byte digest, got {}", digest32.size());
  }
  VEIL_ASSIGN_OR_RETURN(auto kp, secp256k1_from_private(private_key));
  auto pkey = make_pkey(kp.private_key.view(), kp.public_key);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  size_t der_len = 0;
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), nullptr, &der_len, digest32.data(), digest32.size()) != 1)
    fatal("EVP_PKEY_sign_init");
  Bytes der(der_len);
  if (EVP_PKEY_sign(ctx.get(), der.data(), &der_len, digest32.data(), digest32.size()) != 1) fatal("EVP_PKEY_sign");
  const unsigned char* p = der.data();
  std::unique_ptr<ECDSA_SIG, SigDeleter> sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));
  if (!sig) fatal("d2i_ECDSA_SIG");
  const BIGNUM* r = ECDSA_SIG_get0_r(sig.get());
  const BIGNUM* s = ECDSA_SIG_get0_s(sig.get());
  GroupPtr g = group();
  BnPtr s_low(BN_dup(s));
  BnPtr half(BN_dup(EC_GROUP_get0_order(g.get())));
  if (!s_low || !half || BN_rshift1(half.get(), half.get()) != 1) fatal("BN");
  if (BN_cmp(s_low.get(), half.get()) > 0) {
    if (BN_sub(s_low.get(), EC_GROUP_get0_order(g.get()), s_low.get()) != 1) fatal("BN_sub");
  }
  std::array<uint8_t, 64> out{};
  if (BN_bn2binpad(r, out.data(), 32) != 32 || BN_bn2binpad(s_low.get(), out.data() + 32, 32) != 32) fatal("BN_bn2binpad");
  return out;
}

}  // namespace veil::crypto
