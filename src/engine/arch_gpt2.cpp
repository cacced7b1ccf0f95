// gpt2: learned absolute positions added to the token embedding, pre-LayerNorm blocks (with bias), fused QKV projection
// with bias, GELU (tanh approximation) MLP with biases, output matrix separate or tied to the token embedding.
//
//   x0  = tok_embd[t] + pos_embd[p]
//   h   = x + Wo · attn(split(Wqkv · ln1(x) + bqkv)) + bo
//   out = h + Wdown · gelu(Wup · ln2(h) + bup) + bdown
#include <cstring>

#include "engine/ops.h"

namespace veil::engine {
namespace {

Status read_hparams(const gguf::File& f, HParams& hp) {
  VEIL_TRY(read_common_hparams(f, hp, true));
  hp.rope = RopeStyle::kNone;
  if (hp.n_head_kv != hp.n_head) {
    return make_error(ErrorCode::kCorrupt, "model {}: gpt2 needs head_count_kv == head_count", f.name());
  }
  if (hp.head_dim * hp.n_head != hp.n_embd) {
    return make_error(ErrorCode::kCorrupt, "model {}: gpt2 needs key_length * head_count == embedding_length", f.name());
  }
  if (f.find("gpt2.attention.layer_norm_epsilon")) {
    VEIL_ASSIGN_OR_RETURN(double eps, f.get_float("gpt2.attention.layer_norm_epsilon"));
    hp.norm_eps = static_cast<float>(eps);
  }
  return ok_status();
}

Status bind_layer(const Binder& b, const HParams& hp, uint32_t l, LayerWeights& w) {
  const uint64_t d = hp.n_embd;
  auto n = [&](const char* s) { return layer_tensor(l, s); };
  VEIL_ASSIGN_OR_RETURN(w.attn_norm, b.vec(n("attn_norm.weight"), d));
  VEIL_ASSIGN_OR_RETURN(w.attn_norm_b, b.vec(n("attn_norm.bias"), d));
  VEIL_ASSIGN_OR_RETURN(w.attn_qkv, b.matrix(n("attn_qkv.weight"), d, 3 * d));
  VEIL_ASSIGN_OR_RETURN(w.bqkv, b.vec(n("attn_qkv.bias"), 3 * d));
  VEIL_ASSIGN_OR_RETURN(w.attn_out, b.matrix(n("attn_output.weight"), d, d));
  VEIL_ASSIGN_OR_RETURN(w.bo, b.vec(n("attn_output.bias"), d));
  VEIL_ASSIGN_OR_RETURN(w.ffn_norm, b.vec(n("ffn_norm.weight"), d));
  VEIL_ASSIGN_OR_RETURN(w.ffn_norm_b, b.vec(n("ffn_norm.bias"), d));
  VEIL_ASSIGN_OR_RETURN(w.ffn_up, b.matrix(n("ffn_up.weight"), d, hp.n_ff));
  VEIL_ASSIGN_OR_RETURN(w.b_up, b.vec(n("ffn_up.bias"), hp.n_ff));
  VEIL_ASSIGN_OR_RETURN(w.ffn_down, b.matrix(n("ffn_down.weight"), hp.n_ff, d));
  VEIL_ASSIGN_OR_RETURN(w.b_down, b.vec(n("ffn_down.bias"), d));
  return ok_status();
}

Status bind_head(const Binder& b, const HParams& hp, Weights& w) {
  VEIL_ASSIGN_OR_RETURN(w.output_norm, b.vec("output_norm.weight", hp.n_embd));
  VEIL_ASSIGN_OR_RETURN(w.output_norm_b, b.vec("output_norm.bias", hp.n_embd));
  const gguf::TensorInfo* p = b.file().find_tensor("position_embd.weight");
  if (!p || p->dims.size() != 2) {
    return make_error(ErrorCode::kCorrupt, "model {}: tensor 'position_embd.weight' is missing or not 2-D", b.file().name());
  }
  VEIL_ASSIGN_OR_RETURN(w.pos_embd, b.matrix("position_embd.weight", hp.n_embd, p->dims[1]));
  return ok_status();
}

void block(Batch& b, uint32_t l) {
  const HParams& hp = b.model.hparams();
  const LayerWeights& w = b.model.weights().layers[l];
  auto& B = b.ctx.buf;
  const size_t T = b.n_tokens, d = hp.n_embd;

  ops::layernorm(b.x, w.attn_norm, w.attn_norm_b, hp.norm_eps, T, d, B.xb.data());
  ops::linear(b, w.attn_qkv, B.xb.data(), B.hb.data(), &w.bqkv);
  for (size_t t = 0; t < T; ++t) {
    const float* row = B.hb.data() + t * 3 * d;
    std::memcpy(B.q.data() + t * d, row, d * sizeof(float));
    std::memcpy(B.k.data() + t * d, row + d, d * sizeof(float));
    std::memcpy(B.v.data() + t * d, row + 2 * d, d * sizeof(float));
  }
  ops::store_kv(b, l, B.k.data(), B.v.data());
  ops::attention(b, l, B.q.data(), B.att.data());
  ops::linear(b, w.attn_out, B.att.data(), B.xb2.data(), &w.bo);
  ops::add(b.x, B.xb2.data(), T * d);

  ops::layernorm(b.x, w.ffn_norm, w.ffn_norm_b, hp.norm_eps, T, d, B.xb.data());
  ops::linear(b, w.ffn_up, B.xb.data(), B.hb.data(), &w.b_up);
  ops::gelu(b.ctx, B.hb.data(), T * hp.n_ff);
  ops::linear(b, w.ffn_down, B.hb.data(), B.xb2.data(), &w.b_down);
  ops::add(b.x, B.xb2.data(), T * d);
}

void final_norm(const Model& m, const float* in, float* out, size_t rows) {
  const Weights& w = m.weights();
  ops::layernorm(in, w.output_norm, w.output_norm_b, m.hparams().norm_eps, rows, m.hparams().n_embd, out);
}

}  // namespace

const ArchSpec& gpt2_arch() {
  static const ArchSpec spec{"gpt2", read_hparams, bind_layer, bind_head, block, final_norm};
  return spec;
}

}  // namespace veil::engine
