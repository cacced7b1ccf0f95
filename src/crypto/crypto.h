// crypto: every cryptographic operation Veil performs, over OpenSSL 3. Read this first.
//
// Design (after Tink): callers get operations, not raw primitives. Key material lives in
// SecretBytes and is zeroed when released; comparisons of secrets use ct_equal (core/bytes.h).
// Nonces for AEAD are derived by the caller only in the record layer and sealed-model format,
// where they are counters that can never repeat under one key.
//
// Thread-safety: free functions are thread-safe; objects are not shared across threads unless noted.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>

#include "core/core.h"

namespace veil::crypto {

using Sha256Digest = std::array<uint8_t, 32>;
using Sha384Digest = std::array<uint8_t, 48>;

Sha256Digest sha256(ByteView data);
Sha384Digest sha384(ByteView data);
std::array<uint8_t, 64> sha512(ByteView data);

enum class HashAlg { kSha256, kSha384, kSha512 };
size_t hash_size(HashAlg alg);

// Incremental hashing.
class Hasher {
 public:
  explicit Hasher(HashAlg alg);
  ~Hasher();
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(ByteView data);
  Bytes finish();  // the hasher can be reused after finish (it is reset)

 private:
  HashAlg alg_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Bytes hmac(HashAlg alg, ByteView key, ByteView data);

// HKDF (RFC 5869).
SecretBytes hkdf_extract(HashAlg alg, ByteView salt, ByteView ikm);
SecretBytes hkdf_expand(HashAlg alg, ByteView prk, ByteView info, size_t length);
SecretBytes hkdf(HashAlg alg, ByteView salt, ByteView ikm, ByteView info, size_t length);

// Cryptographically secure random bytes (OpenSSL's DRBG).
void random_bytes(std::span<uint8_t> out);
Bytes random_bytes(size_t n);

// AEAD ciphers. Suite ids are stable wire values (docs/protocol.md, docs/sealed-format.md).
enum class AeadSuite : uint16_t { kAes256Gcm = 1, kChaCha20Poly1305 = 2 };
inline constexpr size_t kAeadKeySize = 32;
inline constexpr size_t kAeadNonceSize = 12;
inline constexpr size_t kAeadTagSize = 16;
Result<AeadSuite> aead_suite_from_id(uint16_t id);
const char* aead_suite_name(AeadSuite suite);

// An AEAD key bound to one suite. The cipher context is reused across calls (not thread-safe).
class Aead {
 public:
  static Result<Aead> create(AeadSuite suite, ByteView key);
  Aead(Aead&&) noexcept;
  Aead& operator=(Aead&&) noexcept;
  ~Aead();
  AeadSuite suite() const { return suite_; }

  // out = ciphertext || 16-byte tag. `out` is resized.
  Status seal(ByteView nonce, ByteView aad, ByteView plaintext, Bytes& out);
  // Writes ciphertext||tag to `out` (capacity plaintext.size() + 16). In-place allowed (out == plaintext.data()).
  Status seal_into(ByteView nonce, ByteView aad, ByteView plaintext, uint8_t* out);
  // in = ciphertext || tag. Fails with kSecurity when authentication fails.
  Status open(ByteView nonce, ByteView aad, ByteView sealed, Bytes& out);
  // Writes plaintext (sealed.size() - 16 bytes) to `out`. In-place allowed.
  Status open_into(ByteView nonce, ByteView aad, ByteView sealed, uint8_t* out);

 private:
  Aead(AeadSuite suite);
  AeadSuite suite_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// X25519 key agreement.
// `handle` keeps the library's key object made when the pair was created: OpenSSL derives the public key whenever
// a private key is loaded (one scalar multiplication), so operations on the pair reuse it instead of reloading the
// raw bytes. A pair built by hand (no handle) still works, at that extra cost.
struct X25519KeyPair {
  SecretBytes private_key;            // 32 bytes
  std::array<uint8_t, 32> public_key;
  std::shared_ptr<const void> handle;  // opaque; null when built by hand
};
X25519KeyPair x25519_generate();
// Ephemeral keys made while waiting: x25519_prepare_ephemeral() makes a spare pair for the calling thread (a
// handshake calls it while it waits for the peer), and x25519_take_ephemeral() hands that spare out exactly once, or
// makes a pair on the spot when there is none. A spare never crosses threads or a fork.
void x25519_prepare_ephemeral();
X25519KeyPair x25519_take_ephemeral();
Result<X25519KeyPair> x25519_from_private(ByteView private_key);
// Fails with kSecurity for an all-zero shared secret (low-order peer key).
Result<SecretBytes> x25519_shared(ByteView private_key, ByteView peer_public);
Result<SecretBytes> x25519_shared(const X25519KeyPair& own, ByteView peer_public);

// Ed25519 signatures.
struct Ed25519KeyPair {
  SecretBytes seed;  // 32-byte private seed
  std::array<uint8_t, 32> public_key;
  std::shared_ptr<const void> handle;  // opaque (see X25519KeyPair); null when built by hand
};
Ed25519KeyPair ed25519_generate();
Result<Ed25519KeyPair> ed25519_from_seed(ByteView seed);
Result<std::array<uint8_t, 64>> ed25519_sign(ByteView seed, ByteView message);
Result<std::array<uint8_t, 64>> ed25519_sign(const Ed25519KeyPair& key, ByteView message);  // reuses key.handle
bool ed25519_verify(ByteView public_key, ByteView message, ByteView signature);

// ---- ECDSA (P-256, P-384, secp256k1) ----
enum class EcCurve { kP256, kP384, kSecp256k1 };
size_t ec_curve_bytes(EcCurve curve);      // 32 or 48
const char* ec_curve_name(EcCurve curve);  // "P-256", "P-384", "secp256k1"

struct EcKeyPair {
  EcCurve curve = EcCurve::kP256;
  SecretBytes private_key;             // big-endian scalar in [1, n-1], ec_curve_bytes(curve) bytes
  Bytes public_key;                    // uncompressed point 0x04 || X || Y
  std::shared_ptr<const void> handle;  // the loaded key (opaque): signing does not reload it
};
// kInvalidArgument when `private_key` has the wrong size or is not in [1, n-1].
Result<EcKeyPair> ec_from_private(EcCurve curve, ByteView private_key);
EcKeyPair ec_generate(EcCurve curve);
// A key from secret input key material: HKDF-SHA256(salt = none, ikm, info || counter byte) with counter 0, 1, ...
// until the output is a valid scalar (the first try succeeds with overwhelming probability).
EcKeyPair ec_derive(EcCurve curve, ByteView ikm, std::string_view info);
// Signs a digest: r || s, each ec_curve_bytes(curve) big-endian, s normalised to the lower half of the group
// order (low-S, accepted by plain ECDSA verifiers and by those that insist on it). OpenSSL's DRBG supplies k.
Result<Bytes> ecdsa_sign_digest(const EcKeyPair& key, ByteView digest);
// Verifies (r, s) over a digest. public_key: uncompressed point (0x04 || X || Y) or raw X || Y. Decoded public
// keys are cached (a few, bounded), so repeated verifications with one key skip the point validation.
Status ecdsa_verify_digest(EcCurve curve, ByteView public_key, ByteView digest, ByteView r, ByteView s);

}  // namespace veil::crypto
