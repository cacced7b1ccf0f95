// tpm_crypto: operations the TPM, vTPM and Nitro verifiers need beyond crypto.h.
//  - digests by algorithm, including SHA-1 (only for TPM PCR banks and event-log replay, where the
//    TPM itself defines SHA-1 values; never for a signature or a key);
//  - RSA signature verification (PKCS#1 v1.5 or PSS) from a raw modulus and exponent, as a TPM or a
//    JWK carries an RSA key.
// Thread-safety: free functions, thread-safe.
#pragma once

#include <cstdint>

#include "core/core.h"

namespace veil::crypto {

enum class DigestAlg { kSha1, kSha256, kSha384, kSha512 };
size_t digest_size(DigestAlg alg);
const char* digest_name(DigestAlg alg);
Bytes digest(DigestAlg alg, ByteView data);

enum class RsaPadding { kPkcs1v15, kPss };

// Verifies `signature` over the already hashed `digest` (made with `alg`) with the RSA key (n, e).
// Modulus 2048..4096 bits. PSS accepts any salt length (the TPM picks it). kSecurity on a bad signature.
Status rsa_verify_digest(RsaPadding padding, ByteView modulus, ByteView exponent, DigestAlg alg, ByteView digest,
                         ByteView signature);

}  // namespace veil::crypto
