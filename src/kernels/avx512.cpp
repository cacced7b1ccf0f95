// AVX-512 kernels: the 256-bit kernel family with u8 x s8 dot products through AVX-512 VL VNNI (vpdpbusd), plus
// 512-bit versions of the repacked x4 Q4_0/Q8_0 decode kernel and of the bandwidth probe. Compiled with target
// attributes only, so the binary runs on any x86-64; dispatch uses it only when cpu_features() reports
// avx512f/bw/vl/vnni.
// GCC 12 reports false "uninitialized" warnings inside its own AVX-512 intrinsic headers (_mm512_undefined_*).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <cstring>
#include <type_traits>

#include <immintrin.h>

#include "kernels/internal.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#define VEIL_SIMD_VNNI 1
namespace veil::kernels::detail::avx512 {
#include "kernels/simd_impl.inc"

namespace {

// 512-bit repacked Q4_0x4: one block column of 4 rows is 64 quant bytes = one zmm. Lanes 4k..4k+3 of the
// int32 accumulator belong to row k.
void matvec_x4_q4_0_512(const uint8_t* packed, size_t n, const uint8_t* act, float* y, size_t g0, size_t g1,
                        size_t rows) {
  const size_t nb = n / 32, gstride = nb * 72;
  const auto* a = reinterpret_cast<const ActQ8*>(act);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i rep = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (size_t g = g0; g < g1; ++g) {
    const uint8_t* p = packed + g * gstride;
    __m512 acc = _mm512_setzero_ps();
    __m128 corr = _mm_setzero_ps();
    for (size_t j = 0; j < nb; ++j) {
      const uint8_t* blk = p + j * 72;
      const __m128 d4 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk)));
      float dx, sx;
      std::memcpy(&dx, &a[j].d, 4);
      std::memcpy(&sx, &a[j].s, 4);
      const __m512i q = _mm512_loadu_si512(blk + 8);
      const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a[j].qs)));
      const __m512i xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a[j].qs + 16)));
      __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(q, m4), xlo);
      s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), xhi);
      const __m512 sc = _mm512_permutexvar_ps(rep, _mm512_castps128_ps512(_mm_mul_ps(d4, _mm_set1_ps(dx))));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc);
      corr = _mm_fmadd_ps(d4, _mm_set1_ps(-8.0f * sx), corr);
    }
    // reduce each 128-bit lane (row) to one value
    __m256 h8 = _mm256_hadd_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    // h8 = [r0a r0b r2a r2b | r1a r1b r3a r3b]  (hadd works within 128-bit halves)
    __m256 h4 = _mm256_hadd_ps(h8, h8);  // [r0 r2 r0 r2 | r1 r3 r1 r3]
    __m128 res = _mm_unpacklo_ps(_mm256_castps256_ps128(h4), _mm256_extractf128_ps(h4, 1));
    res = _mm_add_ps(res, corr);
    float o[4];
    _mm_storeu_ps(o, res);
    for (size_t k = 0; k < 4; ++k) {
      size_t r = 4 * g + k;
      if (r < rows) y[r - 4 * g0] = o[k];
    }
  }
}

uint64_t read_sum_512(const uint8_t* p, size_t bytes) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(p + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(p + i + 64));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(p + i + 128));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(p + i + 192));
  }
  uint64_t r = static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
  return r + read_sum_impl(p + i, bytes - i);
}

}  // namespace
}  // namespace veil::kernels::detail::avx512
#undef VEIL_SIMD_VNNI

namespace veil::kernels::detail {

void matvec_x4_avx512(Type t, const uint8_t* packed, size_t n, const uint8_t* act, float* y, size_t g0, size_t g1,
                      size_t rows) {
  if (t == Type::kQ4_0)
    avx512::matvec_x4_q4_0_512(packed, n, act, y, g0, g1, rows);
  else
    avx512::matvec_x4_impl(t, packed, n, act, y, g0, g1, rows);
}

uint64_t read_sum_avx512(const uint8_t* p, size_t bytes) { return avx512::read_sum_512(p, bytes); }

}  // namespace veil::kernels::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// Outside the target region: runs on every CPU.
namespace veil::kernels::detail::avx512 {
#include "kernels/simd_table.inc"
}  // namespace veil::kernels::detail::avx512

namespace veil::kernels::detail {
void fill_avx512(KernelTable& t) { avx512::fill_table(t, "avx512", Isa::kAvx512); }
}  // namespace veil::kernels::detail
