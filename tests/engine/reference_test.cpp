// gpt2 and qwen2 forward passes against a naive fp32 implementation written here, on small random models built
// with the GGUF writer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "engine/engine.h"
#include "gguf/writer.h"

using namespace veil;
using namespace veil::engine;

namespace {

using Mat = std::vector<float>;  // row-major [rows x cols]

struct Tiny {
  std::string arch;
  uint32_t d = 32, L = 2, heads = 4, kv = 4, ff = 48, vocab = 50, ctx = 32;
  bool tied = false;
  float eps = 1e-5f, theta = 10000.0f;
  std::map<std::string, Mat> w;
  std::mt19937 rng{42};

  uint32_t hd() const { return d / heads; }
  const Mat& operator[](const std::string& n) const { return w.at(n); }
  void rand(const std::string& n, size_t count, float scale, float offset = 0.0f) {
    std::uniform_real_distribution<float> u(-scale, scale);
    Mat m(count);
    for (auto& x : m) x = offset + u(rng);
    w[n] = std::move(m);
  }
};

std::shared_ptr<const gguf::File> build(Tiny& t) {
  const uint32_t d = t.d, qd = t.heads * t.hd(), kvd = t.kv * t.hd();
  gguf::Writer wr;
  const std::string a = t.arch;
  wr.set("general.architecture", gguf::make_string(a));
  wr.set(a + ".context_length", gguf::make_u32(t.ctx));
  wr.set(a + ".embedding_length", gguf::make_u32(d));
  wr.set(a + ".feed_forward_length", gguf::make_u32(t.ff));
  wr.set(a + ".block_count", gguf::make_u32(t.L));
  wr.set(a + ".attention.head_count", gguf::make_u32(t.heads));
  wr.set(a + ".attention.head_count_kv", gguf::make_u32(t.kv));
  if (a == "gpt2") {
    wr.set("gpt2.attention.layer_norm_epsilon", gguf::make_f32(t.eps));
  } else {
    wr.set(a + ".attention.layer_norm_rms_epsilon", gguf::make_f32(t.eps));
    wr.set(a + ".rope.freq_base", gguf::make_f32(t.theta));
  }
  std::map<std::string, std::vector<uint64_t>> dims;
  auto add = [&](const std::string& n, std::vector<uint64_t> shape, float scale, float offset = 0.0f) {
    uint64_t count = 1;
    for (auto x : shape) count *= x;
    t.rand(n, count, scale, offset);
    dims[n] = shape;
  };
  add("token_embd.weight", {d, t.vocab}, 1.0f);
  if (!t.tied) add("output.weight", {d, t.vocab}, 0.3f);
  add("output_norm.weight", {d}, 0.2f, 1.0f);
  if (a == "gpt2") {
    add("position_embd.weight", {d, t.ctx}, 0.5f);
    add("output_norm.bias", {d}, 0.1f);
  }
  for (uint32_t l = 0; l < t.L; ++l) {
    auto n = [&](const char* s) { return "blk." + std::to_string(l) + "." + s; };
    add(n("attn_norm.weight"), {d}, 0.2f, 1.0f);
    add(n("ffn_norm.weight"), {d}, 0.2f, 1.0f);
    if (a == "gpt2") {
      add(n("attn_norm.bias"), {d}, 0.1f);
      add(n("ffn_norm.bias"), {d}, 0.1f);
      add(n("attn_qkv.weight"), {d, 3 * d}, 0.3f);
      add(n("attn_qkv.bias"), {3 * d}, 0.1f);
      add(n("attn_output.weight"), {d, d}, 0.3f);
      add(n("attn_output.bias"), {d}, 0.1f);
      add(n("ffn_up.weight"), {d, t.ff}, 0.3f);
      add(n("ffn_up.bias"), {t.ff}, 0.1f);
      add(n("ffn_down.weight"), {t.ff, d}, 0.3f);
      add(n("ffn_down.bias"), {d}, 0.1f);
    } else {
      add(n("attn_q.weight"), {d, qd}, 0.3f);
      add(n("attn_k.weight"), {d, kvd}, 0.3f);
      add(n("attn_v.weight"), {d, kvd}, 0.3f);
      add(n("attn_q.bias"), {qd}, 0.2f);
      add(n("attn_k.bias"), {kvd}, 0.2f);
      add(n("attn_v.bias"), {kvd}, 0.2f);
      add(n("attn_output.weight"), {qd, d}, 0.3f);
      add(n("ffn_gate.weight"), {d, t.ff}, 0.3f);
      add(n("ffn_up.weight"), {d, t.ff}, 0.3f);
      add(n("ffn_down.weight"), {t.ff, d}, 0.3f);
    }
  }
  for (const auto& [n, shape] : dims) {
    const Mat& m = t.w[n];
    EXPECT_TRUE(wr.add_tensor(n, shape, gguf::TensorType::kF32,
                              Bytes(reinterpret_cast<const uint8_t*>(m.data()),
                                    reinterpret_cast<const uint8_t*>(m.data() + m.size())))
                    .ok());
  }
  auto bytes = std::make_shared<Bytes>(wr.finish());
  auto f = gguf::File::from_memory(bytes, *bytes, "tiny-" + a);
  EXPECT_TRUE(f.ok());
  return std::make_shared<const gguf::File>(std::move(f).value());
}

// ---- the naive reference: whole sequence, layer by layer, double accumulation ----

Mat matmul(const Mat& x, size_t T, size_t in, const Mat& w, size_t out, const Mat* bias = nullptr) {
  Mat y(T * out);
  for (size_t t = 0; t < T; ++t) {
    for (size_t o = 0; o < out; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (size_t i = 0; i < in; ++i) s += static_cast<double>(w[o * in + i]) * x[t * in + i];
      y[t * out + o] = static_cast<float>(s);
    }
  }
  return y;
}

Mat norm(const Mat& x, size_t T, size_t d, const Mat& g, const Mat* b, float eps, bool layer) {
  Mat y(x.size());
  for (size_t t = 0; t < T; ++t) {
    double mean = 0, ss = 0;
    if (layer) {
      for (size_t i = 0; i < d; ++i) mean += x[t * d + i];
      mean /= static_cast<double>(d);
    }
    for (size_t i = 0; i < d; ++i) ss += (x[t * d + i] - mean) * (x[t * d + i] - mean);
    double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (size_t i = 0; i < d; ++i) {
      y[t * d + i] = static_cast<float>((x[t * d + i] - mean) * inv * g[i] + (b ? (*b)[i] : 0.0));
    }
  }
  return y;
}

// Rotates each head's two halves (NEOX / qwen2 style).
void rope_halves(Mat& x, size_t T, size_t heads, size_t hd, float theta) {
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < heads; ++h) {
      float* v = &x[(t * heads + h) * hd];
      for (size_t i = 0; i < hd / 2; ++i) {
        double ang = static_cast<double>(t) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        double a = v[i], b = v[i + hd / 2];
        v[i] = static_cast<float>(a * std::cos(ang) - b * std::sin(ang));
        v[i + hd / 2] = static_cast<float>(a * std::sin(ang) + b * std::cos(ang));
      }
    }
  }
}

