// llama (LLaMA 1/2/3, TinyLlama, Mistral-style): pre-RMSNorm blocks, rotary positions on adjacent pairs, grouped-query
// attention, SwiGLU feed-forward, output matrix separate or tied to the token embedding.
//
//   h   = x + Wo · attn(rope(Wq · rms(x)), rope(Wk · rms(x)), Wv · rms(x))
//   out = h + Wdown · (silu(Wgate · rms(h)) * (Wup · rms(h)))
//
// qwen2 (arch_qwen2.cpp) is this graph with biases on Q, K and V and rotary positions on halves.
#include "engine/arch_llama.h"

#include "engine/ops.h"

namespace veil::engine {

Status llama_read_hparams(const gguf::File& f, HParams& hp, RopeStyle rope) {
  VEIL_TRY(read_common_hparams(f, hp, true));
  const std::string a = hp.arch + ".";
  hp.rope = rope;
  if (f.find(a + "attention.layer_norm_rms_epsilon")) {
    VEIL_ASSIGN_OR_RETURN(double eps, f.get_float(a + "attention.layer_norm_rms_epsilon"));
    hp.norm_eps = static_cast<float>(eps);
  }
  if (f.find(a + "rope.freq_base")) {
    VEIL_ASSIGN_OR_RETURN(double theta, f.get_float(a + "rope.freq_base"));
    if (!(theta > 1.0)) return make_error(ErrorCode::kCorrupt, "model {}: metadata '{}rope.freq_base' must exceed 1", f.name(), a);
    hp.rope_theta = static_cast<float>(theta);
  }
  if (f.find(a + "rope.dimension_count")) {
    VEIL_ASSIGN_OR_RETURN(uint64_t rd, f.get_uint(a + "rope.dimension_count"));
    hp.rope_dim = static_cast<uint32_t>(std::min<uint64_t>(rd, 1u << 16));
  }
  return ok_status();
}

Status llama_bind_layer(const Binder& b, const HParams& hp, uint32_t l, LayerWeights& w, bool qkv_bias) {
  const uint64_t d = hp.n_embd, qd = uint64_t{hp.n_head} * hp.head_dim, kvd = uint64_t{hp.n_head_kv} * hp.head_dim;
  auto n = [&](const char* s) { return layer_tensor(l, s); };
  VEIL_ASSIGN_OR_RETURN(w.attn_norm, b.vec(n("attn_norm.weight"), d));
  VEIL_ASSIGN_OR_RETURN(w.attn_q, b.matrix(n("attn_q.weight"), d, qd));
  VEIL_ASSIGN_OR_RETURN(w.attn_k, b.matrix(n("attn_k.weight"), d, kvd));
  VEIL_ASSIGN_OR_RETURN(w.attn_v, b.matrix(n("attn_v.weight"), d, kvd));
  VEIL_ASSIGN_OR_RETURN(w.attn_out, b.matrix(n("attn_output.weight"), qd, d));
  if (qkv_bias) {
    VEIL_ASSIGN_OR_RETURN(w.bq, b.vec(n("attn_q.bias"), qd));
    VEIL_ASSIGN_OR_RETURN(w.bk, b.vec(n("attn_k.bias"), kvd));
    VEIL_ASSIGN_OR_RETURN(w.bv, b.vec(n("attn_v.bias"), kvd));
  }
  VEIL_ASSIGN_OR_RETURN(w.ffn_norm, b.vec(n("ffn_norm.weight"), d));
  VEIL_ASSIGN_OR_RETURN(w.ffn_gate, b.matrix(n("ffn_gate.weight"), d, hp.n_ff));
  VEIL_ASSIGN_OR_RETURN(w.ffn_up, b.matrix(n("ffn_up.weight"), d, hp.n_ff));
  VEIL_ASSIGN_OR_RETURN(w.ffn_down, b.matrix(n("ffn_down.weight"), hp.n_ff, d));
  return ok_status();
}

Status llama_bind_head(const Binder& b, const HParams& hp, Weights& w) {
  VEIL_ASSIGN_OR_RETURN(w.output_norm, b.vec("output_norm.weight", hp.n_embd));
  return ok_status();
}

void llama_block(Batch& b, uint32_t l) {
  const HParams& hp = b.model.hparams();
  const LayerWeights& w = b.model.weights().layers[l];
  auto& B = b.ctx.buf;
  const size_t T = b.n_tokens, d = hp.n_embd, nff = hp.n_ff;

  ops::rmsnorm(b.x, w.attn_norm, hp.norm_eps, T, d, B.xb.data());
  const ops::Product qkv[] = {{&w.attn_q, B.q.data(), &w.bq}, {&w.attn_k, B.k.data(), &w.bk},
                              {&w.attn_v, B.v.data(), &w.bv}};
  ops::linear_many(b, qkv, B.xb.data());
  ops::rope(b, B.q.data(), hp.n_head, B.k.data(), hp.n_head_kv);
  ops::store_kv(b, l, B.k.data(), B.v.data());
  ops::attention(b, l, B.q.data(), B.att.data());
  ops::linear(b, w.attn_out, B.att.data(), B.xb2.data());
  ops::add(b.x, B.xb2.data(), T * d);

  ops::rmsnorm(b.x, w.ffn_norm, hp.norm_eps, T, d, B.xb.data());
  const ops::Product gate_up[] = {{&w.ffn_gate, B.hb.data(), nullptr}, {&w.ffn_up, B.hb2.data(), nullptr}};
  ops::linear_many(b, gate_up, B.xb.data());
  ops::silu_mul(b.ctx, B.hb.data(), B.hb2.data(), T * nff);
  ops::linear(b, w.ffn_down, B.hb.data(), B.xb2.data());
  ops::add(b.x, B.xb2.data(), T * d);
}

void rms_final_norm(const Model& m, const float* in, float* out, size_t rows) {
  ops::rmsnorm(in, m.weights().output_norm, m.hparams().norm_eps, rows, m.hparams().n_embd, out);
}

const ArchSpec& llama_arch() {
  static const ArchSpec spec{
      "llama",
      [](const gguf::File& f, HParams& hp) { return llama_read_hparams(f, hp, RopeStyle::kNormal); },
      [](const Binder& b, const HParams& hp, uint32_t l, LayerWeights& w) { return llama_bind_layer(b, hp, l, w, false); },
      llama_bind_head,
      llama_block,
      rms_final_norm,
  };
  return spec;
}

}  // namespace veil::engine
