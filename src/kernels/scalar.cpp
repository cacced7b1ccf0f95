// The scalar reference kernels: portable C++, the same per-block integer arithmetic as the SIMD paths.
#include <algorithm>
#include <cmath>

#include "kernels/internal.h"

namespace veil::kernels::detail {
namespace {

// ---- per-row dot products against a prepared activation ----

// Float weights: `Load` reads element i of the row as a float.
template <float (*Load)(const uint8_t*, size_t)>
float dot_float_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const float* x = reinterpret_cast<const float*>(act);
  float s = 0;
  for (size_t i = 0; i < n; ++i) s += Load(w, i) * x[i];
  return s;
}
float load_f32(const uint8_t* w, size_t i) {
  float v;
  std::memcpy(&v, w + 4 * i, 4);
  return v;
}
float load_f16(const uint8_t* w, size_t i) {
  uint16_t h;
  std::memcpy(&h, w + 2 * i, 2);
  return fp16_to_f32(h);
}
float load_bf16(const uint8_t* w, size_t i) {
  uint16_t h;
  std::memcpy(&h, w + 2 * i, 2);
  return bf16_to_f32(h);
}

float dot_q8_0_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ8_0*>(w);
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 32; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < 32; ++j) isum += b[i].qs[j] * a[i].qs[j];
    s += fp16_to_f32(b[i].d) * a[i].d * static_cast<float>(isum);
  }
  return s;
}

float dot_q4_0_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ4_0*>(w);
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 32; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) isum += (b[i].qs[j] & 0xF) * a[i].qs[j] + (b[i].qs[j] >> 4) * a[i].qs[j + 16];
    float dw = fp16_to_f32(b[i].d);
    s += dw * a[i].d * static_cast<float>(isum) - 8.0f * dw * a[i].s;
  }
  return s;
}

float dot_q4_1_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ4_1*>(w);
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 32; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) isum += (b[i].qs[j] & 0xF) * a[i].qs[j] + (b[i].qs[j] >> 4) * a[i].qs[j + 16];
    s += fp16_to_f32(b[i].d) * a[i].d * static_cast<float>(isum) + fp16_to_f32(b[i].m) * a[i].s;
  }
  return s;
}

template <typename B>
int32_t q5_isum(const B& b, const ActQ8& a) {
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  int32_t isum = 0;
  for (int j = 0; j < 16; ++j) {
    int lo = (b.qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
    int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
    isum += lo * a.qs[j] + hi * a.qs[j + 16];
  }
  return isum;
}

float dot_q5_0_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ5_0*>(w);
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 32; ++i) {
    float dw = fp16_to_f32(b[i].d);
    s += dw * a[i].d * static_cast<float>(q5_isum(b[i], a[i])) - 16.0f * dw * a[i].s;
  }
  return s;
}

float dot_q5_1_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ5_1*>(w);
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 32; ++i)
    s += fp16_to_f32(b[i].d) * a[i].d * static_cast<float>(q5_isum(b[i], a[i])) + fp16_to_f32(b[i].m) * a[i].s;
  return s;
}

// Q4_K and Q5_K: eight 32-element sub-blocks with 6-bit scales and mins; `Elem(b, c, l, hi)` is the unsigned
// value of element l of the low (hi = 0) or high (hi = 1) half of 64-element chunk c.
template <typename B, int (*Elem)(const B&, int, int, int)>
float dot_k_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const B*>(w);
  const auto* a = reinterpret_cast<const ActQ8K*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 256; ++i) {
    int32_t isum = 0, msum = 0;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc0, m0, sc1, m1;
      k4_scale_min(2 * c, b[i].scales, &sc0, &m0);
      k4_scale_min(2 * c + 1, b[i].scales, &sc1, &m1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += Elem(b[i], c, l, 0) * a[i].qs[64 * c + l];
        s1 += Elem(b[i], c, l, 1) * a[i].qs[64 * c + 32 + l];
      }
      isum += sc0 * s0 + sc1 * s1;
      msum += m0 * (a[i].bsums[4 * c] + a[i].bsums[4 * c + 1]) + m1 * (a[i].bsums[4 * c + 2] + a[i].bsums[4 * c + 3]);
    }
    s += a[i].d * (fp16_to_f32(b[i].d) * static_cast<float>(isum) - fp16_to_f32(b[i].dmin) * static_cast<float>(msum));
  }
  return s;
}
int q4_k_elem(const BlockQ4_K& b, int c, int l, int hi) {
  uint8_t q = b.qs[32 * c + l];
  return hi ? q >> 4 : q & 0xF;
}
int q5_k_elem(const BlockQ5_K& b, int c, int l, int hi) {
  uint8_t q = b.qs[32 * c + l];
  int low = hi ? q >> 4 : q & 0xF;
  return low | (((b.qh[l] >> (2 * c + hi)) & 1) << 4);
}

