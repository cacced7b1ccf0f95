// Internal: byte layout constants and key schedule of the sealed-model format (docs/sealed-format.md).
#pragma once

#include <cstdint>
#include <string_view>

#include "sealed/sealed.h"

namespace veil::sealed::detail {

inline constexpr std::string_view kMagic = "VEILSMDL";
inline constexpr uint16_t kFormatVersion = 1;
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

// Per-file keys: HKDF-Extract(salt = file_salt, ikm = model key), then Expand with a label.
SecretBytes derive_chunk_key(ByteView model_key, ByteView file_salt);
SecretBytes derive_header_mac_key(ByteView model_key, ByteView file_salt);
crypto::Sha256Digest layer_digest(const std::vector<TensorEntry>& tensors, uint32_t layer);
// Layer index from a GGUF tensor name "blk.N.<...>", kNoLayer otherwise.
uint32_t layer_of(std::string_view tensor_name);

void chunk_nonce(uint64_t index, uint8_t out[12]);
void chunk_aad(const crypto::Sha256Digest& header_hash, uint64_t index, bool final, uint8_t out[kAadSize]);

}  // namespace veil::sealed::detail