Mat causal_attention(const Mat& q, const Mat& k, const Mat& v, size_t T, size_t heads, size_t kv_heads, size_t hd) {
  Mat out(T * heads * hd, 0.0f);
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < heads; ++h) {
      size_t g = h / (heads / kv_heads);
      std::vector<double> s(t + 1);
      double mx = -1e300;
      for (size_t u = 0; u <= t; ++u) {
        double dot = 0;
        for (size_t i = 0; i < hd; ++i) dot += static_cast<double>(q[(t * heads + h) * hd + i]) * k[(u * kv_heads + g) * hd + i];
        s[u] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, s[u]);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (size_t i = 0; i < hd; ++i) {
        double o = 0;
        for (size_t u = 0; u <= t; ++u) o += s[u] / sum * v[(u * kv_heads + g) * hd + i];
        out[(t * heads + h) * hd + i] = static_cast<float>(o);
      }
    }
  }
  return out;
}

Mat reference_logits(const Tiny& m, const std::vector<TokenId>& toks) {
  const size_t T = toks.size(), d = m.d, hd = m.hd(), qd = m.heads * hd, kvd = m.kv * hd;
  const bool gpt2 = m.arch == "gpt2";
  Mat x(T * d);
  for (size_t t = 0; t < T; ++t) {
    for (size_t i = 0; i < d; ++i) {
      x[t * d + i] = m["token_embd.weight"][static_cast<size_t>(toks[t]) * d + i];
      if (gpt2) x[t * d + i] += m["position_embd.weight"][t * d + i];
    }
  }
  for (uint32_t l = 0; l < m.L; ++l) {
    auto n = [&](const char* s) { return "blk." + std::to_string(l) + "." + s; };
    Mat q, k, v;
    if (gpt2) {
      Mat h = norm(x, T, d, m[n("attn_norm.weight")], &m[n("attn_norm.bias")], m.eps, true);
      Mat qkv = matmul(h, T, d, m[n("attn_qkv.weight")], 3 * d, &m[n("attn_qkv.bias")]);
      q.resize(T * d), k.resize(T * d), v.resize(T * d);
      for (size_t t = 0; t < T; ++t) {
        for (size_t i = 0; i < d; ++i) {
          q[t * d + i] = qkv[t * 3 * d + i];
          k[t * d + i] = qkv[t * 3 * d + d + i];
          v[t * d + i] = qkv[t * 3 * d + 2 * d + i];
        }
      }
    } else {
      Mat h = norm(x, T, d, m[n("attn_norm.weight")], nullptr, m.eps, false);
      q = matmul(h, T, d, m[n("attn_q.weight")], qd, &m[n("attn_q.bias")]);
      k = matmul(h, T, d, m[n("attn_k.weight")], kvd, &m[n("attn_k.bias")]);
      v = matmul(h, T, d, m[n("attn_v.weight")], kvd, &m[n("attn_v.bias")]);
      rope_halves(q, T, m.heads, hd, m.theta);
      rope_halves(k, T, m.kv, hd, m.theta);
    }
    Mat att = causal_attention(q, k, v, T, m.heads, gpt2 ? m.heads : m.kv, hd);
    Mat o = matmul(att, T, qd, m[n("attn_output.weight")], d, gpt2 ? &m[n("attn_output.bias")] : nullptr);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    if (gpt2) {
      Mat h = norm(x, T, d, m[n("ffn_norm.weight")], &m[n("ffn_norm.bias")], m.eps, true);
      Mat u = matmul(h, T, d, m[n("ffn_up.weight")], m.ff, &m[n("ffn_up.bias")]);
      for (auto& e : u) e = static_cast<float>(0.5 * e * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (e + 0.044715 * e * e * e))));
      Mat dn = matmul(u, T, m.ff, m[n("ffn_down.weight")], d, &m[n("ffn_down.bias")]);
      for (size_t i = 0; i < x.size(); ++i) x[i] += dn[i];
    } else {
      Mat h = norm(x, T, d, m[n("ffn_norm.weight")], nullptr, m.eps, false);
      Mat g = matmul(h, T, d, m[n("ffn_gate.weight")], m.ff);
      Mat u = matmul(h, T, d, m[n("ffn_up.weight")], m.ff);
      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i]);
      Mat dn = matmul(g, T, m.ff, m[n("ffn_down.weight")], d);
      for (size_t i = 0; i < x.size(); ++i) x[i] += dn[i];
    }
  }
  Mat h = norm(x, T, d, m["output_norm.weight"], gpt2 ? &m["output_norm.bias"] : nullptr, m.eps, gpt2);
  return matmul(h, T, d, m[m.tied ? "token_embd.weight" : "output.weight"], m.vocab);
}