// Q6_K element e of a super-block as an unsigned 0..63 value (the stored value is q - 32).
inline int q6_elem(const BlockQ6_K& b, int e) {
  int h = e / 128, r = e % 128, part = r / 32, l = r % 32;
  const uint8_t* ql = b.ql + 64 * h;
  const uint8_t* qh = b.qh + 32 * h;
  int low = (part & 1) ? ql[l + 32] : ql[l];
  low = (part & 2) ? (low >> 4) : (low & 0xF);
  int high = (qh[l] >> (2 * part)) & 3;
  return low | (high << 4);
}

float dot_q6_k_row(const uint8_t* w, size_t n, const uint8_t* act) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(w);
  const auto* a = reinterpret_cast<const ActQ8K*>(act);
  float s = 0;
  for (size_t i = 0; i < n / 256; ++i) {
    int32_t isum = 0, off = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t gs = 0;
      for (int e = 16 * g; e < 16 * g + 16; ++e) gs += q6_elem(b[i], e) * a[i].qs[e];
      isum += b[i].scales[g] * gs;
      off += b[i].scales[g] * a[i].bsums[g];
    }
    s += fp16_to_f32(b[i].d) * a[i].d * static_cast<float>(isum - 32 * off);
  }
  return s;
}

using RowDot = float (*)(const uint8_t*, size_t, const uint8_t*);

template <RowDot F>
void matvec_rows(const uint8_t* w, size_t row_stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  for (size_t r = r0; r < r1; ++r) y[r - r0] = F(w + r * row_stride, n, act);
}

template <RowDot F>
void matmul_rows(const uint8_t* w, size_t row_stride, size_t n, const uint8_t* act, size_t act_stride, size_t batch,
                 float* y, size_t y_stride, size_t r0, size_t r1) {
  for (size_t r = r0; r < r1; ++r)
    for (size_t c = 0; c < batch; ++c) y[c * y_stride + (r - r0)] = F(w + r * row_stride, n, act + c * act_stride);
}

template <RowDot F>
TypeKernels make(size_t (*ab)(size_t), void (*prep)(const float*, size_t, uint8_t*)) {
  TypeKernels k;
  k.act_bytes = ab;
  k.prepare = prep;
  k.matvec = &matvec_rows<F>;
  k.matmul = &matmul_rows<F>;
  return k;
}

// ---- repacked x4 layout (Q4_0 / Q8_0): the same per-block integer arithmetic as the plain kernels ----

template <Type T>
void matvec_x4_ref(const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, float* y, size_t r0,
                   size_t r1) {
  (void)rows;
  const size_t gstride = repacked_group_stride(T, n), nb = n / 32;
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  for (size_t g = r0 / 4; g < (r1 + 3) / 4; ++g) {
    const uint8_t* p = packed + g * gstride;
    float acc[4] = {0, 0, 0, 0};
    for (size_t j = 0; j < nb; ++j) {
      if constexpr (T == Type::kQ4_0) {
        const uint8_t* blk = p + j * kX4BlockQ4_0;
        for (int k = 0; k < 4; ++k) {
          uint16_t dh;
          std::memcpy(&dh, blk + 2 * k, 2);
          const uint8_t* qs = blk + 8 + 16 * k;
          int32_t isum = 0;
          for (int l = 0; l < 16; ++l) isum += (qs[l] & 0xF) * a[j].qs[l] + (qs[l] >> 4) * a[j].qs[l + 16];
          float dw = fp16_to_f32(dh);
          acc[k] += dw * a[j].d * static_cast<float>(isum) - 8.0f * dw * a[j].s;
        }
      } else {
        const uint8_t* blk = p + j * kX4BlockQ8_0;
        for (int k = 0; k < 4; ++k) {
          uint16_t dh;
          std::memcpy(&dh, blk + 2 * k, 2);
          const auto* qs = reinterpret_cast<const int8_t*>(blk + 8 + 32 * k);
          int32_t isum = 0;
          for (int l = 0; l < 32; ++l) isum += qs[l] * a[j].qs[l];
          acc[k] += fp16_to_f32(dh) * a[j].d * static_cast<float>(isum);
        }
      }
    }
    for (size_t k = 0; k < 4; ++k) {
      size_t r = 4 * g + k;
      if (r >= r0 && r < r1) y[r - r0] = acc[k];
    }
  }
}

