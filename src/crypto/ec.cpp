// ECDSA keys on P-256, P-384 and secp256k1: derivation, signing with a loaded key, and verification with a cache
// of decoded public keys (decoding and validating a point costs about as much as half a verification).
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <list>
#include <memory>
#include <mutex>
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
struct ParamBldDeleter { void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); } };
struct ParamDeleter { void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); } };
using BnPtr = std::unique_ptr<BIGNUM, BnDeleter>;
using GroupPtr = std::unique_ptr<EC_GROUP, GroupDeleter>;
using PointPtr = std::unique_ptr<EC_POINT, PointDeleter>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;

[[noreturn]] void fatal(const char* what) {
  ERR_clear_error();
  throw std::runtime_error(std::string("crypto: ecdsa: ") + what);
}

// Everything the module needs to know of a curve, in one row per curve.
struct CurveInfo {
  const char* group_name;  // OpenSSL's
  int nid;
  const char* display;     // in messages
  size_t bytes;            // scalar and coordinate size
};

const CurveInfo& info(EcCurve curve) {
  static const CurveInfo kP256{"prime256v1", NID_X9_62_prime256v1, "P-256", 32};
  static const CurveInfo kP384{"secp384r1", NID_secp384r1, "P-384", 48};
  static const CurveInfo kK1{"secp256k1", NID_secp256k1, "secp256k1", 32};
  return curve == EcCurve::kP384 ? kP384 : curve == EcCurve::kSecp256k1 ? kK1 : kP256;
}

const char* group_name(EcCurve curve) { return info(curve).group_name; }
int curve_nid(EcCurve curve) { return info(curve).nid; }

GroupPtr group(EcCurve curve) {
  GroupPtr g(EC_GROUP_new_by_curve_name(curve_nid(curve)));
  if (!g) fatal("curve unavailable");
  return g;
}

// A curve's group order n and floor(n / 2), computed once per curve (making a group costs more than a signature's
// arithmetic). Immutable after construction, shared by all threads.
struct GroupOrder {
  BnPtr n, half;
  explicit GroupOrder(EcCurve curve) {
    GroupPtr g = group(curve);
    n.reset(BN_dup(EC_GROUP_get0_order(g.get())));
    half.reset(BN_dup(n.get()));
    if (!n || !half || BN_rshift1(half.get(), half.get()) != 1) fatal("group order");
  }
};

const GroupOrder& group_order(EcCurve curve) {
  static const GroupOrder p256(EcCurve::kP256), p384(EcCurve::kP384), k1(EcCurve::kSecp256k1);
  return curve == EcCurve::kP384 ? p384 : curve == EcCurve::kSecp256k1 ? k1 : p256;
}

// True when 1 <= k < n.
bool valid_scalar(const EC_GROUP* g, ByteView k) {
  BnPtr bn(BN_bin2bn(k.data(), static_cast<int>(k.size()), nullptr));
  if (!bn) fatal("BN_bin2bn");
  return !BN_is_zero(bn.get()) && BN_cmp(bn.get(), EC_GROUP_get0_order(g)) < 0;
}

// An EVP_PKEY from its parts: the private scalar (may be empty: a public key) and the uncompressed point.
PkeyPtr make_pkey(EcCurve curve, ByteView priv, ByteView pub) {
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldDeleter> bld(OSSL_PARAM_BLD_new());
  BnPtr d;
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group_name(curve), 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()) != 1)
    fatal("param build");
  if (!priv.empty()) {
    d.reset(BN_secure_new());
    if (!d || !BN_bin2bn(priv.data(), static_cast<int>(priv.size()), d.get()) ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get()) != 1)
      fatal("param build");
  }
  std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, priv.empty() ? EVP_PKEY_PUBLIC_KEY : EVP_PKEY_KEYPAIR, params.get()) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return PkeyPtr(raw);
}

