#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "tensor/blocks.h"
#include "tensor/tensor.h"
#include "tensor/thread_pool.h"

using namespace veil;
using namespace veil::tensor;

namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Worst acceptable |x - deq(q(x))| relative to the largest |x| of the block.
float tolerance(TensorType t) {
  switch (t) {
    case TensorType::kF32: return 0;
    case TensorType::kF16: return 1e-3f;
    case TensorType::kBF16: return 8e-3f;
    case TensorType::kQ8_0: return 1.0f / 127;
    case TensorType::kQ6_K: return 2.5f / 31;
    case TensorType::kQ5_0: case TensorType::kQ5_1: return 1.2f / 16;
    case TensorType::kQ5_K: return 2.5f / 31;
    case TensorType::kQ4_K: return 2.5f / 15;
    default: return 1.2f / 8;  // Q4_0, Q4_1
  }
}

}  // namespace

TEST(Fp16, ConversionsRoundTripAndRound) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = fp16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_fp16(f), h) << h;
  }
  EXPECT_EQ(f32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_fp16(5.9604645e-8f), 0x0001);       // smallest subnormal
  EXPECT_EQ(f32_to_fp16(1.0f + 1.0f / 2048), 0x3c00);  // tie rounds to even
  EXPECT_EQ(f32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);  // tie to even
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Quant, ExactDequantisationOfHandBuiltBlocks) {
  BlockQ4_0 q4{};
  q4.d = f32_to_fp16(0.5f);
  for (int j = 0; j < 16; ++j) q4.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[256];
  dequantize_row(TensorType::kQ4_0, &q4, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.5f);
    EXPECT_EQ(y[j + 16], (15 - j - 8) * 0.5f);
  }
  BlockQ8_0 q8{};
  q8.d = f32_to_fp16(0.25f);
  for (int j = 0; j < 32; ++j) q8.qs[j] = static_cast<int8_t>(j - 16);
  dequantize_row(TensorType::kQ8_0, &q8, y, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j - 16) * 0.25f);

  // Q5_1: high bit from qh, plus min.
  BlockQ5_1 q5{};
  q5.d = f32_to_fp16(1.0f);
  q5.m = f32_to_fp16(-3.0f);
  uint32_t qh = 0x80000001u;  // element 0 and element 31 get +16
  std::memcpy(q5.qh, &qh, 4);
  for (int j = 0; j < 16; ++j) q5.qs[j] = 0x21;
  dequantize_row(TensorType::kQ5_1, &q5, y, 32);
  EXPECT_EQ(y[0], 17 - 3.0f);
  EXPECT_EQ(y[1], 1 - 3.0f);
  EXPECT_EQ(y[16], 2 - 3.0f);
  EXPECT_EQ(y[31], 18 - 3.0f);

  // Q4_K: sub-block 5 scale/min come from the packed upper bits.
  BlockQ4_K k{};
  k.d = f32_to_fp16(1.0f);
  k.dmin = f32_to_fp16(1.0f);
  // sc[5] = 0x23 (low 4 bits in scales[9], top 2 in scales[1] bits 6-7); m[5] = 0x11
  k.scales[9] = static_cast<uint8_t>((0x23 & 0xF) | ((0x11 & 0xF) << 4));
  k.scales[1] = static_cast<uint8_t>((0x23 >> 4) << 6);
  k.scales[5] = static_cast<uint8_t>((0x11 >> 4) << 6);
  for (int l = 0; l < 32; ++l) k.qs[64 + l] = 0x30;  // chunk 2: sub-block 4 low nibble 0, sub-block 5 high nibble 3
  dequantize_row(TensorType::kQ4_K, &k, y, 256);
  EXPECT_EQ(y[160], 0x23 * 3.0f - 0x11);
  EXPECT_EQ(y[128], 0.0f);
}

