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

using ::veil::kernels::bf16_to_f32;
using ::veil::kernels::f32_to_bf16;
using ::veil::kernels::f32_to_fp16;
using ::veil::kernels::fp16_to_f32;

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

// Repacked x4 layout: bytes per block column of a 4-row group.
inline constexpr size_t kX4BlockQ4_0 = 4 * 18;
inline constexpr size_t kX4BlockQ8_0 = 4 * 34;

// Reads `bytes` from p with the ISA's widest loads; returns a value depending on every byte.
uint64_t read_sum_scalar(const uint8_t* p, size_t bytes);
uint64_t read_sum_avx2(const uint8_t* p, size_t bytes);
uint64_t read_sum_avx512(const uint8_t* p, size_t bytes);


}  // namespace veil::kernels::detail
