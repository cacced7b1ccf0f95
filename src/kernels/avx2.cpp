// AVX2 + FMA + F16C kernels (int8 dot products with maddubs/madd). Compiled for that target with function
// attributes only, so the library still runs on CPUs without AVX2 (dispatch checks cpu_features()).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <immintrin.h>

#include "kernels/internal.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define VEIL_SIMD_VNNI 0
namespace veil::kernels::detail::avx2 {
#include "kernels/simd_impl.inc"
}  // namespace veil::kernels::detail::avx2
#undef VEIL_SIMD_VNNI

namespace veil::kernels::detail {

uint64_t read_sum_avx2(const uint8_t* p, size_t bytes) { return avx2::read_sum_impl(p, bytes); }

}  // namespace veil::kernels::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// Outside the target region: runs on every CPU.
namespace veil::kernels::detail::avx2 {
#include "kernels/simd_table.inc"
}  // namespace veil::kernels::detail::avx2

namespace veil::kernels::detail {
void fill_avx2(KernelTable& t) { avx2::fill_table(t, "avx2", Isa::kAvx2); }
}  // namespace veil::kernels::detail