// Decoded public keys by (curve, point). A verifier checks many signatures of few keys (a platform key, a signing
// key): decoding and validating the point once saves ~40 us per verification. Public keys only; bounded.
class PublicKeyCache {
 public:
  std::shared_ptr<EVP_PKEY> get(EcCurve curve, ByteView point) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->curve == curve && std::equal(it->point.begin(), it->point.end(), point.begin(), point.end())) {
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        return it->pkey;
      }
    }
    PkeyPtr pkey = make_pkey(curve, {}, point);
    if (!pkey) return nullptr;
    entries_.push_front({curve, Bytes(point.begin(), point.end()), std::shared_ptr<EVP_PKEY>(pkey.release(), EVP_PKEY_free)});
    if (entries_.size() > kCapacity) entries_.pop_back();
    return entries_.front().pkey;
  }

 private:
  static constexpr size_t kCapacity = 16;
  struct Entry {
    EcCurve curve;
    Bytes point;
    std::shared_ptr<EVP_PKEY> pkey;
  };
  std::mutex mu_;
  std::list<Entry> entries_;
};

PublicKeyCache& public_key_cache() {
  static PublicKeyCache cache;
  return cache;
}

EVP_PKEY* pkey_of(const std::shared_ptr<const void>& handle) {
  return static_cast<EVP_PKEY*>(const_cast<void*>(handle.get()));
}

}  // namespace

size_t ec_curve_bytes(EcCurve curve) { return info(curve).bytes; }

const char* ec_curve_name(EcCurve curve) { return info(curve).display; }

Result<EcKeyPair> ec_from_private(EcCurve curve, ByteView private_key) {
  const size_t n = ec_curve_bytes(curve);
  if (private_key.size() != n) {
    return make_error(ErrorCode::kInvalidArgument, "{} private key has {} bytes, expected {}", ec_curve_name(curve),
                      private_key.size(), n);
  }
  GroupPtr g = group(curve);
  if (!valid_scalar(g.get(), private_key)) {
    return make_error(ErrorCode::kInvalidArgument, "{} private key is not in [1, n-1]", ec_curve_name(curve));
  }
  BnPtr d(BN_secure_new());
  if (!d || !BN_bin2bn(private_key.data(), static_cast<int>(n), d.get())) fatal("BN_bin2bn");
  PointPtr p(EC_POINT_new(g.get()));
  std::unique_ptr<BN_CTX, BnCtxDeleter> bctx(BN_CTX_new());
  if (!p || !bctx || EC_POINT_mul(g.get(), p.get(), d.get(), nullptr, nullptr, bctx.get()) != 1) fatal("EC_POINT_mul");
  EcKeyPair kp;
  kp.curve = curve;
  kp.private_key = SecretBytes(private_key);
  kp.public_key.resize(2 * n + 1);
  if (EC_POINT_point2oct(g.get(), p.get(), POINT_CONVERSION_UNCOMPRESSED, kp.public_key.data(), kp.public_key.size(),
                         bctx.get()) != kp.public_key.size())
    fatal("EC_POINT_point2oct");
  PkeyPtr pkey = make_pkey(curve, kp.private_key.view(), kp.public_key);
  if (!pkey) fatal("EVP_PKEY_fromdata");
  kp.handle = std::shared_ptr<const void>(pkey.release(), [](const void* k) {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(const_cast<void*>(k)));
  });
  return kp;
}

EcKeyPair ec_generate(EcCurve curve) {
  for (;;) {
    SecretBytes k(ec_curve_bytes(curve));
    random_bytes(k.span());
    auto kp = ec_from_private(curve, k.view());
    if (kp.ok()) return std::move(kp).value();
  }
}

EcKeyPair ec_derive(EcCurve curve, ByteView ikm, std::string_view info) {
  for (uint8_t counter = 0;; ++counter) {
    Bytes label = to_bytes(info);
    label.push_back(counter);
    SecretBytes k = hkdf(HashAlg::kSha256, {}, ikm, label, ec_curve_bytes(curve));
    auto kp = ec_from_private(curve, k.view());
    if (kp.ok()) return std::move(kp).value();
    if (counter == 255) fatal("no valid scalar after 256 attempts");
  }
}

