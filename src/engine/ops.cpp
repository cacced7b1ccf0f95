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

struct MatmulJob {
  const kernels::TypeKernels* k;
  const Matrix* m;
  const uint8_t* act;
  size_t act_stride;
  size_t batch;
  float* y;
};

void matmul_task(void* p, size_t r0, size_t r1, int) {
  const MatmulJob& j = *static_cast<const MatmulJob*>(p);
  const Matrix& m = *j.m;
  if (j.batch == 1) {
    if (m.x4) {
      j.k->matvec_x4(m.data, m.rows, m.cols, j.act, j.y + r0, r0, r1);
    } else {
      j.k->matvec(m.data, m.row_stride, m.cols, j.act, j.y + r0, r0, r1);
    }
  } else if (m.x4) {
    j.k->matmul_x4(m.data, m.rows, m.cols, j.act, j.act_stride, j.batch, j.y + r0, m.rows, r0, r1);
  } else {
    j.k->matmul(m.data, m.row_stride, m.cols, j.act, j.act_stride, j.batch, j.y + r0, m.rows, r0, r1);
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

}  // namespace

void matmul(Context& ctx, const Matrix& m, const float* in, size_t batch, float* out) {
  const kernels::TypeKernels& k = ctx.kernels().of(m.type);
  const size_t ab = (k.act_bytes(m.cols) + 63) / 64 * 64;
  std::vector<uint8_t>& act = ctx.buf.act;
  if (act.size() < ab * batch) act.resize(ab * batch);
  if (batch == 1) {
    k.prepare(in, m.cols, act.data());
  } else {
    PrepareJob pj{&k, in, m.cols, act.data(), ab};
    ctx.pool().run(batch, 1, prepare_task, &pj);
  }
  MatmulJob job{&k, &m, act.data(), ab, batch, out};
  ctx.pool().run(m.rows, kRowGrain, matmul_task, &job);
}

void linear(Batch& b, const Matrix& m, const float* in, float* out, const Vec* bias) {
  matmul(b.ctx, m, in, b.n_tokens, out);
  if (bias && !bias->empty()) {
    for (size_t t = 0; t < b.n_tokens; ++t) add(out + t * m.rows, bias->data(), m.rows);
  }
}

void rope(Batch& b, float* x, uint32_t n_heads) {
  const HParams& hp = b.model.hparams();
  if (hp.rope == RopeStyle::kNone) return;
  const uint32_t hd = hp.head_dim, rd = hp.rope_dim;
  for (size_t t = 0; t < b.n_tokens; ++t) {
    const auto pos = static_cast<float>(b.ctx.buf.pos[t]);
    for (uint32_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * hd;
      if (hp.rope == RopeStyle::kNormal) {
        for (uint32_t i = 0; i < rd; i += 2) {
          float freq = 1.0f / std::pow(hp.rope_theta, static_cast<float>(i) / static_cast<float>(rd));
          float val = pos * freq;
          float c = std::cos(val), s = std::sin(val);
          float v0 = v[i], v1 = v[i + 1];
          v[i] = v0 * c - v1 * s;
          v[i + 1] = v0 * s + v1 * c;
        }
      } else {
        const uint32_t half = rd / 2;
        for (uint32_t i = 0; i < half; ++i) {
          float freq = 1.0f / std::pow(hp.rope_theta, static_cast<float>(2 * i) / static_cast<float>(rd));
          float val = pos * freq;
          float c = std::cos(val), s = std::sin(val);
          float v0 = v[i], v1 = v[i + half];
          v[i] = v0 * c - v1 * s;
          v[i + half] = v0 * s + v1 * c;
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
    uint32_t pos = b.ctx.buf.pos[t];
    std::memcpy(c->k(layer, pos), k + t * kv_dim, kv_dim * sizeof(float));
    std::memcpy(c->v(layer, pos), v + t * kv_dim, kv_dim * sizeof(float));
  }
}

namespace {

struct AttnCtx {
  Batch* b;
  uint32_t layer;
  const float* q;
  float* out;
};

void attention_task(void* p, size_t begin, size_t end, int) {
  auto* a = static_cast<AttnCtx*>(p);
  Batch& b = *a->b;
  const HParams& hp = b.model.hparams();
  const uint32_t hd = hp.head_dim, nh = hp.n_head, group = hp.n_head / hp.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  thread_local std::vector<float> scores;
  for (size_t i = begin; i < end; ++i) {
    size_t t = i / nh;
    uint32_t h = static_cast<uint32_t>(i % nh);
    uint32_t kvh = h / group;
    KvCache* c = b.requests[b.ctx.buf.seq[t]].cache;
    const uint32_t n = b.ctx.buf.pos[t] + 1;
    if (scores.size() < n) scores.resize(std::max<size_t>(n, 256));
    const float* q = a->q + (t * nh + h) * hd;
    float max = -INFINITY;
    for (uint32_t p2 = 0; p2 < n; ++p2) {
      const float* k = c->k(a->layer, p2) + size_t{kvh} * hd;
      float s = 0.0f;
      for (uint32_t j = 0; j < hd; ++j) s += q[j] * k[j];
      s *= scale;
      scores[p2] = s;
      max = std::max(max, s);
    }
    float sum = 0.0f;
    for (uint32_t p2 = 0; p2 < n; ++p2) {
      scores[p2] = std::exp(scores[p2] - max);
      sum += scores[p2];
    }
    float* o = a->out + (t * nh + h) * hd;
    std::fill(o, o + hd, 0.0f);
    for (uint32_t p2 = 0; p2 < n; ++p2) {
      const float* v = c->v(a->layer, p2) + size_t{kvh} * hd;
      float w = scores[p2] / sum;
      for (uint32_t j = 0; j < hd; ++j) o[j] += w * v[j];
    }
  }
}

}  // namespace

void attention(Batch& b, uint32_t layer, const float* q, float* out) {
  AttnCtx a{&b, layer, q, out};
  b.ctx.pool().run(b.n_tokens * b.model.hparams().n_head, 1, attention_task, &a);
}

void add(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

void silu_mul(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float g = gate[i];
    gate[i] = g * (1.0f / (1.0f + std::exp(-g))) * up[i];
  }
}

void gelu(float* x, size_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (size_t i = 0; i < n; ++i) {
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
  }
}

}  // namespace veil::engine::ops
