// ECDSA over secp256k1: key derivation from 32 secret bytes and signing of SHA-256 digests (for the
// server's response signatures; verification is crypto::ecdsa_verify_digest). Signatures are r || s,
// 32 bytes each, big-endian, with s normalised to the lower half of the group order (low-S), so
// they are accepted by verifiers that insist on it (Ethereum, Bitcoin) as well as by plain ECDSA.
//
// Thread-safety: free functions, safe from any thread.
#pragma once

#include <array>

#include "core/core.h"

namespace veil::crypto {

struct Secp256k1KeyPair {
  SecretBytes private_key;               // 32-byte scalar in [1, n-1], big-endian
  std::array<uint8_t, 65> public_key{};  // uncompressed point 0x04 || X || Y
};

Secp256k1KeyPair secp256k1_generate();
// kInvalidArgument when `private_key` is not 32 bytes or not in [1, n-1].
Result<Secp256k1KeyPair> secp256k1_from_private(ByteView private_key);
// Derives a key from secret input key material: HKDF-SHA256(ikm, info || counter) until the 32-byte
// output is a valid scalar (the first try succeeds with overwhelming probability).
Secp256k1KeyPair secp256k1_derive(ByteView ikm, std::string_view info);
// Signs a 32-byte digest (deterministic nonces are not required: OpenSSL's DRBG supplies k).
Result<std::array<uint8_t, 64>> secp256k1_sign_digest(ByteView private_key, ByteView digest32);

}  // namespace veil::crypto
