// engine: Veil's CPU transformer inference. Read this first.
//
//   auto file  = std::make_shared<gguf::File>(*gguf::File::open(path));   // or File::from_memory (sealed model)
//   auto model = Model::load(file, {});                                      // binds + checks every tensor
//   Context ctx(model->hparams(), {.threads = 4, .max_batch_tokens = 512});
//   KvCache cache = model->new_cache(2048);                                  // one per sequence
//   ForwardRequest r{&cache, prompt_ids, LogitsMode::kLast};
//   model->forward({&r, 1}, ctx);                                            // prefill; logits in ctx.logits()
//   ... then one token per step (several sequences per call: continuous batching).
//
// Graph: each architecture (llama, qwen2, gpt2) is one file (arch_<name>.cpp) that reads its hyper-parameters and
// tensors from GGUF metadata and describes one transformer block in terms of the shared ops (ops.h). The forward pass
// runs over a LayerRange with hidden states in and out: the token embedding runs only when the range starts at
// layer 0 and the output head only when it ends at the last layer, so a pipeline stage runs just its layers.
//
// Batching: one forward() advances several sequences, each with its own KvCache, each by any number of tokens
// (prefill is a request with many tokens). Matrix products run once over all tokens of the batch; attention
// runs per sequence against that sequence's cache.
//
// Kernels: every matrix product goes through src/kernels' dispatch table (kernels::active_table(): the best the
// CPU supports, or VEIL_KERNELS=scalar|avx2|avx512; a Context may be given another table). Q4_0 / Q8_0 matrices are
// repacked at load into the kernels' x4 layout (LoadOptions::repack; docs/engine.md "Repacking" says when and what
// it costs in memory).
//
// Invariants: a Model is immutable after load and may be shared by threads; weights are views into the
// gguf::File (kept alive by the Model) or into the Model's repacked copy (norm vectors and biases are widened to
// f32). A Context (thread pool + scratch buffers) and a KvCache belong to one thread at a time. forward() allocates
// only when a batch is larger than any before it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/core.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"

