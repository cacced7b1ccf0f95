// Internal: byte layout constants and key schedule of the sealed-model format (docs/sealed-format.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "sealed/sealed.h"

namespace veil::sealed::detail {

inline constexpr std::string_view kMagic = "VEILSMDL";
inline constexpr size_t kFixedSize = 120;          // bytes before model_id
inline constexpr size_t kTagSize = 32;              // HMAC-SHA256 header tag
inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;
inline constexpr uint32_t kMaxHeaderSize = 64u << 20;
inline constexpr size_t kMaxIdLength = 128;
inline constexpr size_t kMaxNameLength = 256;
inline constexpr uint32_t kMaxTensors = 1u << 20;
inline constexpr uint64_t kMaxChunks = uint64_t{1} << 26;
inline constexpr size_t kAadSize = 32 + 8 + 1;

// Serialises everything but the tag (the caller appends it).
Bytes encode_header_body(const Header& h);

bool valid_model_id(std::string_view id);
bool valid_label(std::string_view label);

// Format 1 per-file keys: HKDF-Extract(salt = file_salt, ikm = model key), then Expand with a label.
SecretBytes derive_chunk_key(ByteView model_key, ByteView file_salt);
SecretBytes derive_header_mac_key(ByteView model_key, ByteView file_salt);

// Format 2 key schedule (docs/sealed-format.md, "Keys and nonces, format 2").
// Part key: HKDF over the model key, bound to the model id, version and part id (no file salt, so the
// broker can derive it from the model key alone).
SecretBytes derive_part_key(ByteView model_key, std::string_view model_id, uint64_t model_version, uint32_t part);
// Per file and part: HKDF-Extract(salt = file_salt, ikm = part key), Expand("veil-sealed-v2 chunk key").
SecretBytes derive_part_chunk_key(ByteView part_key, ByteView file_salt);
// The header MAC key, derivable by every stage: from the rest part's key and the file salt.
SecretBytes derive_v2_header_mac_key(ByteView rest_key, ByteView file_salt);

// The header MAC key and every part's chunk key of a file, from the whole model key (any format).
struct FileKeys {
  SecretBytes header_mac;
  std::map<uint32_t, SecretBytes> chunk;  // by part; format 1: one key under kPartRest
};
FileKeys file_keys_from_model_key(const Header& h, ByteView model_key);

// Format 2: fills h.chunk_parts from the tensor table and checks that no tensor's bytes lie in a chunk
// of another part. On failure: the offending tensor's index and why (the caller words the error).
struct PartViolation {
  size_t tensor = 0;
  std::string why;
};
std::optional<PartViolation> assign_chunk_parts(Header& h);
crypto::Sha256Digest layer_digest(const std::vector<TensorEntry>& tensors, uint32_t layer);
// Layer index from a GGUF tensor name "blk.N.<...>", kNoLayer otherwise.
uint32_t layer_of(std::string_view tensor_name);

void chunk_nonce(uint64_t index, uint8_t out[12]);
void chunk_aad(const crypto::Sha256Digest& header_hash, uint64_t index, bool final, uint8_t out[kAadSize]);

}  // namespace veil::sealed::detail
