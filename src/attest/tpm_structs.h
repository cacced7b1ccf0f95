// tpm_structs: strict parsers for the TPM 2.0 structures a quote carries (attest-internal).
// TCG TPM 2.0 Library, Part 2: Structures (rev 1.59): TPMS_ATTEST (10.12.12), TPMS_QUOTE_INFO (10.12.4),
// TPML_PCR_SELECTION (10.9.7), TPMT_SIGNATURE (11.3.4), TPMT_PUBLIC (12.2.4). All big-endian.
// Every parser consumes the whole input (no trailing bytes), bounds every size field before use, and
// names the structure, field and byte offset in its kCorrupt errors.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/core.h"
#include "crypto/tpm_crypto.h"

namespace veil::attest::tpm {

// TPM_ALG_ID values used here (Part 2, 6.3).
inline constexpr uint16_t kAlgRsa = 0x0001;
inline constexpr uint16_t kAlgSha1 = 0x0004;
inline constexpr uint16_t kAlgSha256 = 0x000B;
inline constexpr uint16_t kAlgSha384 = 0x000C;
inline constexpr uint16_t kAlgSha512 = 0x000D;
inline constexpr uint16_t kAlgNull = 0x0010;
inline constexpr uint16_t kAlgRsassa = 0x0014;
inline constexpr uint16_t kAlgRsapss = 0x0016;
inline constexpr uint16_t kAlgEcdsa = 0x0018;
inline constexpr uint16_t kAlgEcc = 0x0023;
inline constexpr uint16_t kEccNistP256 = 0x0003;
inline constexpr uint16_t kEccNistP384 = 0x0004;

inline constexpr uint32_t kGenerated = 0xFF544347;  // TPM_GENERATED_VALUE
inline constexpr uint16_t kStAttestQuote = 0x8018;

// TPMA_OBJECT bits.
inline constexpr uint32_t kAttrFixedTpm = 1u << 1;
inline constexpr uint32_t kAttrRestricted = 1u << 16;
inline constexpr uint32_t kAttrSign = 1u << 18;

// The hash for a TPM_ALG_ID, or kUnsupported.
Result<crypto::DigestAlg> digest_alg(uint16_t tpm_alg);
// "sha1", "sha256", ... for bank names in claims ("unknown" otherwise).
const char* bank_name(uint16_t tpm_alg);

struct PcrSelection {
  uint16_t hash_alg = 0;
  std::vector<uint32_t> pcrs;  // ascending
};

struct Attest {
  uint32_t magic = 0;
  uint16_t type = 0;
  Bytes qualified_signer;
  Bytes extra_data;
  uint64_t clock = 0;
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  uint8_t safe = 0;
  uint64_t firmware_version = 0;
  std::vector<PcrSelection> selections;
  Bytes pcr_digest;
};

struct Signature {
  uint16_t sig_alg = 0;
  uint16_t hash_alg = 0;
  Bytes rsa;       // RSASSA / RSAPSS
  Bytes ecc_r, ecc_s;  // ECDSA
};

struct Public {
  uint16_t type = 0;
  uint16_t name_alg = 0;
  uint32_t attributes = 0;
  uint16_t scheme = kAlgNull;
  uint16_t scheme_hash = kAlgNull;
  // RSA
  uint16_t key_bits = 0;
  uint32_t exponent = 0;  // 0 means 65537
  Bytes modulus;
  // ECC
  uint16_t curve = 0;
  Bytes x, y;
  Bytes raw;  // the TPMT_PUBLIC as parsed (for the Name)
};

Result<Attest> parse_attest(ByteView data);
Result<Signature> parse_signature(ByteView data);
Result<Public> parse_public(ByteView data);
// Accepts a TPM2B_PUBLIC (u16 size + TPMT_PUBLIC) as well as a bare TPMT_PUBLIC.
Result<Public> parse_public_any(ByteView data);

// Name of an object: nameAlg (2 bytes, big-endian) || H_nameAlg(TPMT_PUBLIC).
Result<Bytes> object_name(const Public& pub);

}  // namespace veil::attest::tpm
