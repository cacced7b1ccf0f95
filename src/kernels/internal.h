// Internal to src/kernels: block structs (GGUF byte layout), activation block formats, scalar helpers and the
// per-ISA table builders.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"

namespace veil::kernels::detail {

// GGUF blocks, byte for byte (fp16 fields as raw uint16_t). Packed, so always read through these structs or
// memcpy: rows are not guaranteed to be aligned.
#pragma pack(push, 1)
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
// Activation blocks (see kernels.h).
struct ActQ8 { float d; float s; int8_t qs[32]; };
struct ActQ8K { float d; int16_t bsums[16]; int8_t qs[256]; };
#pragma pack(pop)
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);
static_assert(sizeof(ActQ8) == 40 && sizeof(ActQ8K) == 292);

inline float fp16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; overflow to infinity.
inline uint16_t f32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffff;
  if (ax >= 0x7f800000) return static_cast<uint16_t>(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
  if (ax >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds to >= 65520: inf
  if (ax < 0x38800000) {  // subnormal half (or zero)
    float af;
    std::memcpy(&af, &ax, 4);
    // scale so that the half subnormal unit (2^-24) becomes 1, round to nearest even via float addition
    float r = af * 16777216.0f;  // 2^24
    uint32_t m = static_cast<uint32_t>(__builtin_nearbyintf(r));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t e = ((ax >> 23) - 127 + 15);
  uint32_t man = ax & 0x7fffff;
  uint32_t h = (e << 10) | (man >> 13);
  uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

// Q4_K / Q5_K 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
inline void k4_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Activation preparation (shared by every ISA: the format must be identical).
size_t act_bytes_f32(size_t n);
size_t act_bytes_q8(size_t n);
size_t act_bytes_q8k(size_t n);
void prepare_f32(const float* x, size_t n, uint8_t* out);
void prepare_q8_scalar(const float* x, size_t n, uint8_t* out);
void prepare_q8k_scalar(const float* x, size_t n, uint8_t* out);

// Table builders, one per ISA source file. Each fills the types it accelerates; dispatch.cpp fills the rest
// from the scalar table.
void fill_scalar(KernelTable& t);
void fill_avx2(KernelTable& t);
void fill_avx512(KernelTable& t);

// Repacked x4 matvec per ISA (t is kQ4_0 or kQ8_0).
void matvec_x4_scalar(Type t, const uint8_t* packed, size_t n, const uint8_t* act, float* y, size_t g0, size_t g1,
                      size_t rows);
void matvec_x4_avx2(Type t, const uint8_t* packed, size_t n, const uint8_t* act, float* y, size_t g0, size_t g1,
                    size_t rows);
void matvec_x4_avx512(Type t, const uint8_t* packed, size_t n, const uint8_t* act, float* y, size_t g0, size_t g1,
                      size_t rows);

// Reads `bytes` from p with the ISA's widest loads; returns a value depending on every byte.
uint64_t read_sum_scalar(const uint8_t* p, size_t bytes);
uint64_t read_sum_avx2(const uint8_t* p, size_t bytes);
uint64_t read_sum_avx512(const uint8_t* p, size_t bytes);

// Generic tiled matmul driver over a per-row/per-columns dot function: processes rows in tiles and, for each
// tile, every column group, so a tile of weights stays in cache for the whole batch.
// dotc(w_row, n, acts[], nc, out[]) computes out[c] = dot(row, acts[c]) for c < nc (nc <= kMaxCols).
inline constexpr int kMaxCols = 4;

}  // namespace veil::kernels::detail
