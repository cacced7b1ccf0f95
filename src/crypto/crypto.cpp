#include "crypto/crypto.h"

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <cstring>
#include <stdexcept>

namespace veil::crypto {
namespace {

const EVP_MD* md_for(HashAlg alg) {
  switch (alg) {
    case HashAlg::kSha256: return EVP_sha256();
    case HashAlg::kSha384: return EVP_sha384();
    case HashAlg::kSha512: return EVP_sha512();
  }
  return EVP_sha256();
}

const char* md_name(HashAlg alg) {
  switch (alg) {
    case HashAlg::kSha256: return "SHA256";
    case HashAlg::kSha384: return "SHA384";
    case HashAlg::kSha512: return "SHA512";
  }
  return "SHA256";
}

std::string openssl_reason() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL failure";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

// Failures of OpenSSL calls that cannot fail for valid arguments are bugs or resource exhaustion:
// they abort with a clear message rather than continue with unset outputs.
[[noreturn]] void fatal(const char* what) {
  throw std::runtime_error(std::string("crypto: ") + what + ": " + openssl_reason());
}

template <size_t N>
std::array<uint8_t, N> digest_fixed(const EVP_MD* md, ByteView data) {
  std::array<uint8_t, N> out{};
  unsigned len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr) != 1 || len != N) fatal("digest");
  return out;
}

struct PkeyDeleter { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct PkeyCtxDeleter { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };
struct MdCtxDeleter { void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); } };
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

}  // namespace

Sha256Digest sha256(ByteView data) { return digest_fixed<32>(EVP_sha256(), data); }
Sha384Digest sha384(ByteView data) { return digest_fixed<48>(EVP_sha384(), data); }
std::array<uint8_t, 64> sha512(ByteView data) { return digest_fixed<64>(EVP_sha512(), data); }

size_t hash_size(HashAlg alg) {
  switch (alg) {
    case HashAlg::kSha256: return 32;
    case HashAlg::kSha384: return 48;
    case HashAlg::kSha512: return 64;
  }
  return 0;
}

struct Hasher::Impl {
  MdCtxPtr ctx{EVP_MD_CTX_new()};
};

Hasher::Hasher(HashAlg alg) : alg_(alg), impl_(std::make_unique<Impl>()) {
  if (!impl_->ctx || EVP_DigestInit_ex(impl_->ctx.get(), md_for(alg_), nullptr) != 1) fatal("digest init");
}
Hasher::~Hasher() = default;
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;

void Hasher::update(ByteView data) {
  if (EVP_DigestUpdate(impl_->ctx.get(), data.data(), data.size()) != 1) fatal("digest update");
}

Bytes Hasher::finish() {
  Bytes out(hash_size(alg_));
  unsigned len = 0;
  if (EVP_DigestFinal_ex(impl_->ctx.get(), out.data(), &len) != 1) fatal("digest final");
  if (EVP_DigestInit_ex(impl_->ctx.get(), md_for(alg_), nullptr) != 1) fatal("digest init");
  return out;
}

namespace {

// The HMAC implementation is fetched once; EVP_MAC objects are immutable and shareable across threads.
EVP_MAC* hmac_impl() {
  static EVP_MAC* mac = [] {
    EVP_MAC* m = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (!m) fatal("HMAC fetch");
    return m;
  }();
  return mac;
}

// HMAC over the concatenation of `parts`, written to `out` (hash_size(alg) bytes).
void hmac_parts(HashAlg alg, ByteView key, std::initializer_list<ByteView> parts, uint8_t* out) {
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(hmac_impl());
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(md_name(alg)), 0),
      OSSL_PARAM_construct_end()};
  static const uint8_t kEmpty[1] = {0};
  bool ok = ctx && EVP_MAC_init(ctx, key.empty() ? kEmpty : key.data(), key.size(), params) == 1;
  for (ByteView part : parts) {
    ok = ok && (part.empty() || EVP_MAC_update(ctx, part.data(), part.size()) == 1);
  }
  size_t len = 0;
  ok = ok && EVP_MAC_final(ctx, out, &len, hash_size(alg)) == 1 && len == hash_size(alg);
  EVP_MAC_CTX_free(ctx);
  if (!ok) fatal("HMAC");
}

}  // namespace

Bytes hmac(HashAlg alg, ByteView key, ByteView data) {
  Bytes out(hash_size(alg));
  hmac_parts(alg, key, {data}, out.data());
  return out;
}

