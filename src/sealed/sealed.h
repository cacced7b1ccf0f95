// sealed: models encrypted at rest ("sealed models", .vsm) and keys derived from the TEE. Read this first.
//
// Format (docs/sealed-format.md): an authenticated header (identity, plaintext hashes, tensor and layer
// tables, chunk table, HMAC tag) followed by AEAD-sealed chunks of the plaintext GGUF. Every chunk's
// associated data binds the header hash, the chunk index and a final-chunk flag, so truncation,
// reordering and swapping chunks between files or versions are refused. Chunk keys are per file
// (HKDF over the model key and a random file salt), so chunk-index nonces never repeat under one key.
// Format 2 (written by default) splits the model into parts -- one per layer, the input globals, the
// output globals and the rest -- each with its own key derived from the model key; a pipeline stage can
// hold a RangeKeySet (its parts' keys only) that cannot decrypt any other part, and a pipeline front a
// metadata-only set (the rest key alone: metadata and tokenizer, no layer). Format 1 (one chunk key
// for the whole file) is still read.
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
#include <map>
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
inline constexpr uint16_t kFormatVersion1 = 1;  // one chunk key per file
inline constexpr uint16_t kFormatVersion2 = 2;  // one key per part (layer, input, output, rest)

// Parts of a format-2 model, each with its own key (docs/sealed-format.md, "Parts"). A layer's part id
// is its index (layer_of() allows at most 7 digits, so below these).
inline constexpr uint32_t kPartRest = 0xFFFFFFFFu;    // GGUF header, metadata, tokenizer, other globals
inline constexpr uint32_t kPartInput = 0xFFFFFFFEu;   // token_embd.*, pos_embd.*
inline constexpr uint32_t kPartOutput = 0xFFFFFFFDu;  // output.*, output_norm.*
// The part a tensor belongs to, from its name.
uint32_t part_of_tensor(std::string_view name);
// "layer 3", "the input globals (token_embd/pos_embd)", ... for error messages.
std::string part_name(uint32_t part);

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
  std::vector<uint32_t> chunk_parts;     // derived (format 2): the part each chunk belongs to
  crypto::Sha256Digest header_hash{};    // SHA-256 of all header bytes, tag included

  uint64_t chunk_count() const { return chunk_sizes.size(); }
  uint64_t sealed_size() const { return header_size + plaintext_size + chunk_sizes.size() * crypto::kAeadTagSize; }
  // Byte offset in the sealed file of chunk i's ciphertext.
  uint64_t chunk_file_offset(uint64_t i) const { return header_size + chunk_offsets[i] + i * crypto::kAeadTagSize; }
};

// Parses and structurally validates a header from the start of a sealed file (no key needed).
// kCorrupt naming the field and byte offset; kUnsupported for another format version or suite.
// Format 2: a chunk belongs to the part of the last tensor (with bytes) starting at or before it
// (the rest before the first tensor); a tensor whose bytes lie in chunks of another part is kCorrupt.
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
  uint16_t format_version = kFormatVersion2;  // 1: one key for the whole file (older readers)
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

// The parts a stage for `layers` needs, by the LayerRange rule above: its layers, the rest, the input
// globals when first == 0 (or, with tied embeddings, when it holds the last layer), the output globals
// when it holds the last layer (layer_count - 1).
// `metadata_only`: no layer and no input/output globals, the rest alone (GGUF header, metadata, tokenizer):
// what a pipeline front needs. `layers`, `input` and `output` are then {0, 0}, false, false.
struct RangeSpec {
  LayerRange layers;
  bool input = false;
  bool output = false;
  bool metadata_only = false;
};
inline constexpr uint32_t kMaxModelLayers = 1u << 16;  // layer_count a range request may name
inline constexpr uint32_t kMaxRangeLayers = 1024;      // layers in one range key set
// kInvalidArgument unless first <= last < layer_count <= kMaxModelLayers and the range has at most
// kMaxRangeLayers layers.
Result<RangeSpec> range_spec_for(LayerRange layers, uint32_t layer_count, bool tied_embeddings);
// The same from a parsed header (layer_count = last layer + 1; tied: no "output.weight").
Result<RangeSpec> range_spec_for(const Header& header, LayerRange layers);
// The rest part alone (a pipeline front: metadata and tokenizer, no layer).
RangeSpec metadata_only_spec();
bool has_tied_embeddings(const Header& header);
uint32_t layer_count(const Header& header);