template <Type T>
void matmul_x4_ref(const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, size_t act_stride, size_t batch,
                   float* y, size_t y_stride, size_t r0, size_t r1) {
  for (size_t c = 0; c < batch; ++c) matvec_x4_ref<T>(packed, rows, n, act + c * act_stride, y + c * y_stride, r0, r1);
}

void silu_mul_ref(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float g = gate[i];
    gate[i] = g * (1.0f / (1.0f + std::exp(-g))) * up[i];
  }
}

void gelu_ref(float* x, size_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (size_t i = 0; i < n; ++i) {
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
  }
}

inline int8_t round_q(float v) {
  float r = std::nearbyint(v);
  r = std::min(127.0f, std::max(-127.0f, r));
  return static_cast<int8_t>(r);
}

inline uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline float uniform(uint64_t& s, float lo, float hi) {
  return lo + (hi - lo) * static_cast<float>(splitmix(s) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace

size_t act_bytes_f32(size_t n) { return n * sizeof(float); }
size_t act_bytes_q8(size_t n) { return (n / 32) * sizeof(ActQ8); }
size_t act_bytes_q8k(size_t n) { return (n / 256) * sizeof(ActQ8K); }

void prepare_f32(const float* x, size_t n, uint8_t* out) { std::memcpy(out, x, n * sizeof(float)); }

void prepare_q8_scalar(const float* x, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n / 32; ++i) {
    const float* xb = x + 32 * i;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    ActQ8 a;
    a.d = amax / 127.0f;
    float id = amax > 0 ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      a.qs[j] = round_q(xb[j] * id);
      sum += a.qs[j];
    }
    a.s = a.d * static_cast<float>(sum);
    std::memcpy(out + i * sizeof(ActQ8), &a, sizeof a);
  }
}

void prepare_q8k_scalar(const float* x, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n / 256; ++i) {
    const float* xb = x + 256 * i;
    float amax = 0;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(xb[j]));
    ActQ8K a;
    a.d = amax / 127.0f;
    float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int g = 0; g < 16; ++g) {
      int32_t sum = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        a.qs[j] = round_q(xb[j] * id);
        sum += a.qs[j];
      }
      a.bsums[g] = static_cast<int16_t>(sum);
    }
    std::memcpy(out + i * sizeof(ActQ8K), &a, sizeof a);
  }
}