// HKDF straight from its definition (RFC 5869 section 2) over HMAC: one MAC per output block.
SecretBytes hkdf_extract(HashAlg alg, ByteView salt, ByteView ikm) {
  SecretBytes prk(hash_size(alg));
  Bytes zeros(hash_size(alg), 0);  // an absent salt is HashLen zeros
  hmac_parts(alg, salt.empty() ? ByteView(zeros) : salt, {ikm}, prk.data());
  return prk;
}

SecretBytes hkdf_expand(HashAlg alg, ByteView prk, ByteView info, size_t length) {
  const size_t n = hash_size(alg);
  if (length > 255 * n) throw std::invalid_argument("crypto: HKDF output longer than 255 blocks");
  SecretBytes out(length);
  SecretBytes block(n);
  size_t done = 0;
  for (uint8_t i = 1; done < length; ++i) {
    const uint8_t counter[1] = {i};
    ByteView previous = i == 1 ? ByteView() : block.view();
    SecretBytes next(n);
    hmac_parts(alg, prk, {previous, info, ByteView(counter, 1)}, next.data());
    block = std::move(next);
    size_t take = std::min(n, length - done);
    std::memcpy(out.data() + done, block.data(), take);
    done += take;
  }
  return out;
}

SecretBytes hkdf(HashAlg alg, ByteView salt, ByteView ikm, ByteView info, size_t length) {
  SecretBytes prk = hkdf_extract(alg, salt, ikm);
  return hkdf_expand(alg, prk.view(), info, length);
}

void random_bytes(std::span<uint8_t> out) {
  if (!out.empty() && RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) fatal("RAND_bytes");
}
Bytes random_bytes(size_t n) {
  Bytes b(n);
  random_bytes(std::span<uint8_t>(b));
  return b;
}

Result<AeadSuite> aead_suite_from_id(uint16_t id) {
  if (id == 1) return AeadSuite::kAes256Gcm;
  if (id == 2) return AeadSuite::kChaCha20Poly1305;
  return make_error(ErrorCode::kUnsupported, "unknown cipher suite id {}", id);
}

const char* aead_suite_name(AeadSuite suite) {
  return suite == AeadSuite::kAes256Gcm ? "AES-256-GCM" : "ChaCha20-Poly1305";
}

struct Aead::Impl {
  EVP_CIPHER_CTX* enc = nullptr;
  EVP_CIPHER_CTX* dec = nullptr;
  ~Impl() {
    EVP_CIPHER_CTX_free(enc);
    EVP_CIPHER_CTX_free(dec);
  }
};

Aead::Aead(AeadSuite suite) : suite_(suite), impl_(std::make_unique<Impl>()) {}
Aead::Aead(Aead&&) noexcept = default;
Aead& Aead::operator=(Aead&&) noexcept = default;
Aead::~Aead() = default;

Result<Aead> Aead::create(AeadSuite suite, ByteView key) {
  if (key.size() != kAeadKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "AEAD key must be {} bytes, got {}", kAeadKeySize, key.size());
  }
  const EVP_CIPHER* cipher = suite == AeadSuite::kAes256Gcm ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
  Aead a(suite);
  a.impl_->enc = EVP_CIPHER_CTX_new();
  a.impl_->dec = EVP_CIPHER_CTX_new();
  if (!a.impl_->enc || !a.impl_->dec) fatal("cipher context");
  // Keys are installed once; each call only sets the nonce. OpenSSL keeps its own copy of the key
  // schedule inside the context and cleanses it on free.
  if (EVP_EncryptInit_ex(a.impl_->enc, cipher, nullptr, key.data(), nullptr) != 1 ||
      EVP_DecryptInit_ex(a.impl_->dec, cipher, nullptr, key.data(), nullptr) != 1) {
    fatal("cipher init");
  }
  return a;
}

Status Aead::seal(ByteView nonce, ByteView aad, ByteView plaintext, Bytes& out) {
  out.resize(plaintext.size() + kAeadTagSize);
  return seal_into(nonce, aad, plaintext, out.data());
}

