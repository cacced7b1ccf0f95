#include "engine/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace veil::engine::ops {

void rmsnorm(const float* x, const Vec& w, float eps, size_t rows, size_t n, float* out) {
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* o = out + r * n;
    float ss = 0.0f;
    for (size_t j = 0; j < n; ++j) ss += xr[j] * xr[j];
    ss /= static_cast<float>(n);
    ss += eps;
    ss = 1.0f / std::sqrt(ss);
    for (size_t j = 0; j < n; ++j) o[j] = w[j] * (ss * xr[j]);
  }
}

void layernorm(const float* x, const Vec& w, const Vec& b, float eps, size_t rows, size_t n, float* out) {
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* o = out + r * n;
    double mean = 0;
    for (size_t j = 0; j < n; ++j) mean += xr[j];
    mean /= static_cast<double>(n);
    double var = 0;
    for (size_t j = 0; j < n; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= static_cast<double>(n);
    auto inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    auto m = static_cast<float>(mean);
    for (size_t j = 0; j < n; ++j) o[j] = (xr[j] - m) * inv * w[j] + b[j];
  }
}

namespace {

// Rows per scheduling unit: a multiple of 4 (the x4 layout's groups) and 64 bytes of output (no false sharing).
constexpr size_t kRowGrain = 16;
// Ranges per thread that the pool hands out: a thread the OS deschedules (shared machines) leaves its ranges to
// the others; each range is still long enough that claiming it costs nothing measurable.
constexpr int kChunksPerThread = 4;

// Up to kMaxProducts matrices of one type and width applied to the same prepared activations, their rows
// concatenated into one range that the pool splits (one dispatch instead of one per matrix).
struct MatmulJob {
  const kernels::TypeKernels* k;
  const Product* p;
  size_t count;
  const uint8_t* act;
  size_t act_stride;
  size_t batch;
};

void run_rows(const kernels::TypeKernels& k, const Matrix& m, const uint8_t* act, size_t act_stride, size_t batch,
              float* y, size_t r0, size_t r1) {
  if (batch == 1) {
    if (m.x4) {
      k.matvec_x4(m.data, m.rows, m.cols, act, y + r0, r0, r1);
    } else {
      k.matvec(m.data, m.row_stride, m.cols, act, y + r0, r0, r1);
    }
  } else if (m.x4) {
    k.matmul_x4(m.data, m.rows, m.cols, act, act_stride, batch, y + r0, m.rows, r0, r1);
  } else {
    k.matmul(m.data, m.row_stride, m.cols, act, act_stride, batch, y + r0, m.rows, r0, r1);
  }
}

void matmul_task(void* p, size_t r0, size_t r1, int) {
  const MatmulJob& j = *static_cast<const MatmulJob*>(p);
  size_t offset = 0;
  for (size_t i = 0; i < j.count; ++i) {
    const Matrix& m = *j.p[i].m;
    const size_t lo = std::max(r0, offset), hi = std::min(r1, offset + m.rows);
    if (lo < hi) run_rows(*j.k, m, j.act, j.act_stride, j.batch, j.p[i].out, lo - offset, hi - offset);
    offset += m.rows;
  }
}

struct PrepareJob {
  const kernels::TypeKernels* k;
  const float* x;
  size_t n;
  uint8_t* act;
  size_t act_stride;
};

void prepare_task(void* p, size_t b0, size_t b1, int) {
  const PrepareJob& j = *static_cast<const PrepareJob*>(p);
  for (size_t b = b0; b < b1; ++b) j.k->prepare(j.x + b * j.n, j.n, j.act + b * j.act_stride);
}

// Products that can share one preparation and one dispatch: same type, width and layout; x4 matrices must start on
// a group boundary of the concatenated range (rows a multiple of 4).
bool fusable(std::span<const Product> ps) {
  for (const Product& p : ps) {
    const Matrix& m = *p.m;
    if (m.type != ps[0].m->type || m.cols != ps[0].m->cols || m.x4 != ps[0].m->x4) return false;
    if (m.x4 && m.rows % 4 != 0) return false;
  }
  return true;
}

void matmul_fused(Context& ctx, std::span<const Product> ps, const float* in, size_t batch) {
  const Matrix& m0 = *ps[0].m;
  const kernels::TypeKernels& k = ctx.kernels().of(m0.type);
  const size_t ab = (k.act_bytes(m0.cols) + 63) / 64 * 64;
  std::vector<uint8_t>& act = ctx.buf.act;
  if (act.size() < ab * batch) act.resize(ab * batch);
  if (batch == 1) {
    k.prepare(in, m0.cols, act.data());
  } else {
    PrepareJob pj{&k, in, m0.cols, act.data(), ab};
    ctx.pool().run(batch, 1, prepare_task, &pj);
  }
  size_t rows = 0;
  for (const Product& p : ps) rows += p.m->rows;
  MatmulJob job{&k, ps.data(), ps.size(), act.data(), ab, batch};
  ctx.pool().run(rows, kRowGrain, matmul_task, &job, kChunksPerThread);
}

}  // namespace

