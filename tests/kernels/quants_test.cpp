// Quantisation (kernels::quantize_row / quantize): error bounds against exact dequantisation for every type,
// zero and constant blocks, the fp16/bf16 conversions' rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"

namespace veil::kernels {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Worst acceptable |x - deq(q(x))| relative to the largest |x| of the block.
float tolerance(Type t) {
  switch (t) {
    case Type::kF32: return 0;
    case Type::kF16: return 1e-3f;
    case Type::kBF16: return 8e-3f;
    case Type::kQ8_0: return 1.0f / 127;
    case Type::kQ6_K: return 2.5f / 31;
    case Type::kQ5_0: case Type::kQ5_1: return 1.2f / 16;
    case Type::kQ5_K: return 2.5f / 31;
    case Type::kQ4_K: return 2.5f / 15;
    default: return 1.2f / 8;  // Q4_0, Q4_1
  }
}

TEST(Quant, ConversionsRound) {
  EXPECT_EQ(f32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_fp16(5.9604645e-8f), 0x0001);       // smallest subnormal
  EXPECT_EQ(f32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);  // tie rounds to even (up)
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);  // tie to even
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Quant, QuantiseDequantiseErrorBounds) {
  for (Type t : kAllTypes) {
    const size_t bs = block_elems(t);
    for (size_t blocks : {1u, 3u, 7u}) {
      size_t n = bs * blocks;
      auto x = random_values(n, 7 + static_cast<uint32_t>(blocks), 2.0f);
      x[0] = 0.0f;
      std::vector<uint8_t> q(row_bytes(t, n));
      quantize_row(t, x.data(), q.data(), n);
      std::vector<float> y(n);
      dequantize_row(t, q.data(), y.data(), n);
      const size_t group = bs == 1 ? 1 : bs;
      for (size_t g = 0; g < n; g += group) {
        float amax = 0;
        for (size_t i = g; i < g + group; ++i) amax = std::max(amax, std::fabs(x[i]));
        for (size_t i = g; i < g + group; ++i) {
          float bound = tolerance(t) * (bs == 1 ? std::fabs(x[i]) : amax) + 1e-6f;
          ASSERT_LE(std::fabs(x[i] - y[i]), bound) << type_name(t) << " element " << i;
        }
      }
    }
  }
}

TEST(Quant, ConstantAndZeroBlocks) {
  for (Type t : kAllTypes) {
    size_t n = block_elems(t) * 2;
    std::vector<float> zeros(n, 0.0f);
    std::vector<uint8_t> q(row_bytes(t, n));
    quantize_row(t, zeros.data(), q.data(), n);
    auto y = dequantize(t, q.data(), n);
    for (float v : y) ASSERT_EQ(v, 0.0f) << type_name(t);
    std::vector<float> ones(n, 0.75f);
    quantize_row(t, ones.data(), q.data(), n);
    y = dequantize(t, q.data(), n);
    for (float v : y) ASSERT_NEAR(v, 0.75f, tolerance(t) * 0.75f + 1e-6f) << type_name(t);
  }
}

TEST(Quant, WholeMatrix) {
  auto v = random_values(4 * 64, 3);
  auto q = quantize(Type::kQ8_0, v, 64);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->size(), 4 * row_bytes(Type::kQ8_0, 64));
  EXPECT_EQ(quantize(Type::kQ4_K, std::vector<float>(100), 100).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(quantize(Type::kQ8_0, std::vector<float>(96), 64).error().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace veil::kernels
