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
#include <cmath>
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

// 512-bit repacked Q4_0x4 group: one block column of 4 rows is 64 quant bytes = one zmm. Lanes 4k..4k+3 of the
// int32 accumulator belong to row k.
struct X4Q4Group512 {
  static constexpr size_t kBlock = kX4BlockQ4_0;

  template <int C>
  static inline void run(const uint8_t* p, size_t nb, const ActQ8* const* acts, float* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i rep = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc[C];
    __m128 corr[C];
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm512_setzero_ps();
      corr[c] = _mm_setzero_ps();
    }
    for (size_t j = 0; j < nb; ++j) {
      const uint8_t* blk = p + j * kBlock;
      prefetch(blk + kX4Prefetch);
      const __m128 d4 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk)));
      const __m512 d16 = _mm512_permutexvar_ps(rep, _mm512_castps128_ps512(d4));
      const __m512i q = _mm512_loadu_si512(blk + 8);
      const __m512i lo = _mm512_and_si512(q, m4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
      for (int c = 0; c < C; ++c) {
        const ActQ8* a = acts[c] + j;
        const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a->qs)));
        const __m512i xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a->qs + 16)));
        const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d16, _mm512_set1_ps(a->d)), acc[c]);
        corr[c] = _mm_fmadd_ps(d4, _mm_set1_ps(-8.0f * a->s), corr[c]);
      }
    }
    for (int c = 0; c < C; ++c) {
      // reduce each 128-bit lane (row) to one value
      const __m512 v = acc[c];
      __m256 h8 = _mm256_hadd_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      // h8 = [r0a r0b r2a r2b | r1a r1b r3a r3b]  (hadd works within 128-bit halves)
      __m256 h4 = _mm256_hadd_ps(h8, h8);  // [r0 r2 r0 r2 | r1 r3 r1 r3]
      __m128 res = _mm_unpacklo_ps(_mm256_castps256_ps128(h4), _mm256_extractf128_ps(h4, 1));
      res = _mm_add_ps(res, corr[c]);
      float o[4];
      _mm_storeu_ps(o, res);
      for (int k = 0; k < 4; ++k) out[k * C + c] = o[k];
    }
  }
};

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
void fill_avx512(KernelTable& t) {
  avx512::fill_table(t, "avx512", Isa::kAvx512);
  avx512::set_x4<avx512::X4Driver<avx512::X4Q4Group512>>(t.by_type[static_cast<uint32_t>(Type::kQ4_0)]);
}
}  // namespace veil::kernels::detail