void matmul(Context& ctx, const Matrix& m, const float* in, size_t batch, float* out) {
  const Product p{&m, out, nullptr};
  matmul_fused(ctx, {&p, 1}, in, batch);
}

void linear_many(Batch& b, std::span<const Product> ps, const float* in) {
  if (fusable(ps)) {
    matmul_fused(b.ctx, ps, in, b.n_tokens);
  } else {
    for (const Product& p : ps) matmul_fused(b.ctx, {&p, 1}, in, b.n_tokens);
  }
  for (const Product& p : ps) {
    if (p.bias && !p.bias->empty()) {
      for (size_t t = 0; t < b.n_tokens; ++t) add(p.out + t * p.m->rows, p.bias->data(), p.m->rows);
    }
  }
}

void linear(Batch& b, const Matrix& m, const float* in, float* out, const Vec* bias) {
  const Product p{&m, out, bias};
  linear_many(b, {&p, 1}, in);
}

void rope(Batch& b, float* q, uint32_t nq, float* k, uint32_t nk) {
  const HParams& hp = b.model.hparams();
  if (hp.rope == RopeStyle::kNone) return;
  const uint32_t hd = hp.head_dim, rd = hp.rope_dim, half = rd / 2;
  // Per call: the frequencies; per token: cos/sin of each pair's angle, shared by every head of q and k.
  std::vector<float>& tab = b.ctx.buf.rope;
  if (tab.size() < 3 * size_t{half}) tab.resize(3 * size_t{half});
  float* freq = tab.data();
  float* cs = freq + half;
  float* sn = cs + half;
  for (uint32_t i = 0; i < half; ++i) {
    freq[i] = 1.0f / std::pow(hp.rope_theta, static_cast<float>(2 * i) / static_cast<float>(rd));
  }
  for (size_t t = 0; t < b.n_tokens; ++t) {
    const auto pos = static_cast<float>(b.ctx.buf.pos[t]);
    for (uint32_t i = 0; i < half; ++i) {
      const float val = pos * freq[i];
      cs[i] = std::cos(val);
      sn[i] = std::sin(val);
    }
    for (auto [x, n_heads] : {std::pair{q, nq}, std::pair{k, nk}}) {
      for (uint32_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * hd;
        if (hp.rope == RopeStyle::kNormal) {  // adjacent pairs
          for (uint32_t i = 0; i < half; ++i) {
            const float v0 = v[2 * i], v1 = v[2 * i + 1];
            v[2 * i] = v0 * cs[i] - v1 * sn[i];
            v[2 * i + 1] = v0 * sn[i] + v1 * cs[i];
          }
        } else {  // halves (NEOX)
          for (uint32_t i = 0; i < half; ++i) {
            const float v0 = v[i], v1 = v[i + half];
            v[i] = v0 * cs[i] - v1 * sn[i];
            v[i + half] = v0 * sn[i] + v1 * cs[i];
          }
        }
      }
    }
  }
}

void store_kv(Batch& b, uint32_t layer, const float* k, const float* v) {
  const HParams& hp = b.model.hparams();
  const size_t kv_dim = size_t{hp.n_head_kv} * hp.head_dim;
  for (size_t t = 0; t < b.n_tokens; ++t) {
    KvCache* c = b.requests[b.ctx.buf.seq[t]].cache;
    c->store(layer, b.ctx.buf.pos[t], k + t * kv_dim, v + t * kv_dim);
  }
}

