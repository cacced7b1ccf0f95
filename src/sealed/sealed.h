// sealed: models encrypted at rest ("sealed models", .vsm) and keys derived from the TEE. Read this first.
//
// Format (docs/sealed-format.md): an authenticated header (identity, plaintext hashes, tensor and layer
// tables, chunk table, HMAC tag) followed by AEAD-sealed chunks of the plaintext GGUF. Every chunk's
// associated data binds the header hash, the chunk index and a final-chunk flag, so truncation,
// reordering and swapping chunks between files or versions are refused. Chunk keys are per file
// (HKDF over the model key and a random file salt), so chunk-index nonces never repeat under one key.
//
// Invariants:
//  - Plaintext never touches disk: load_sealed_model decrypts from a read-only map of the sealed file
//    into a PlaintextBuffer (anonymous memory, mlock'ed where the limit allows, excluded from core
//    dumps, zeroed before it is freed).
//  - Every chunk is authenticated before any of its bytes is used; the header MAC is checked before
//    any chunk is read. Any failure discards the whole buffer: a partially loaded model is never
//    handed out.
//  - Errors name the header field or chunk index and byte offset; no key material appears in them.
//
// Thread-safety: the functions are thread-safe; a LoadedModel is immutable and may be shared.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"
#include "crypto/crypto.h"
#include "gguf/gguf.h"

namespace veil::attest {
class Provider;
struct Collateral;
}

namespace veil::sealed {

inline constexpr size_t kModelKeySize = 32;
inline constexpr uint32_t kNoLayer = 0xFFFFFFFFu;
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;  // 1 MiB

// One tensor of the sealed GGUF, as listed in the header.
struct TensorEntry {
  std::string name;
  uint64_t offset = 0;  // absolute byte offset in the plaintext GGUF
  uint64_t size = 0;
  uint32_t layer = kNoLayer;  // N for "blk.N.*", kNoLayer for global tensors
  crypto::Sha256Digest sha256{};
};

// Per-layer digest: SHA-256 over (name, sha256) of that layer's tensors, in table order.
struct LayerEntry {
  uint32_t layer = 0;
  crypto::Sha256Digest digest{};
};

// The parsed header. Parsing checks structure only; authenticity needs the key (SealedReader).
struct Header {
  uint16_t format_version = 0;
  crypto::AeadSuite suite = crypto::AeadSuite::kAes256Gcm;
  uint32_t header_size = 0;  // bytes, including the trailing 32-byte tag
  uint32_t chunk_size = 0;   // largest plaintext chunk
  uint64_t plaintext_size = 0;
  uint64_t model_version = 0;  // monotonic counter (rollback protection)
  std::array<uint8_t, 32> file_salt{};
  crypto::Sha256Digest plaintext_sha256{};
  std::array<uint8_t, 16> key_id{};
  std::string model_id;
  std::string version_label;
  std::vector<TensorEntry> tensors;
  std::vector<LayerEntry> layers;
  std::vector<uint32_t> chunk_sizes;     // plaintext bytes per chunk
  std::vector<uint64_t> chunk_offsets;   // derived: plaintext offset of each chunk (prefix sums)
  crypto::Sha256Digest header_hash{};    // SHA-256 of all header bytes, tag included

