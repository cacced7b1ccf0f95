// Internal: the operations the architecture files compose. All work on row-major [tokens x n] f32 buffers.
#pragma once

#include "engine/arch.h"

namespace veil::engine::ops {

void rmsnorm(const float* x, const Vec& w, float eps, size_t rows, size_t n, float* out);
void layernorm(const float* x, const Vec& w, const Vec& b, float eps, size_t rows, size_t n, float* out);
// out[batch x m.rows] = in[batch x m.cols] * m^T on the context's kernel table and thread pool: the activations
// are prepared (quantised) once, then the rows are split over the threads (matvec for one token, matmul otherwise).
void matmul(Context& ctx, const Matrix& m, const float* in, size_t batch, float* out);
// matmul over the batch's tokens (+ bias).
void linear(Batch& b, const Matrix& m, const float* in, float* out, const Vec* bias = nullptr);
// Several products of the same input (Q, K, V; gate, up): one activation preparation and one dispatch over all
// their rows when the matrices share type, width and layout, else one linear() each.
struct Product {
  const Matrix* m;
  float* out;
  const Vec* bias;
};
void linear_many(Batch& b, std::span<const Product> products, const float* in);
// Rotary embedding of the nq query heads and nk key heads of every token, each token at its own position.
void rope(Batch& b, float* q, uint32_t nq, float* k, uint32_t nk);
// Writes the batch's K and V rows into each sequence's cache for `layer` (V transposed: KvCache::v_rows).
void store_kv(Batch& b, uint32_t layer, const float* k, const float* v);
// Causal multi-head attention (GQA when n_head_kv < n_head) of every token against its sequence's cache.
void attention(Batch& b, uint32_t layer, const float* q, float* out);
void add(float* x, const float* y, size_t n);
// Element-wise, split over the context's threads.
void silu_mul(Context& ctx, float* gate, const float* up, size_t n);  // gate = silu(gate) * up
void gelu(Context& ctx, float* x, size_t n);                           // tanh approximation (GPT-2)

}  // namespace veil::engine::ops