Status Aead::seal_into(ByteView nonce, ByteView aad, ByteView plaintext, uint8_t* out) {
  if (nonce.size() != kAeadNonceSize) return make_error(ErrorCode::kInvalidArgument, "AEAD nonce must be 12 bytes");
  EVP_CIPHER_CTX* c = impl_->enc;
  int len = 0;
  if (EVP_EncryptInit_ex(c, nullptr, nullptr, nullptr, nonce.data()) != 1) fatal("seal init");
  if (!aad.empty() && EVP_EncryptUpdate(c, nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) {
    fatal("seal aad");
  }
  size_t done = 0;
  // EVP uses int lengths: feed large inputs in pieces.
  while (done < plaintext.size()) {
    int piece = static_cast<int>(std::min<size_t>(plaintext.size() - done, 1u << 30));
    if (EVP_EncryptUpdate(c, out + done, &len, plaintext.data() + done, piece) != 1) fatal("seal update");
    done += static_cast<size_t>(len);
  }
  if (EVP_EncryptFinal_ex(c, out + done, &len) != 1) fatal("seal final");
  if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, kAeadTagSize, out + plaintext.size()) != 1) fatal("seal tag");
  return ok_status();
}

Status Aead::open(ByteView nonce, ByteView aad, ByteView sealed, Bytes& out) {
  if (sealed.size() < kAeadTagSize) {
    return make_error(ErrorCode::kSecurity, "AEAD input of {} bytes is shorter than its tag", sealed.size());
  }
  out.resize(sealed.size() - kAeadTagSize);
  return open_into(nonce, aad, sealed, out.data());
}

Status Aead::open_into(ByteView nonce, ByteView aad, ByteView sealed, uint8_t* out) {
  if (nonce.size() != kAeadNonceSize) return make_error(ErrorCode::kInvalidArgument, "AEAD nonce must be 12 bytes");
  if (sealed.size() < kAeadTagSize) {
    return make_error(ErrorCode::kSecurity, "AEAD input of {} bytes is shorter than its tag", sealed.size());
  }
  size_t ct_len = sealed.size() - kAeadTagSize;
  uint8_t tag[kAeadTagSize];
  std::memcpy(tag, sealed.data() + ct_len, kAeadTagSize);
  EVP_CIPHER_CTX* c = impl_->dec;
  int len = 0;
  if (EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, nonce.data()) != 1) fatal("open init");
  if (!aad.empty() && EVP_DecryptUpdate(c, nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) {
    fatal("open aad");
  }
  size_t done = 0;
  while (done < ct_len) {
    int piece = static_cast<int>(std::min<size_t>(ct_len - done, 1u << 30));
    if (EVP_DecryptUpdate(c, out + done, &len, sealed.data() + done, piece) != 1) fatal("open update");
    done += static_cast<size_t>(len);
  }
  if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, kAeadTagSize, tag) != 1) fatal("open tag");
  if (EVP_DecryptFinal_ex(c, out + done, &len) != 1) {
    ERR_clear_error();
    secure_zero(out, ct_len);  // never hand out unauthenticated plaintext
    return make_error(ErrorCode::kSecurity, "authentication tag mismatch");
  }
  return ok_status();
}

// ---- X25519 / Ed25519 ----

static PkeyPtr raw_private(int type, ByteView key) {
  return PkeyPtr(EVP_PKEY_new_raw_private_key(type, nullptr, key.data(), key.size()));
}

// Moves a key object into a key pair's opaque handle.
static std::shared_ptr<const void> share_pkey(PkeyPtr pkey) {
  return std::shared_ptr<const void>(pkey.release(), [](const void* p) {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(const_cast<void*>(p)));
  });
}
static EVP_PKEY* pkey_of(const std::shared_ptr<const void>& handle) {
  return static_cast<EVP_PKEY*>(const_cast<void*>(handle.get()));
}

static std::array<uint8_t, 32> raw_public32(EVP_PKEY* pkey) {
  std::array<uint8_t, 32> pub{};
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey, pub.data(), &len) != 1 || len != 32) fatal("raw public key");
  return pub;
}

// The library's own key generation: loading a raw private key instead goes through the provider's import path,
// which costs ~20% more than the scalar multiplication itself (bench/channel_bench.cpp BM_HandshakePart).
X25519KeyPair x25519_generate() {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) fatal("x25519 keygen");
  PkeyPtr pkey(raw);
  X25519KeyPair kp;
  kp.private_key = SecretBytes(32);
  size_t len = 32;
  if (EVP_PKEY_get_raw_private_key(pkey.get(), kp.private_key.data(), &len) != 1 || len != 32) {
    fatal("x25519 private key");
  }
  kp.public_key = raw_public32(pkey.get());
  kp.handle = share_pkey(std::move(pkey));
  return kp;
}