  uint64_t chunk_count() const { return chunk_sizes.size(); }
  uint64_t sealed_size() const { return header_size + plaintext_size + chunk_sizes.size() * crypto::kAeadTagSize; }
  // Byte offset in the sealed file of chunk i's ciphertext.
  uint64_t chunk_file_offset(uint64_t i) const { return header_size + chunk_offsets[i] + i * crypto::kAeadTagSize; }
};

// Parses and structurally validates a header from the start of a sealed file (no key needed).
// kCorrupt naming the field and byte offset; kUnsupported for another format version or suite.
Result<Header> parse_header(ByteView file_prefix);

// The key id a model key is known by (16 bytes, HKDF of the key; reveals nothing about it).
std::array<uint8_t, 16> key_id_for(ByteView model_key);
// A fresh random 32-byte model key.
SecretBytes generate_model_key();
// Key files hold the key as 64 hex characters (and a newline); written 0600.
Status write_key_file(const std::filesystem::path& path, const SecretBytes& key);
Result<SecretBytes> read_key_file(const std::filesystem::path& path);

// ---- Sealing ----
struct SealOptions {
  std::string model_id;       // 1..128 characters of [A-Za-z0-9._:/+-]
  uint64_t model_version = 0;
  std::string version_label;  // 0..128 printable ASCII characters
  crypto::AeadSuite suite = crypto::AeadSuite::kAes256Gcm;
  uint32_t chunk_size = kDefaultChunkSize;  // 4 KiB .. 64 MiB
};

// A tensor's byte span in the plaintext (absolute offsets).
struct TensorSpan {
  std::string name;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// Seals `plaintext` (a GGUF whose tensors are `tensors`); chunk boundaries are placed at every tensor
// start so a layer range maps onto whole chunks. Returns the sealed file's bytes.
Result<Bytes> seal_bytes(ByteView plaintext, const std::vector<TensorSpan>& tensors, const SecretBytes& key,
                         const SealOptions& options);
// Seals a validated GGUF (its tensors give the chunk boundaries and hashes).
Result<Bytes> seal_gguf(const gguf::File& file, const SecretBytes& key, const SealOptions& options);
// Reads and validates the GGUF at `gguf_path`, seals it, writes `out_path` atomically.
Status seal_file(const std::filesystem::path& gguf_path, const std::filesystem::path& out_path,
                 const SecretBytes& key, const SealOptions& options);

// Header summary for `veil model info X.vsm` (no key needed). json: one JSON object; else text lines.
Result<std::string> describe_sealed_model(const std::filesystem::path& path, bool json);
// True if the file starts with the sealed-model magic.
bool is_sealed_model(const std::filesystem::path& path);

// ---- Loading ----

// Decrypted plaintext in memory that never leaves the process: anonymous pages, mlock'ed where
// allowed, MADV_DONTDUMP, zeroed and unmapped on destruction. Regions that were not loaded (layer
// range loads) are mapped PROT_NONE, so touching them faults instead of reading zeros.
class PlaintextBuffer {
 public:
  static Result<std::unique_ptr<PlaintextBuffer>> allocate(size_t size);
  ~PlaintextBuffer();
  PlaintextBuffer(const PlaintextBuffer&) = delete;
  PlaintextBuffer& operator=(const PlaintextBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  ByteView view() const { return {data_, size_}; }
  bool locked() const { return locked_; }
  // After loading: locks and protects. Ranges are [begin, end) byte offsets that hold plaintext.
  void finalize(const std::vector<std::pair<uint64_t, uint64_t>>& loaded_ranges);

 private:
  PlaintextBuffer(uint8_t* data, size_t size, size_t mapped) : data_(data), size_(size), mapped_(mapped) {}
  uint8_t* data_;
  size_t size_;
  size_t mapped_;
  bool locked_ = false;
  bool finalized_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> loaded_;
};

// Layers [first, last] (inclusive) of a pipeline stage. Always loaded: the GGUF header, metadata and
// tokenizer, and global tensors other than the ones below. "token_embd.*" / "pos_embd.*" (input) are
// loaded when first == 0; "output.*" / "output_norm.*" when last is the model's last layer; with tied
// embeddings (no "output.weight") the last stage loads "token_embd.*" too.
struct LayerRange {
  uint32_t first = 0;
  uint32_t last = 0;
};

struct LoadOptions {
  std::string expected_model_id;            // when set, a header naming another model is refused
  std::optional<uint64_t> expected_version;  // when set, another version is refused
  std::optional<LayerRange> layers;          // nullopt: the whole model
  // Also check the SHA-256 of each loaded tensor (and of the whole GGUF when complete) against the
  // header. Chunk AEAD already authenticates every byte; this cross-checks the owner's hashes.
  bool verify_plaintext_hashes = false;
  unsigned threads = 0;                      // 0: up to 2 (the cores a stage usually has)
};

// Opens a sealed file, authenticates its header with a key, and decrypts chunks.
class SealedReader {
 public:
  static Result<SealedReader> open(const std::filesystem::path& path);
  // Reads a sealed model held in memory by the caller (kept alive while the reader is used).
  static Result<SealedReader> open_memory(ByteView data, std::string name);
  const Header& header() const { return header_; }
  const std::string& name() const { return name_; }

  // Checks the key id (wrong key), then the header tag. Must succeed before decrypt().
  Status authenticate(const SecretBytes& key);
  // Decrypts the given chunks (sorted indices) into `out` (plaintext-sized), each authenticated first.
  Status decrypt(const std::vector<uint64_t>& chunks, uint8_t* out, unsigned threads) const;
  // The chunks holding the given layer range (see LayerRange), or all of them.
  std::vector<uint64_t> chunks_for(const std::optional<LayerRange>& layers) const;
  std::vector<size_t> tensors_for(const std::optional<LayerRange>& layers) const;

 private:
  static Result<SealedReader> from_view(SealedReader r);
  MappedFile file_;
  ByteView data_;
  std::string name_;
  Header header_;
  SecretBytes chunk_key_;
  bool authenticated_ = false;
};

// A model decrypted into memory, ready for the engine. `gguf` views `buffer` and keeps it alive.
struct LoadedModel {
  Header header;
  std::shared_ptr<PlaintextBuffer> buffer;
  gguf::File gguf;
  bool complete = true;                   // false for a layer-range load
  std::vector<std::string> loaded_tensors;  // names whose bytes were decrypted
  bool has_tensor(std::string_view name) const;
};

// Loads a sealed model: parse, authenticate, decrypt and verify the needed chunks, then
// gguf::File::from_memory. Security refusals are kSecurity; malformed files kCorrupt.
Result<LoadedModel> load_sealed_model(const std::filesystem::path& path, const SecretBytes& key,
                                      const LoadOptions& options = {});

// ---- TEE-derived keys ----
// A 32-byte key for `purpose` (e.g. "node-signing-key", "kbs-master-key", "local-state"):
//   HKDF-SHA256(salt = "veil-derive-key-v1", ikm = provider.sealing_root(),
//               info = tee type || 0 || measurement digest || 0 || purpose)
// sealing_root() is bound to the running measurement by the provider (sim: HKDF over the platform
// key and the measurement; real TEEs: their key-derivation interface). When `collateral` is given,
// the provider's own fresh evidence is also verified with it and the verified measurements are
// folded in (measurement digest = SHA-256 over the sorted name/value pairs; empty otherwise).
// Stable across restarts of the same measurement; different for any other measurement or purpose.
Result<SecretBytes> derive_key(attest::Provider& provider, std::string_view purpose,
                               const attest::Collateral* collateral = nullptr);

}  // namespace veil::sealed