namespace veil::engine {

using TokenId = int32_t;

enum class RopeStyle { kNone, kNormal /* adjacent pairs (llama) */, kNeox /* halves (qwen2) */ };

struct HParams {
  std::string arch;
  uint32_t n_vocab = 0;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;
  uint32_t n_ff = 0;
  uint32_t n_ctx_train = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  uint32_t rope_dim = 0;
  RopeStyle rope = RopeStyle::kNone;
  bool synthetic = false;  // veil.synthetic = true: random weights for benchmarks only
};

struct LayerRange {
  uint32_t begin = 0;
  uint32_t end = UINT32_MAX;  // clamped to n_layer
};

// A weight vector (norm gains, biases) widened to f32.
using Vec = std::vector<float>;

// A weight matrix [rows x cols] (GGUF dims {cols, rows}) in one kernels type: either the plain GGUF layout (row r
// at data + r * row_stride) or the kernels' repacked x4 layout (x4 = true; kernels::repack_x4).
struct Matrix {
  kernels::Type type = kernels::Type::kF32;
  const uint8_t* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t row_stride = 0;  // bytes of one plain row
  bool x4 = false;
  // Bytes one pass over the matrix reads.
  size_t bytes() const { return x4 ? kernels::repacked_bytes(type, rows, cols) : rows * row_stride; }
};

// Row r of m as f32 (cols values); `scratch` holds a plain copy of a repacked row.
void dequantize_row(const Matrix& m, size_t r, float* dst, std::vector<uint8_t>& scratch);

struct LayerWeights {
  Matrix attn_q, attn_k, attn_v, attn_qkv, attn_out;
  Matrix ffn_gate, ffn_up, ffn_down;
  Vec attn_norm, attn_norm_b, ffn_norm, ffn_norm_b;
  Vec bq, bk, bv, bqkv, bo, b_up, b_down;
};

struct Weights {
  Matrix token_embd;  // [n_vocab x n_embd]
  Matrix pos_embd;    // gpt2: [n_ctx x n_embd]
  Matrix output;      // [n_vocab x n_embd]; token_embd when tied
  bool tied_output = false;
  Vec output_norm, output_norm_b;
  std::vector<LayerWeights> layers;  // n_layer entries; only those in the loaded range are bound
};

// Element type of a KV cache: f32 (exact), or f16 (half the bytes attention streams per token and half the memory
// per slot; keys and values are rounded to nearest-even fp16 when stored, scores and sums stay f32).
enum class KvType { kF32, kF16 };
const char* kv_type_name(KvType t);
Result<KvType> parse_kv_type(std::string_view name);  // "f32" | "f16"

// Key/value cache of one sequence for the layers of one range. Per layer, K is head-major, [n_head_kv x n_ctx x
// head_dim] (one KV head's keys are consecutive rows: attention streams them in order), and V is transposed,
// [kv_dim x n_ctx].
class KvCache {
 public:
  KvCache() = default;
  KvCache(uint32_t n_ctx, LayerRange range, uint32_t n_head_kv, uint32_t head_dim, KvType type = KvType::kF32);
  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_past() const { return n_past_; }
  KvType type() const { return type_; }
  // The kernels' weight type of the cache's rows (attention runs the F32 or F16 matvec over them).
  kernels::Type kernel_type() const { return type_ == KvType::kF16 ? kernels::Type::kF16 : kernels::Type::kF32; }
  size_t elem_bytes() const { return type_ == KvType::kF16 ? 2 : 4; }
  size_t kv_dim() const { return size_t{n_head_kv_} * head_dim_; }
  // Forgets tokens from position `n` on (n <= n_past): e.g. to reuse a shared prompt prefix.
  void truncate(uint32_t n) { if (n < n_past_) n_past_ = n; }
  void clear() { n_past_ = 0; }
  // The K rows of one KV head: n_ctx rows of head_dim elements (elem_bytes() each), position p at row p.
  uint8_t* k_rows(uint32_t layer, uint32_t kv_head) {
    return k_.data() + (((layer - range_.begin) * size_t{n_head_kv_} + kv_head) * n_ctx_) * head_dim_ * elem_bytes();
  }
  // V of one layer transposed, [kv_dim x n_ctx]: row d holds component d of every position, so attention's
  // weighted sum over positions is a matrix-vector product.
  uint8_t* v_rows(uint32_t layer) { return v_.data() + (layer - range_.begin) * size_t{n_ctx_} * kv_dim() * elem_bytes(); }
  // Stores one position's K and V (kv_dim floats each), converted to the cache's type.
  void store(uint32_t layer, uint32_t pos, const float* k, const float* v);
  const LayerRange& range() const { return range_; }
  size_t bytes() const { return k_.size() + v_.size(); }

 private:
  friend class Model;
  uint32_t n_ctx_ = 0;
  uint32_t n_past_ = 0;
  uint32_t n_head_kv_ = 0;
  uint32_t head_dim_ = 0;
  KvType type_ = KvType::kF32;
  LayerRange range_;
  std::vector<uint8_t> k_, v_;
};

enum class LogitsMode { kNone, kLast, kAll };

struct ForwardRequest {
  KvCache* cache = nullptr;
  std::span<const TokenId> tokens;  // appended at positions cache->n_past()...; on a later stage only the count matters
  LogitsMode logits = LogitsMode::kLast;
  uint32_t n_tokens = 0;            // when the range does not start at layer 0: tokens carried by the hidden states
};

struct ContextOptions {
  uint32_t threads = 1;        // the calling thread plus threads - 1 pool workers
  bool pin_threads = false;    // pin thread i to the i-th CPU of the process's affinity mask
  const kernels::KernelTable* kernels = nullptr;  // null: kernels::active_table()
};

// Per-thread working memory: thread pool, activations, logits. Reused across calls.
class Context {
 public:
  Context(const HParams& hp, ContextOptions options);
  // Hidden states [tokens x n_embd]: the input of a range that does not start at layer 0 (fill it with
  // set_hidden), and the output of a range that does not end at the last layer.
  std::span<const float> hidden() const { return {x_.data(), n_tokens_ * size_t{n_embd_}}; }
  void set_hidden(std::span<const float> h);
  // Logits of the rows asked for, in request order: [rows x n_vocab].
  std::span<const float> logits() const { return {logits_.data(), n_logit_rows_ * size_t{n_vocab_}}; }
  size_t logit_rows() const { return n_logit_rows_; }
  kernels::ThreadPool& pool() { return pool_; }
  const kernels::KernelTable& kernels() const { return *kernels_; }
  void set_kernels(const kernels::KernelTable& k) { kernels_ = &k; }

