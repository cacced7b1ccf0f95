// qwen2 (Qwen1.5, Qwen2, Qwen2.5): the llama graph with biases on the Q, K and V projections and rotary positions
// applied to the two halves of each head (NEOX style). Output matrix separate or tied.
#include "engine/arch_llama.h"

namespace veil::engine {

const ArchSpec& qwen2_arch() {
  static const ArchSpec spec{
      "qwen2",
      [](const gguf::File& f, HParams& hp) -> Status {
        VEIL_TRY(llama_read_hparams(f, hp, RopeStyle::kNeox));
        if (!f.find("qwen2.attention.layer_norm_rms_epsilon")) hp.norm_eps = 1e-6f;
        if (!f.find("qwen2.rope.freq_base")) hp.rope_theta = 1000000.0f;
        return ok_status();
      },
      [](const Binder& b, const HParams& hp, uint32_t l, LayerWeights& w) { return llama_bind_layer(b, hp, l, w, true); },
      llama_bind_head,
      llama_block,
      rms_final_norm,
  };
  return spec;
}

}  // namespace veil::engine