void fill_scalar(KernelTable& t) {
  t.name = "scalar";
  t.isa = Isa::kScalar;
  auto set = [&](Type ty, TypeKernels k) { t.by_type[static_cast<uint32_t>(ty)] = k; };
  set(Type::kF32, make<dot_float_row<load_f32>>(act_bytes_f32, prepare_f32));
  set(Type::kF16, make<dot_float_row<load_f16>>(act_bytes_f32, prepare_f32));
  set(Type::kBF16, make<dot_float_row<load_bf16>>(act_bytes_f32, prepare_f32));
  set(Type::kQ8_0, make<dot_q8_0_row>(act_bytes_q8, prepare_q8_scalar));
  set(Type::kQ4_0, make<dot_q4_0_row>(act_bytes_q8, prepare_q8_scalar));
  set(Type::kQ4_1, make<dot_q4_1_row>(act_bytes_q8, prepare_q8_scalar));
  set(Type::kQ5_0, make<dot_q5_0_row>(act_bytes_q8, prepare_q8_scalar));
  set(Type::kQ5_1, make<dot_q5_1_row>(act_bytes_q8, prepare_q8_scalar));
  set(Type::kQ4_K, make<dot_k_row<BlockQ4_K, q4_k_elem>>(act_bytes_q8k, prepare_q8k_scalar));
  set(Type::kQ5_K, make<dot_k_row<BlockQ5_K, q5_k_elem>>(act_bytes_q8k, prepare_q8k_scalar));
  set(Type::kQ6_K, make<dot_q6_k_row>(act_bytes_q8k, prepare_q8k_scalar));
  t.silu_mul = &silu_mul_ref;
  t.gelu = &gelu_ref;
  t.by_type[static_cast<uint32_t>(Type::kQ4_0)].matvec_x4 = &matvec_x4_ref<Type::kQ4_0>;
  t.by_type[static_cast<uint32_t>(Type::kQ4_0)].matmul_x4 = &matmul_x4_ref<Type::kQ4_0>;
  t.by_type[static_cast<uint32_t>(Type::kQ8_0)].matvec_x4 = &matvec_x4_ref<Type::kQ8_0>;
  t.by_type[static_cast<uint32_t>(Type::kQ8_0)].matmul_x4 = &matmul_x4_ref<Type::kQ8_0>;
}

uint64_t read_sum_scalar(const uint8_t* p, size_t bytes) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    uint64_t v[4];
    std::memcpy(v, p + i, 32);
    s0 += v[0]; s1 ^= v[1]; s2 += v[2]; s3 ^= v[3];
  }
  for (; i < bytes; ++i) s0 += p[i];
  return s0 + s1 + s2 + s3;
}

}  // namespace veil::kernels::detail