namespace {

struct AttnCtx {
  Batch* b;
  uint32_t layer;
  const float* q;
  float* out;
};

// Tokens of one request whose scores are computed together (one matmul against the head's keys); the scores of a
// tile take kAttnTile x positions floats, so memory stays linear in the context length.
constexpr size_t kAttnTile = 16;

// One (request, head) per unit, the request's tokens in tiles. Both products run on the context's F32 kernels:
// scores = the head's K rows (consecutive in the cache) x q, output = the head's rows of the transposed V cache x
// the softmax weights. A token's weights past its own position are zero (causal mask), so every token's sums are
// the ones a per-token loop would make; the scalar table sums in element order.
void attention_task(void* p, size_t begin, size_t end, int thread) {
  auto* a = static_cast<AttnCtx*>(p);
  Batch& b = *a->b;
  const HParams& hp = b.model.hparams();
  const uint32_t hd = hp.head_dim, nh = hp.n_head, group = hp.n_head / hp.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float>& scores = b.ctx.buf.attn_scores[static_cast<size_t>(thread)];  // sized by attention()
  for (size_t u = begin; u < end; ++u) {
    const size_t req = u / nh;
    const auto h = static_cast<uint32_t>(u % nh);
    const uint32_t kvh = h / group;
    KvCache* c = b.requests[req].cache;
    // F32 and F16 rows take the same f32 activations (kernels.h), so q and the softmax weights go in as they are.
    const kernels::TypeKernels& kv = b.ctx.kernels().of(c->kernel_type());
    const size_t eb = c->elem_bytes();
    const uint8_t* keys = c->k_rows(a->layer, kvh);
    const uint8_t* vrows = c->v_rows(a->layer) + size_t{kvh} * hd * c->n_ctx() * eb;
    for (size_t t0 = b.ctx.buf.first[req]; t0 < b.ctx.buf.first[req + 1]; t0 += kAttnTile) {
      const size_t m = std::min<size_t>(kAttnTile, b.ctx.buf.first[req + 1] - t0);
      const size_t n = size_t{b.ctx.buf.pos[t0 + m - 1]} + 1;  // positions the tile's last token sees
      const float* q = a->q + (t0 * nh + h) * hd;
      float* o = a->out + (t0 * nh + h) * hd;
      if (m == 1) {
        kv.matvec(keys, hd * eb, hd, reinterpret_cast<const uint8_t*>(q), scores.data(), 0, n);
      } else {
        kv.matmul(keys, hd * eb, hd, reinterpret_cast<const uint8_t*>(q), size_t{nh} * hd * sizeof(float),
                   m, scores.data(), n, 0, n);
      }
      for (size_t j = 0; j < m; ++j) {
        float* s = scores.data() + j * n;
        const size_t seen = size_t{b.ctx.buf.pos[t0 + j]} + 1;
        float max = -INFINITY;
        for (size_t p2 = 0; p2 < seen; ++p2) {
          s[p2] *= scale;
          max = std::max(max, s[p2]);
        }
        float sum = 0.0f;
        for (size_t p2 = 0; p2 < seen; ++p2) {
          s[p2] = std::exp(s[p2] - max);
          sum += s[p2];
        }
        for (size_t p2 = 0; p2 < seen; ++p2) s[p2] = s[p2] / sum;
        std::fill(s + seen, s + n, 0.0f);
      }
      if (m == 1) {
        kv.matvec(vrows, c->n_ctx() * eb, n, reinterpret_cast<const uint8_t*>(scores.data()), o, 0, hd);
      } else {
        kv.matmul(vrows, c->n_ctx() * eb, n, reinterpret_cast<const uint8_t*>(scores.data()),
                   n * sizeof(float), m, o, size_t{nh} * hd, 0, hd);
      }
    }
  }
}

}  // namespace

void attention(Batch& b, uint32_t layer, const float* q, float* out) {
  // Every thread's score buffer holds a tile of the longest request (the pool's threads never allocate, so a decode
  // step allocates nothing once the buffers have grown).
  uint32_t max_pos = 0;
  for (size_t t = 0; t < b.n_tokens; ++t) max_pos = std::max(max_pos, b.ctx.buf.pos[t]);
  const size_t need = kAttnTile * (size_t{max_pos} + 1);
  auto& bufs = b.ctx.buf.attn_scores;
  bufs.resize(static_cast<size_t>(b.ctx.pool().size()));
  for (auto& s : bufs) {
    if (s.size() < need) s.resize(std::max({need, s.size() * 2, size_t{4096}}));
  }
  AttnCtx a{&b, layer, q, out};
  b.ctx.pool().run(b.requests.size() * b.model.hparams().n_head, 1, attention_task, &a, kChunksPerThread);
}

void add(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

namespace {

// Element-wise activations (the table's) over the pool: each element is computed as the serial loop would, so the
// split changes nothing but the time (decode would otherwise leave the other threads idle here).
constexpr size_t kElementGrain = 1024;

struct ActivationJob {
  const kernels::KernelTable* k;
  float* x;
  const float* up;
};

}  // namespace

void silu_mul(Context& ctx, float* gate, const float* up, size_t n) {
  if (n <= kElementGrain) return ctx.kernels().silu_mul(gate, up, n);
  ActivationJob j{&ctx.kernels(), gate, up};
  ctx.pool().run(n, kElementGrain, [](void* p, size_t b, size_t e, int) {
    auto* a = static_cast<ActivationJob*>(p);
    a->k->silu_mul(a->x + b, a->up + b, e - b);
  }, &j, kChunksPerThread);
}

void gelu(Context& ctx, float* x, size_t n) {
  if (n <= kElementGrain) return ctx.kernels().gelu(x, n);
  ActivationJob j{&ctx.kernels(), x, nullptr};
  ctx.pool().run(n, kElementGrain, [](void* p, size_t b, size_t e, int) {
    auto* a = static_cast<ActivationJob*>(p);
    a->k->gelu(a->x + b, e - b);
  }, &j, kChunksPerThread);
}

}  // namespace veil::engine::ops