void check(Tiny& tiny) {
  auto file = build(tiny);
  auto model = Model::load(file);
  ASSERT_TRUE(model.ok()) << model.error().message();
  EXPECT_EQ((*model)->weights().tied_output, tiny.tied);
  std::vector<TokenId> toks = {3, 17, 0, 49, 22, 22, 8, 31, 5, 40, 11, 2};
  Mat ref = reference_logits(tiny, toks);
  double scale = 0;
  for (float v : ref) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  for (unsigned threads : {1u, 3u}) {
    Context ctx((*model)->hparams(), {.threads = threads});
    ctx.set_kernels(kernels::kernel_table(kernels::Isa::kScalar));
    // A prefill of the first 7 tokens, then the rest one by one.
    KvCache cache = (*model)->new_cache(0);
    std::vector<float> got;
    ForwardRequest pre{&cache, {toks.data(), 7}, LogitsMode::kAll};
    ASSERT_TRUE((*model)->forward({&pre, 1}, ctx).ok());
    got.insert(got.end(), ctx.logits().begin(), ctx.logits().end());
    for (size_t i = 7; i < toks.size(); ++i) {
      ForwardRequest step{&cache, {&toks[i], 1}, LogitsMode::kLast};
      ASSERT_TRUE((*model)->forward({&step, 1}, ctx).ok());
      got.insert(got.end(), ctx.logits().begin(), ctx.logits().end());
    }
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_LE(std::fabs(got[i] - ref[i]), 1e-4 * std::max(1.0, scale))
          << tiny.arch << " logit " << i << " got " << got[i] << " want " << ref[i] << " (scale " << scale << ")";
    }
  }
}

}  // namespace

TEST(Reference, Qwen2MatchesNaiveFp32) {
  Tiny t;
  t.arch = "qwen2";
  t.kv = 2;  // grouped-query attention
  t.eps = 1e-6f;
  check(t);
}

TEST(Reference, Qwen2TiedOutput) {
  Tiny t;
  t.arch = "qwen2";
  t.tied = true;
  t.theta = 1000000.0f;
  check(t);
}

TEST(Reference, Gpt2MatchesNaiveFp32) {
  Tiny t;
  t.arch = "gpt2";
  check(t);
}

TEST(Reference, Gpt2TiedOutput) {
  Tiny t;
  t.arch = "gpt2";
  t.tied = true;
  t.ff = 64;
  check(t);
}

TEST(Reference, Gpt2RefusesPositionsBeyondLearned) {
  Tiny t;
  t.arch = "gpt2";
  t.ctx = 8;
  auto model = Model::load(build(t));
  ASSERT_TRUE(model.ok());
  KvCache cache = (*model)->new_cache(1000);
  EXPECT_EQ(cache.n_ctx(), 8u);
  Context ctx((*model)->hparams(), {});
  std::vector<TokenId> nine(9, 1);
  ForwardRequest r{&cache, nine, LogitsMode::kLast};
  EXPECT_EQ((*model)->forward({&r, 1}, ctx).error().code(), ErrorCode::kResourceExhausted);
}