TEST(Quant, QuantiseDequantiseErrorBounds) {
  for (TensorType t : kAllTypes) {
    const size_t bs = block_size(t);
    for (size_t blocks : {1u, 3u, 7u}) {
      size_t n = bs * blocks;
      auto x = random_values(n, 7 + static_cast<uint32_t>(blocks), 2.0f);
      x[0] = 0.0f;
      Bytes q(row_bytes(t, n));
      quantize_row(t, x.data(), q.data(), n);
      std::vector<float> y(n);
      dequantize_row(t, q.data(), y.data(), n);
      const size_t group = bs == 1 ? 1 : bs;
      for (size_t g = 0; g < n; g += group) {
        float amax = 0;
        for (size_t i = g; i < g + group; ++i) amax = std::max(amax, std::fabs(x[i]));
        for (size_t i = g; i < g + group; ++i) {
          float bound = tolerance(t) * (bs == 1 ? std::fabs(x[i]) : amax) + 1e-6f;
          ASSERT_LE(std::fabs(x[i] - y[i]), bound) << gguf::type_name(t) << " element " << i;
        }
      }
    }
  }
}

TEST(Quant, ConstantAndZeroBlocks) {
  for (TensorType t : kAllTypes) {
    size_t n = block_size(t) * 2;
    std::vector<float> zeros(n, 0.0f);
    Bytes q(row_bytes(t, n));
    quantize_row(t, zeros.data(), q.data(), n);
    auto y = dequantize(t, q.data(), n);
    for (float v : y) ASSERT_EQ(v, 0.0f) << gguf::type_name(t);
  }
  EXPECT_FALSE(quantize(TensorType::kQ4_K, std::vector<float>(100), 100).ok());
}

namespace {

void check_matmul(const KernelSet& k, TensorType t, size_t rows, size_t cols, size_t batch, ThreadPool* pool,
                  float rel) {
  auto w = random_values(rows * cols, 11, 0.5f);
  auto x = random_values(cols * batch, 13, 1.0f);
  auto q = quantize(t, w, cols);
  ASSERT_TRUE(q.ok());
  auto wd = dequantize(t, q->data(), rows * cols);
  Matrix m{t, q->data(), rows, cols, row_bytes(t, cols)};
  std::vector<float> y(rows * batch, -1.0f);
  MatmulScratch scratch;
  matmul(k, m, x.data(), batch, y.data(), pool, scratch);
  for (size_t b = 0; b < batch; ++b) {
    for (size_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (size_t c = 0; c < cols; ++c) {
        ref += static_cast<double>(wd[r * cols + c]) * x[b * cols + c];
        mag += std::fabs(static_cast<double>(wd[r * cols + c]) * x[b * cols + c]);
      }
      ASSERT_NEAR(y[b * rows + r], ref, rel * mag + 1e-5)
          << k.name << " " << gguf::type_name(t) << " row " << r << " batch " << b;
    }
  }
}

}  // namespace

TEST(Kernels, ScalarMatmulMatchesReferenceForEveryType) {
  ThreadPool pool(3);
  for (TensorType t : kAllTypes) {
    size_t bs = block_size(t);
    // ragged: rows not a multiple of the thread split, columns an odd number of blocks
    size_t cols = bs == 1 ? 37 : bs * 3;
    check_matmul(scalar_kernels(), t, 29, cols, 3, &pool, 1e-5f);
    check_matmul(scalar_kernels(), t, 5, cols, 1, nullptr, 1e-5f);
  }
}

TEST(Kernels, Avx2MatchesReference) {
  auto k = kernels_by_name("avx2");
  if (!k.ok()) GTEST_SKIP() << k.error().message();
  ThreadPool pool(2);
  for (TensorType t : kAllTypes) {
    size_t bs = block_size(t);
    size_t cols = bs == 1 ? 67 : bs * 5;
    // Q8_0/Q4_0 quantise the activation to 8 bits: allow 1% of the magnitude sum.
    float rel = (t == TensorType::kQ8_0 || t == TensorType::kQ4_0) ? 1e-2f : 1e-5f;
    check_matmul(**k, t, 33, cols, 2, &pool, rel);
  }
}

TEST(Kernels, SelectionByName) {
  EXPECT_STREQ((*kernels_by_name("scalar"))->name, "scalar");
  EXPECT_EQ(kernels_by_name("bogus").error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(active_kernels().name, nullptr);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(4);
  for (size_t n : {0u, 1u, 5u, 100u, 1001u}) {
    std::vector<int> hits(n, 0);
    pool.run(n, 3, [](void* c, size_t b, size_t e) {
      auto* h = static_cast<std::vector<int>*>(c);
      for (size_t i = b; i < e; ++i) (*h)[i]++;
    }, &hits);
    for (int h : hits) ASSERT_EQ(h, 1);
  }
}
