// Internal: the llama graph pieces qwen2 reuses.
#pragma once

#include "engine/arch.h"

namespace veil::engine {

Status llama_read_hparams(const gguf::File& f, HParams& hp, RopeStyle rope);
Status llama_bind_layer(const Binder& b, const HParams& hp, uint32_t layer, LayerWeights& w, bool qkv_bias);
Status llama_bind_head(const Binder& b, const HParams& hp, Weights& w);
void llama_block(Batch& b, uint32_t layer);
void rms_final_norm(const Model& m, const float* in, float* out, size_t rows);

}  // namespace veil::engine