Result<X25519KeyPair> x25519_from_private(ByteView private_key) {
  if (private_key.size() != 32) return make_error(ErrorCode::kInvalidArgument, "X25519 private key must be 32 bytes");
  PkeyPtr pkey = raw_private(EVP_PKEY_X25519, private_key);
  if (!pkey) fatal("x25519 key");
  X25519KeyPair kp;
  kp.private_key = SecretBytes(private_key);
  kp.public_key = raw_public32(pkey.get());
  kp.handle = share_pkey(std::move(pkey));
  return kp;
}

static Result<SecretBytes> x25519_derive(EVP_PKEY* priv, ByteView peer_public) {
  if (peer_public.size() != 32) return make_error(ErrorCode::kInvalidArgument, "X25519 keys must be 32 bytes");
  PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(), peer_public.size()));
  if (!priv || !peer) return make_error(ErrorCode::kCorrupt, "invalid X25519 key");
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(priv, nullptr));
  SecretBytes out(32);
  size_t len = 32;
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), out.data(), &len) != 1 || len != 32) {
    ERR_clear_error();
    return make_error(ErrorCode::kSecurity, "X25519 key agreement failed (low-order peer key?)");
  }
  static const uint8_t kZero[32] = {};
  if (ct_equal(out.view(), ByteView(kZero, 32))) {
    return make_error(ErrorCode::kSecurity, "X25519 shared secret is zero (low-order peer key)");
  }
  return out;
}

Result<SecretBytes> x25519_shared(ByteView private_key, ByteView peer_public) {
  if (private_key.size() != 32 || peer_public.size() != 32) {
    return make_error(ErrorCode::kInvalidArgument, "X25519 keys must be 32 bytes");
  }
  PkeyPtr priv = raw_private(EVP_PKEY_X25519, private_key);
  return x25519_derive(priv.get(), peer_public);
}

Result<SecretBytes> x25519_shared(const X25519KeyPair& own, ByteView peer_public) {
  if (!own.handle) return x25519_shared(own.private_key.view(), peer_public);
  return x25519_derive(pkey_of(own.handle), peer_public);
}

Ed25519KeyPair ed25519_generate() {
  Bytes seed = random_bytes(32);
  auto kp = ed25519_from_seed(seed);
  secure_zero(seed.data(), seed.size());
  if (!kp.ok()) fatal("ed25519 keygen");
  return std::move(kp).value();
}

Result<Ed25519KeyPair> ed25519_from_seed(ByteView seed) {
  if (seed.size() != 32) return make_error(ErrorCode::kInvalidArgument, "Ed25519 seed must be 32 bytes");
  PkeyPtr pkey = raw_private(EVP_PKEY_ED25519, seed);
  if (!pkey) fatal("ed25519 key");
  Ed25519KeyPair kp;
  kp.seed = SecretBytes(seed);
  kp.public_key = raw_public32(pkey.get());
  kp.handle = share_pkey(std::move(pkey));
  return kp;
}

static std::array<uint8_t, 64> ed25519_sign_with(EVP_PKEY* pkey, ByteView message) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::array<uint8_t, 64> sig{};
  size_t len = sig.size();
  if (!pkey || !ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey) != 1 ||
      EVP_DigestSign(ctx.get(), sig.data(), &len, message.data(), message.size()) != 1 || len != 64) {
    fatal("ed25519 sign");
  }
  return sig;
}

Result<std::array<uint8_t, 64>> ed25519_sign(ByteView seed, ByteView message) {
  if (seed.size() != 32) return make_error(ErrorCode::kInvalidArgument, "Ed25519 seed must be 32 bytes");
  PkeyPtr pkey = raw_private(EVP_PKEY_ED25519, seed);
  return ed25519_sign_with(pkey.get(), message);
}

Result<std::array<uint8_t, 64>> ed25519_sign(const Ed25519KeyPair& key, ByteView message) {
  if (!key.handle) return ed25519_sign(key.seed.view(), message);
  return ed25519_sign_with(pkey_of(key.handle), message);
}

bool ed25519_verify(ByteView public_key, ByteView message, ByteView signature) {
  if (public_key.size() != 32 || signature.size() != 64) return false;
  PkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, public_key.data(), public_key.size()));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = pkey && ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(), message.size()) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace veil::crypto