  // Buffers the ops use (public for the architecture files).
  struct Buffers {
    std::vector<float> xb, xb2, q, k, v, att, hb, hb2, scores;
    std::vector<uint32_t> pos;           // position of each token of the batch
    std::vector<uint32_t> seq;           // request index of each token
    std::vector<uint32_t> first;         // first token of each request (and one past the last request's tokens)
    std::vector<uint8_t> act;            // prepared (quantised) activations of one matrix product
    std::vector<uint8_t> row;            // one plain weight row (embedding lookups in a repacked matrix)
    std::vector<float> rope;             // rotary frequencies and one token's cos/sin
    std::vector<std::vector<float>> attn_scores;  // attention scores, one buffer per pool thread (grown by the caller)
  } buf;

 private:
  friend class Model;
  uint32_t n_embd_, n_vocab_;
  kernels::ThreadPool pool_;
  const kernels::KernelTable* kernels_;
  std::vector<float> x_;
  std::vector<float> logits_;
  size_t n_tokens_ = 0;
  size_t n_logit_rows_ = 0;
};

// Whether Q4_0 / Q8_0 matrices are copied into the kernels' x4 layout at load (docs/engine.md "Repacking").
//   kAuto: when the model file is memory-mapped from disk (the file's pages are released as each matrix is
//          copied, so the resident set stays about the size of the weights), or when the copies total at most
//          kRepackInMemoryLimit (a model decrypted into memory cannot give its pages back).
enum class Repack { kAuto, kNever, kAlways };
inline constexpr size_t kRepackInMemoryLimit = size_t{32} << 20;

struct LoadOptions {
  LayerRange layers;  // bind only these layers (plus embedding / head when the range touches the ends)
  Repack repack = Repack::kAuto;
};

struct ArchSpec;

class Model {
 public:
  static Result<std::shared_ptr<const Model>> load(std::shared_ptr<const gguf::File> file, LoadOptions options = {});

  const HParams& hparams() const { return hp_; }
  const Weights& weights() const { return w_; }
  const gguf::File& file() const { return *file_; }
  LayerRange layers() const { return range_; }
  bool first_stage() const { return range_.begin == 0; }
  bool last_stage() const { return range_.end == hp_.n_layer; }

  // A cache for this model's layer range. n_ctx = 0 means the training context length.
  KvCache new_cache(uint32_t n_ctx, KvType type = KvType::kF32) const;

  // Runs this model's layer range over the batch. Errors: kInvalidArgument for a token id out of range or an
  // empty request, kResourceExhausted when a sequence would exceed its cache. On error no cache is advanced.
  Status forward(std::span<ForwardRequest> requests, Context& ctx) const;

  const ArchSpec& arch() const { return *arch_; }
  // Bytes of weights held in the repacked x4 layout (0 when nothing was repacked).
  size_t repacked_bytes() const { return packed_bytes_; }
  // Bytes of weights one decode step reads: every matrix of the loaded layers plus the output head (the token
  // embedding contributes one row and is not counted).
  uint64_t weight_bytes_per_token() const;

 private:
  Status repack(Repack mode);

  std::shared_ptr<const gguf::File> file_;
  std::shared_ptr<uint8_t> packed_;  // the repacked copies (anonymous memory), when any
  size_t packed_bytes_ = 0;
  HParams hp_;
  Weights w_;
  LayerRange range_;
  const ArchSpec* arch_ = nullptr;
};

// Architecture names Veil runs ("gpt2", "llama", "qwen2").
std::vector<std::string> supported_architectures();

}  // namespace veil::engine
