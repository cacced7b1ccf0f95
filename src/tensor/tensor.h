// tensor: GGUF tensor types (block layouts, exact dequantisation, quantisation) and the matrix-vector kernels
// the engine runs on them. Read this first.
//
// Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32) and Q4_K, Q5_K, Q6_K (super-blocks of 256),
// stored exactly as GGUF/GGML lays them out (little-endian, fp16 scales).
//
// Kernels: a KernelSet holds, per type, how to prepare an activation vector (e.g. keep it as f32, or quantise it
// to Q8 blocks on the fly) and a dot product of one weight row with a prepared activation. "scalar" is the
// reference: exact dequantisation of each block followed by an f32 dot in element order. Faster sets (avx2,
// avx512) fill in the types they accelerate and fall back to the reference for the others. The active set is
// chosen once from the CPU features (core/cpu.h) and can be forced with VEIL_KERNELS=scalar|avx2|avx512.
//
// Thread-safety: every function here is pure; matmul() splits rows over a ThreadPool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/core.h"
#include "gguf/gguf.h"

namespace veil::tensor {

using gguf::TensorType;
class ThreadPool;

inline constexpr TensorType kAllTypes[] = {
    TensorType::kF32,  TensorType::kF16,  TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1,
    TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K,
};

// ---- scalar conversions (round to nearest even) ----
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// True for the types Veil computes with (kAllTypes).
bool is_supported(TensorType type);
uint32_t block_size(TensorType type);
// Bytes of a row of `n` elements (n must be a multiple of block_size).
size_t row_bytes(TensorType type, size_t n);

// Exact dequantisation of `n` elements (a multiple of block_size).
void dequantize_row(TensorType type, const void* src, float* dst, size_t n);
// Quantises `n` elements (a multiple of block_size) into row_bytes(type, n) bytes.
void quantize_row(TensorType type, const float* src, void* dst, size_t n);
// Quantises a whole [rows x row_len] matrix; kInvalidArgument if row_len is not a multiple of the block size.
Result<Bytes> quantize(TensorType type, std::span<const float> values, size_t row_len);
// Dequantises a whole tensor of `n` elements.
std::vector<float> dequantize(TensorType type, const void* src, size_t n);

// ---- kernels ----
struct TypeKernel {
  // Bytes of a prepared activation of n elements, and the preparation (e.g. f32 copy or Q8 blocks).
  size_t (*act_bytes)(size_t n) = nullptr;
  void (*prepare)(const float* x, size_t n, uint8_t* out) = nullptr;
  // Dot products of rows [r0, r1) of a matrix whose rows are `row_stride` bytes apart with one prepared
  // activation: y[r - r0] = dot(row r, act).
  void (*matvec)(const uint8_t* w, size_t row_stride, size_t n, const uint8_t* act, float* y, size_t r0,
                 size_t r1) = nullptr;
};

struct KernelSet {
  const char* name = "scalar";
  TypeKernel by_type[32];  // indexed by the GGUF type id
  const TypeKernel& of(TensorType t) const { return by_type[static_cast<uint32_t>(t) & 31]; }
};

const KernelSet& scalar_kernels();
// The set chosen at startup (VEIL_KERNELS, else the best the CPU supports).
const KernelSet& active_kernels();
// A set by name: "scalar", "avx2", "avx512"; kUnsupported if this CPU or build lacks it.
Result<const KernelSet*> kernels_by_name(std::string_view name);

// A weight matrix [rows x cols] in one type (GGUF dims {cols, rows}).
struct Matrix {
  TensorType type = TensorType::kF32;
  const uint8_t* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t row_stride = 0;  // bytes
};

// Reusable buffers for matmul (grown on first use, then reused: no allocation per token).
struct MatmulScratch {
  std::vector<uint8_t> act;
};

// y[b * w.rows + r] = dot(row r of w, x[b * w.cols ...]) for b in [0, batch). Rows are split over `pool` (may be
// null: the calling thread does everything).
void matmul(const KernelSet& k, const Matrix& w, const float* x, size_t batch, float* y, ThreadPool* pool,
            MatmulScratch& scratch);

// Plain f32 reference dot (element order), used by tests and by the scalar kernels.
float dot_f32(const float* a, const float* b, size_t n);

}  // namespace veil::tensor
