// Internal: what an architecture file provides, and the helpers it uses to read metadata and bind tensors.
#pragma once

#include <string>
#include <string_view>

#include "engine/engine.h"

namespace veil::engine {

// Reads `<arch>.<key>` metadata and binds tensors with shape checks; errors name the file, tensor and why.
class Binder {
 public:
  explicit Binder(const gguf::File& file) : f_(file) {}
  const gguf::File& file() const { return f_; }
  bool has(std::string_view name) const { return f_.find_tensor(name) != nullptr; }
  // A 2-D weight with GGUF dims {cols, rows} in a type the kernels support.
  Result<Matrix> matrix(const std::string& name, uint64_t cols, uint64_t rows) const;
  // A 1-D vector of n elements, widened to f32.
  Result<Vec> vec(const std::string& name, uint64_t n) const;

 private:
  const gguf::File& f_;
};

std::string layer_tensor(uint32_t layer, std::string_view name);  // "blk.<layer>.<name>"

// Reads the hyper-parameters every architecture shares (`<arch>.embedding_length`, ...).
Status read_common_hparams(const gguf::File& f, HParams& hp, bool needs_ff);

// The tokens of one forward call, as the block functions see them.
struct Batch {
  const Model& model;
  Context& ctx;
  std::span<ForwardRequest> requests;
  size_t n_tokens;
  float* x;  // hidden states [n_tokens x n_embd], updated in place by each block
};

struct ArchSpec {
  const char* name;
  // Hyper-parameters from metadata (after read_common_hparams).
  Status (*read_hparams)(const gguf::File& f, HParams& hp);
  // Tensors of one block.
  Status (*bind_layer)(const Binder& b, const HParams& hp, uint32_t layer, LayerWeights& w);
  // Final norm (and its bias) and whether the model has learned positions.
  Status (*bind_head)(const Binder& b, const HParams& hp, Weights& w);
  // One transformer block over the batch.
  void (*block)(Batch& batch, uint32_t layer);
  // Final normalisation of `rows` hidden states (RMSNorm or LayerNorm).
  void (*final_norm)(const Model& m, const float* in, float* out, size_t rows);
};

const ArchSpec& llama_arch();
const ArchSpec& qwen2_arch();
const ArchSpec& gpt2_arch();

}  // namespace veil::engine