// The keys of a format-2 model's parts for one layer range (what the key broker releases to a
// pipeline stage): never the model key, and no key from which another part's key can be derived.
// Bound to the model id, version and key id it was derived for. Secret bytes live in SecretBytes.
class RangeKeySet {
 public:
  static constexpr uint8_t kWireVersion = 1;          // a layer range's set
  static constexpr uint8_t kWireVersionMetadata = 2;  // a metadata-only set (the rest key alone)
  // Derives the set from the whole model key (the broker; tests).
  static Result<RangeKeySet> derive(const SecretBytes& model_key, std::string_view model_id, uint64_t model_version,
                                    const RangeSpec& spec);
  // Wire form of a range set: u8 1 | key_id[16] | str16 model_id | u64 model_version | u32 first | u32 last |
  // u8 flags (1: input, 2: output) | 32-byte keys: rest, [input], [output], layers first..last.
  // Of a metadata-only set: u8 2 | key_id[16] | str16 model_id | u64 model_version | 32-byte rest key.
  static Result<RangeKeySet> parse(ByteView wire);
  SecretBytes serialize() const;

  const std::string& model_id() const { return model_id_; }
  uint64_t model_version() const { return model_version_; }
  const std::array<uint8_t, 16>& key_id() const { return key_id_; }
  const RangeSpec& spec() const { return spec_; }
  bool holds(uint32_t part) const;
  // The part's key, or an empty view when the set does not hold it.
  ByteView part_key(uint32_t part) const;
  // "layers 2..3 + rest + output" (or "metadata only (rest)"), for logs and the audit (no key material).
  std::string describe() const;

 private:
  size_t slot_of(uint32_t part) const;  // index into keys_ (in 32-byte units), SIZE_MAX if not held
  std::string model_id_;
  uint64_t model_version_ = 0;
  std::array<uint8_t, 16> key_id_{};
  RangeSpec spec_;
  SecretBytes keys_;
};

struct LoadOptions {
  std::string expected_model_id;            // when set, a header naming another model is refused
  std::optional<uint64_t> expected_version;  // when set, another version is refused
  std::optional<LayerRange> layers;          // nullopt: the whole model (unless metadata_only)
  // Decrypt only the rest part: the GGUF header, metadata, tokenizer and the global tensors that are neither
  // input (token_embd/pos_embd) nor output (output/output_norm); no layer. Excludes `layers`. What a pipeline
  // front loads; every other tensor stays PROT_NONE.
  bool metadata_only = false;
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
  // Format 2 only: checks the set's model id, version and key id against the header, then the header
  // tag (its key derives from the rest key). decrypt() then opens only the set's parts.
  Status authenticate(const RangeKeySet& keys);
  // Decrypts the given chunks (sorted indices) into `out` (plaintext-sized), each authenticated first.
  // A chunk of a part whose key was not given is refused (kSecurity, naming the part) before any
  // chunk is decrypted.
  Status decrypt(const std::vector<uint64_t>& chunks, uint8_t* out, unsigned threads) const;
  // The part chunk i belongs to (kPartRest for every chunk of a format-1 file).
  uint32_t part_of_chunk(uint64_t i) const;
  // The chunks holding the given layer range (see LayerRange), or all of them.
  std::vector<uint64_t> chunks_for(const std::optional<LayerRange>& layers) const;
  std::vector<size_t> tensors_for(const std::optional<LayerRange>& layers) const;
  // The rest part (LoadOptions::metadata_only): the chunks before the first tensor and those of the
  // tensors in the rest part.
  std::vector<uint64_t> metadata_chunks() const;
  std::vector<size_t> metadata_tensors() const;

 private:
  static Result<SealedReader> from_view(SealedReader r);
  std::vector<uint64_t> chunks_holding(const std::vector<size_t>& tensors) const;  // + the leading chunks
  Status check_key_id(const std::array<uint8_t, 16>& id) const;
  Status check_header_tag(const SecretBytes& mac_key) const;
  MappedFile file_;
  ByteView data_;
  std::string name_;
  Header header_;
  std::map<uint32_t, SecretBytes> chunk_keys_;  // by part; format 1: the file key under kPartRest
  std::string key_holder_;                      // "the model key" or "the range key set (layers A..B)"
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
// The same with a range key set (format 2): every chunk the load needs must belong to a part the set
// holds, else kSecurity naming the part; options.layers or options.metadata_only is required (a set never
// opens the whole model). A metadata-only set opens only a metadata_only load.
Result<LoadedModel> load_sealed_model(const std::filesystem::path& path, const RangeKeySet& keys,
                                      const LoadOptions& options);

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