Result<Bytes> ecdsa_sign_digest(const EcKeyPair& key, ByteView digest) {
  if (digest.empty() || digest.size() > 64) {
    return make_error(ErrorCode::kInvalidArgument, "ECDSA signs a digest of 1..64 bytes, got {}", digest.size());
  }
  if (!key.handle) return make_error(ErrorCode::kInvalidArgument, "ECDSA key was not loaded (use ec_from_private)");
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(pkey_of(key.handle), nullptr));
  size_t der_len = 0;
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), nullptr, &der_len, digest.data(), digest.size()) != 1)
    fatal("EVP_PKEY_sign_init");
  Bytes der(der_len);
  if (EVP_PKEY_sign(ctx.get(), der.data(), &der_len, digest.data(), digest.size()) != 1) fatal("EVP_PKEY_sign");
  const unsigned char* p = der.data();
  std::unique_ptr<ECDSA_SIG, SigDeleter> sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));
  if (!sig) fatal("d2i_ECDSA_SIG");
  const BIGNUM* r = ECDSA_SIG_get0_r(sig.get());
  const BIGNUM* s = ECDSA_SIG_get0_s(sig.get());
  const GroupOrder& order = group_order(key.curve);
  BnPtr s_low(BN_dup(s));
  if (!s_low) fatal("BN_dup");
  if (BN_cmp(s_low.get(), order.half.get()) > 0) {
    if (BN_sub(s_low.get(), order.n.get(), s_low.get()) != 1) fatal("BN_sub");
  }
  const int n = static_cast<int>(ec_curve_bytes(key.curve));
  Bytes out(2 * static_cast<size_t>(n));
  if (BN_bn2binpad(r, out.data(), n) != n || BN_bn2binpad(s_low.get(), out.data() + n, n) != n) fatal("BN_bn2binpad");
  return out;
}

Status ecdsa_verify_digest(EcCurve curve, ByteView public_key, ByteView digest, ByteView r, ByteView s) {
  const size_t n = ec_curve_bytes(curve);
  Bytes point;
  if (public_key.size() == 2 * n) {
    point.push_back(0x04);
    point.insert(point.end(), public_key.begin(), public_key.end());
  } else if (public_key.size() == 2 * n + 1 && public_key[0] == 0x04) {
    point.assign(public_key.begin(), public_key.end());
  } else {
    return make_error(ErrorCode::kCorrupt, "ECDSA public key has {} bytes, expected {} or {}", public_key.size(),
                      2 * n, 2 * n + 1);
  }
  if (r.size() != n || s.size() != n) {
    return make_error(ErrorCode::kCorrupt, "ECDSA signature components must be {} bytes each", n);
  }
  std::shared_ptr<EVP_PKEY> pkey = public_key_cache().get(curve, point);
  if (!pkey) return make_error(ErrorCode::kSecurity, "ECDSA public key is not a valid point on {}", ec_curve_name(curve));
  std::unique_ptr<ECDSA_SIG, SigDeleter> sig(ECDSA_SIG_new());
  BIGNUM* br = BN_bin2bn(r.data(), static_cast<int>(r.size()), nullptr);
  BIGNUM* bs = BN_bin2bn(s.data(), static_cast<int>(s.size()), nullptr);
  if (!sig || !br || !bs || ECDSA_SIG_set0(sig.get(), br, bs) != 1) {
    BN_free(br);
    BN_free(bs);
    fatal("ECDSA_SIG");
  }
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  if (der_len <= 0) fatal("ECDSA DER");
  PkeyCtxPtr vctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  int rc = vctx && EVP_PKEY_verify_init(vctx.get()) == 1
               ? EVP_PKEY_verify(vctx.get(), der, static_cast<size_t>(der_len), digest.data(), digest.size())
               : -1;
  OPENSSL_free(der);
  ERR_clear_error();
  if (rc != 1) return make_error(ErrorCode::kSecurity, "ECDSA signature does not verify");
  return ok_status();
}

}  // namespace veil::crypto
