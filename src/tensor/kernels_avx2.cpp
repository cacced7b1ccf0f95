// AVX2 + FMA + F16C kernels. Compiled with per-function target attributes, chosen at run time only when the CPU
// has the features (kernels.cpp). F32/F16 rows are dotted with f32 activations; Q8_0/Q4_0 rows with the
// activation quantised to Q8_0 blocks on the fly (integer dot per block, scaled by both block scales).
#include "tensor/kernels_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "tensor/blocks.h"

#define VEIL_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace veil::tensor {
namespace {

VEIL_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

size_t f32_act_bytes(size_t n) { return n * sizeof(float); }
void f32_prepare(const float* x, size_t n, uint8_t* out) { std::memcpy(out, x, n * sizeof(float)); }

VEIL_AVX2 void matvec_f32(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* x = reinterpret_cast<const float*>(act);
  for (size_t r = r0; r < r1; ++r) {
    const auto* row = reinterpret_cast<const float*>(w + r * stride);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += row[i] * x[i];
    y[r - r0] = s;
  }
}

VEIL_AVX2 void matvec_f16(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* x = reinterpret_cast<const float*>(act);
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
      __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i + 16)));
      a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
      a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      s += fp16_to_f32(h) * x[i];
    }
    y[r - r0] = s;
  }
}

// Activation as Q8_0 blocks, with the scale kept in f32 (more precise than the fp16 of the stored format).
struct ActQ8 {
  float d;
  int8_t qs[32];
};

size_t q8_act_bytes(size_t n) { return n / 32 * sizeof(ActQ8); }

VEIL_AVX2 void q8_prepare(const float* x, size_t n, uint8_t* out) {
  auto* blocks = reinterpret_cast<ActQ8*>(out);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (size_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    blocks[b].d = d;
    __m256 mul = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), _MM_FROUND_TO_NEAREST_INT));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), _MM_FROUND_TO_NEAREST_INT));
    __m256i p01 = _mm256_packs_epi32(i0, i1);
    __m256i p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    // packs interleave 128-bit lanes: restore element order.
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(blocks[b].qs), p);
  }
}

// Sum of products of 32 signed bytes (a) with 32 signed bytes (b), as 8 int32 lanes converted to float.
VEIL_AVX2 inline __m256 mul_sum_i8(__m256i a, __m256i b) {
  __m256i ax = _mm256_sign_epi8(a, a);
  __m256i sy = _mm256_sign_epi8(b, a);
  __m256i dot16 = _mm256_maddubs_epi16(ax, sy);
  __m256i dot32 = _mm256_madd_epi16(dot16, _mm256_set1_epi16(1));
  return _mm256_cvtepi32_ps(dot32);
}

VEIL_AVX2 void matvec_q8_0(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* xa = reinterpret_cast<const ActQ8*>(act);
  const size_t nb = n / 32;
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * stride;
    __m256 acc = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * sizeof(BlockQ8_0);
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa[b].qs));
      __m256 d = _mm256_set1_ps(fp16_to_f32(dh) * xa[b].d);
      acc = _mm256_fmadd_ps(d, mul_sum_i8(q, xq), acc);
    }
    y[r - r0] = hsum(acc);
  }
}

VEIL_AVX2 void matvec_q4_0(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* xa = reinterpret_cast<const ActQ8*>(act);
  const size_t nb = n / 32;
  const __m256i low = _mm256_set1_epi8(0xF);
  const __m256i eight = _mm256_set1_epi8(8);
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * stride;
    __m256 acc = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * sizeof(BlockQ4_0);
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      // low nibbles are elements 0..15, high nibbles 16..31
      __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
      __m256i q = _mm256_sub_epi8(_mm256_and_si256(both, low), eight);
      __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa[b].qs));
      __m256 d = _mm256_set1_ps(fp16_to_f32(dh) * xa[b].d);
      acc = _mm256_fmadd_ps(d, mul_sum_i8(q, xq), acc);
    }
    y[r - r0] = hsum(acc);
  }
}

KernelSet make_avx2() {
  KernelSet k = scalar_kernels();
  k.name = "avx2";
  k.by_type[static_cast<uint32_t>(TensorType::kF32)] = TypeKernel{f32_act_bytes, f32_prepare, matvec_f32};
  k.by_type[static_cast<uint32_t>(TensorType::kF16)] = TypeKernel{f32_act_bytes, f32_prepare, matvec_f16};
  k.by_type[static_cast<uint32_t>(TensorType::kQ8_0)] = TypeKernel{q8_act_bytes, q8_prepare, matvec_q8_0};
  k.by_type[static_cast<uint32_t>(TensorType::kQ4_0)] = TypeKernel{q8_act_bytes, q8_prepare, matvec_q4_0};
  return k;
}

}  // namespace

const KernelSet* avx2_kernels() {
  static const KernelSet k = make_avx2();
  return &k;
}

}  // namespace veil::tensor

#else

namespace veil::tensor {
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace veil::tensor

#endif