namespace veil::kernels {
using namespace detail;

std::vector<float> dequantize(Type t, const uint8_t* src, size_t n) {
  std::vector<float> out(n);
  dequantize_row(t, src, out.data(), n);
  return out;
}

void dequantize_row(Type t, const uint8_t* src, float* dst, size_t n) {
  switch (t) {
    case Type::kF32: std::memcpy(dst, src, n * 4); return;
    case Type::kF16:
      for (size_t i = 0; i < n; ++i) dst[i] = load_f16(src, i);
      return;
    case Type::kBF16:
      for (size_t i = 0; i < n; ++i) dst[i] = load_bf16(src, i);
      return;
    case Type::kQ8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
      for (size_t i = 0; i < n / 32; ++i)
        for (int j = 0; j < 32; ++j) dst[32 * i + j] = fp16_to_f32(b[i].d) * b[i].qs[j];
      return;
    }
    case Type::kQ4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
      for (size_t i = 0; i < n / 32; ++i) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; ++j) {
          dst[32 * i + j] = d * ((b[i].qs[j] & 0xF) - 8);
          dst[32 * i + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case Type::kQ4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(src);
      for (size_t i = 0; i < n / 32; ++i) {
        float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 16; ++j) {
          dst[32 * i + j] = d * (b[i].qs[j] & 0xF) + m;
          dst[32 * i + j + 16] = d * (b[i].qs[j] >> 4) + m;
        }
      }
      return;
    }
    case Type::kQ5_0:
    case Type::kQ5_1: {
      size_t bb = t == Type::kQ5_0 ? 22 : 24;
      for (size_t i = 0; i < n / 32; ++i) {
        const uint8_t* p = src + i * bb;
        uint16_t dh, mh = 0;
        std::memcpy(&dh, p, 2);
        if (t == Type::kQ5_1) std::memcpy(&mh, p + 2, 2);
        const uint8_t* qhp = p + (t == Type::kQ5_0 ? 2 : 4);
        const uint8_t* qs = qhp + 4;
        uint32_t qh;
        std::memcpy(&qh, qhp, 4);
        float d = fp16_to_f32(dh), m = t == Type::kQ5_1 ? fp16_to_f32(mh) : 0.0f;
        int off = t == Type::kQ5_0 ? 16 : 0;
        for (int j = 0; j < 16; ++j) {
          int lo = (qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
          int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
          dst[32 * i + j] = d * (lo - off) + m;
          dst[32 * i + j + 16] = d * (hi - off) + m;
        }
      }
      return;
    }
    case Type::kQ4_K:
    case Type::kQ5_K: {
      size_t bb = t == Type::kQ4_K ? 144 : 176;
      for (size_t i = 0; i < n / 256; ++i) {
        const uint8_t* p = src + i * bb;
        uint16_t dh, mh;
        std::memcpy(&dh, p, 2);
        std::memcpy(&mh, p + 2, 2);
        const uint8_t* scales = p + 4;
        const uint8_t* qh = p + 16;
        const uint8_t* qs = t == Type::kQ4_K ? p + 16 : p + 48;
        float d = fp16_to_f32(dh), dmin = fp16_to_f32(mh);
        for (int c = 0; c < 4; ++c) {
          uint8_t sc0, m0, sc1, m1;
          k4_scale_min(2 * c, scales, &sc0, &m0);
          k4_scale_min(2 * c + 1, scales, &sc1, &m1);
          for (int l = 0; l < 32; ++l) {
            int lo = qs[32 * c + l] & 0xF, hi = qs[32 * c + l] >> 4;
            if (t == Type::kQ5_K) {
              lo |= ((qh[l] >> (2 * c)) & 1) << 4;
              hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            dst[256 * i + 64 * c + l] = d * sc0 * lo - dmin * m0;
            dst[256 * i + 64 * c + 32 + l] = d * sc1 * hi - dmin * m1;
          }
        }
      }
      return;
    }
    case Type::kQ6_K: {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
      for (size_t i = 0; i < n / 256; ++i) {
        float d = fp16_to_f32(b[i].d);
        for (int e = 0; e < 256; ++e) dst[256 * i + e] = d * b[i].scales[e / 16] * (q6_elem(b[i], e) - 32);
      }
      return;
    }
  }
}

void fill_random_matrix(Type t, size_t rows, size_t n, uint64_t seed, uint8_t* dst) {
  uint64_t s = seed * 0x2545F4914F6CDD1Dull + 1;
  size_t bytes = rows * row_bytes(t, n);
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t v = splitmix(s);
    std::memcpy(dst + i, &v, std::min<size_t>(8, bytes - i));
  }
  auto put16 = [](uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); };
  size_t nblocks = rows * (n / block_elems(t));
  uint32_t bb = block_bytes(t);
  switch (t) {
    case Type::kF32:
      for (size_t i = 0; i < rows * n; ++i) { float v = uniform(s, -1, 1); std::memcpy(dst + 4 * i, &v, 4); }
      break;
    case Type::kF16:
      for (size_t i = 0; i < rows * n; ++i) put16(dst + 2 * i, f32_to_fp16(uniform(s, -1, 1)));
      break;
    case Type::kBF16:
      for (size_t i = 0; i < rows * n; ++i) put16(dst + 2 * i, f32_to_bf16(uniform(s, -1, 1)));
      break;
    case Type::kQ8_0: case Type::kQ4_0: case Type::kQ5_0:
      for (size_t i = 0; i < nblocks; ++i) put16(dst + i * bb, f32_to_fp16(uniform(s, 0.001f, 0.02f)));
      break;
    case Type::kQ4_1: case Type::kQ5_1:
      for (size_t i = 0; i < nblocks; ++i) {
        put16(dst + i * bb, f32_to_fp16(uniform(s, 0.001f, 0.02f)));
        put16(dst + i * bb + 2, f32_to_fp16(uniform(s, -0.1f, 0.1f)));
      }
      break;
    case Type::kQ4_K: case Type::kQ5_K:
      for (size_t i = 0; i < nblocks; ++i) {
        put16(dst + i * bb, f32_to_fp16(uniform(s, 0.0001f, 0.001f)));
        put16(dst + i * bb + 2, f32_to_fp16(uniform(s, 0.0001f, 0.001f)));
      }
      break;
    case Type::kQ6_K:
      for (size_t i = 0; i < nblocks; ++i) put16(dst + i * bb + 208, f32_to_fp16(uniform(s, 0.0001f, 0.001f)));
      break;
  }
}

}  // namespace veil::kernels
