// Every fast kernel against the scalar reference (random shapes, ragged rows, batches 1..17), the scalar
// reference against exact dequantisation, hand-built blocks against the GGUF layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace veil::kernels {
namespace {

using detail::fp16_to_f32;
using detail::f32_to_fp16;

std::vector<float> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(g);
  return v;
}

std::vector<size_t> lengths_for(Type t) {
  switch (block_elems(t)) {
    case 1: return {1, 7, 8, 31, 33, 100, 515};
    case 32: return {32, 64, 96, 288, 1056};
    default: return {256, 512, 1280};
  }
}

// Dequantised prepared activation (what the integer kernels multiply with).
std::vector<float> act_values(Type t, const std::vector<uint8_t>& act, size_t n) {
  std::vector<float> v(n);
  if (block_elems(t) == 1) {
    std::memcpy(v.data(), act.data(), n * 4);
  } else if (block_elems(t) == 32) {
    for (size_t i = 0; i < n / 32; ++i) {
      detail::ActQ8 a;
      std::memcpy(&a, act.data() + i * sizeof a, sizeof a);
      for (int j = 0; j < 32; ++j) v[32 * i + j] = a.d * a.qs[j];
    }
  } else {
    for (size_t i = 0; i < n / 256; ++i) {
      detail::ActQ8K a;
      std::memcpy(&a, act.data() + i * sizeof a, sizeof a);
      for (int j = 0; j < 256; ++j) v[256 * i + j] = a.d * a.qs[j];
    }
  }
  return v;
}

struct Case {
  Type type;
  size_t rows, n;
  std::vector<uint8_t> w;
  size_t stride;
};

Case make_case(Type t, size_t rows, size_t n, uint64_t seed, size_t pad = 0) {
  Case c{t, rows, n, {}, row_bytes(t, n) + pad};
  // Pad rows (stride > row bytes) so kernels must honour row_stride; fill each row separately.
  c.w.assign(rows * c.stride + 64, 0);
  std::vector<uint8_t> row(row_bytes(t, n));
  for (size_t r = 0; r < rows; ++r) {
    fill_random_matrix(t, 1, n, seed * 1000 + r, row.data());
    std::memcpy(c.w.data() + r * c.stride, row.data(), row.size());
  }
  return c;
}

std::vector<Isa> fast_isas() { return {Isa::kAvx2, Isa::kAvx512}; }

class KernelsByType : public ::testing::TestWithParam<Type> {};

TEST_P(KernelsByType, ScalarMatchesExactDequantisation) {
  const Type t = GetParam();
  const TypeKernels& k = kernel_table(Isa::kScalar).of(t);
  ASSERT_NE(k.matvec, nullptr);
  for (size_t n : lengths_for(t)) {
    Case c = make_case(t, 5, n, n);
    auto x = random_vec(n, 7 + n);
    std::vector<uint8_t> act(k.act_bytes(n));
    k.prepare(x.data(), n, act.data());
    auto xv = act_values(t, act, n);
    std::vector<float> y(c.rows);
    k.matvec(c.w.data(), c.stride, n, act.data(), y.data(), 0, c.rows);
    std::vector<float> wrow(n);
    for (size_t r = 0; r < c.rows; ++r) {
      dequantize_row(t, c.w.data() + r * c.stride, wrow.data(), n);
      double ref = 0, mag = 0;
      for (size_t i = 0; i < n; ++i) {
        ref += static_cast<double>(wrow[i]) * xv[i];
        mag += std::fabs(static_cast<double>(wrow[i]) * xv[i]);
      }
      EXPECT_NEAR(y[r], ref, 1e-4 * mag + 1e-6) << type_name(t) << " n=" << n << " r=" << r;
    }
  }
}

TEST_P(KernelsByType, FastMatvecMatchesScalar) {
  const Type t = GetParam();
  const TypeKernels& ref = kernel_table(Isa::kScalar).of(t);
  for (Isa isa : fast_isas()) {
    if (!isa_supported(isa)) continue;
    const TypeKernels& k = kernel_table(isa).of(t);
    uint64_t seed = 1;
    for (size_t n : lengths_for(t)) {
      for (size_t rows : {1u, 2u, 3u, 4u, 5u, 7u, 9u, 13u, 33u}) {
        ++seed;
        Case c = make_case(t, rows, n, seed, (seed % 3) * 5);
        auto x = random_vec(n, seed);
        std::vector<uint8_t> act(k.act_bytes(n));
        k.prepare(x.data(), n, act.data());
        std::vector<uint8_t> act_ref(ref.act_bytes(n));
        ref.prepare(x.data(), n, act_ref.data());
        ASSERT_EQ(act, act_ref) << "prepared activations must be identical across ISAs";
        // magnitude bound per row from |w| * |x|
        std::vector<float> wrow(n);
        auto xv = act_values(t, act, n);
        for (size_t r0 : {size_t{0}, size_t{1}}) {
          if (r0 >= rows) continue;
          std::vector<float> y(rows - r0, -1), yr(rows - r0, -2);
          k.matvec(c.w.data(), c.stride, n, act.data(), y.data(), r0, rows);
          ref.matvec(c.w.data(), c.stride, n, act.data(), yr.data(), r0, rows);
          for (size_t r = r0; r < rows; ++r) {
            dequantize_row(t, c.w.data() + r * c.stride, wrow.data(), n);
            double mag = 0;
            for (size_t i = 0; i < n; ++i) mag += std::fabs(static_cast<double>(wrow[i]) * xv[i]);
            ASSERT_NEAR(y[r - r0], yr[r - r0], 2e-5 * mag + 1e-6)
                << isa_name(isa) << " " << type_name(t) << " n=" << n << " rows=" << rows << " r=" << r;
          }
        }
      }
    }
  }
}

TEST_P(KernelsByType, FastMatmulMatchesScalarForBatches1To17) {
  const Type t = GetParam();
  const TypeKernels& ref = kernel_table(Isa::kScalar).of(t);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_supported(isa)) continue;
    const TypeKernels& k = kernel_table(isa).of(t);
    const size_t n = lengths_for(t)[1];
    const size_t rows = 11;
    Case c = make_case(t, rows, n, 99, 3);
    const size_t ab = k.act_bytes(n);
    for (size_t batch = 1; batch <= 17; ++batch) {
      std::vector<uint8_t> acts(batch * ab);
      for (size_t b = 0; b < batch; ++b) {
        auto x = random_vec(n, 1000 + batch * 31 + b);
        k.prepare(x.data(), n, acts.data() + b * ab);
      }
      const size_t r0 = batch % 3, ys = rows + 2;
      std::vector<float> y(batch * ys, 0);
      k.matmul(c.w.data(), c.stride, n, acts.data(), ab, batch, y.data(), ys, r0, rows);
      for (size_t b = 0; b < batch; ++b) {
        std::vector<float> yr(rows - r0);
        ref.matvec(c.w.data(), c.stride, n, acts.data() + b * ab, yr.data(), r0, rows);
        for (size_t r = r0; r < rows; ++r) {
          float want = yr[r - r0];
          ASSERT_NEAR(y[b * ys + (r - r0)], want, 1e-4f * (1.0f + std::fabs(want)) * std::sqrt(float(n)) * 0.1f)
              << isa_name(isa) << " " << type_name(t) << " batch=" << batch << " r=" << r << " col=" << b;
        }
        // the two padding slots past the range stay untouched
        EXPECT_EQ(y[b * ys + (rows - r0)], 0.0f);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, KernelsByType, ::testing::ValuesIn(kAllTypes),
                         [](const ::testing::TestParamInfo<Type>& i) { return std::string(type_name(i.param)); });

TEST(Kernels, ActivationsMatchScalar) {
  // Ragged lengths, and values from deep negative to large positive (exp under- and overflow ranges).
  std::vector<float> x;
  for (int i = -2000; i <= 2000; ++i) x.push_back(static_cast<float>(i) * 0.05f);
  for (float v : {-120.0f, -89.0f, -87.5f, 88.0f, 89.0f, 120.0f, 0.0f, -0.0f, 1e-30f, -1e-30f}) x.push_back(v);
  auto up = random_vec(x.size(), 3);
  const KernelTable& ref = kernel_table(Isa::kScalar);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_supported(isa)) continue;
    const KernelTable& k = kernel_table(isa);
    for (size_t n : {x.size(), size_t{7}, size_t{9}}) {
      std::vector<float> g(x.begin(), x.begin() + n), gr = g;
      k.silu_mul(g.data(), up.data(), n);
      ref.silu_mul(gr.data(), up.data(), n);
      std::vector<float> e(x.begin(), x.begin() + n), er = e;
      k.gelu(e.data(), n);
      ref.gelu(er.data(), n);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(std::isfinite(g[i]) && std::isfinite(e[i])) << isa_name(isa) << " x=" << x[i];
        ASSERT_NEAR(g[i], gr[i], 1e-6f * (1.0f + std::fabs(gr[i]))) << isa_name(isa) << " silu x=" << x[i];
        ASSERT_NEAR(e[i], er[i], 1e-6f * (1.0f + std::fabs(er[i]))) << isa_name(isa) << " gelu x=" << x[i];
      }
    }
  }
}

TEST(Kernels, Avx512PathsRunOnlyWhereSupported) {
  if (!isa_supported(Isa::kAvx512)) GTEST_SKIP() << "CPU lacks AVX-512 F/BW/VL/VNNI: the avx512 table is not exercised";
  EXPECT_STREQ(kernel_table(Isa::kAvx512).name, "avx512");
}

TEST(Kernels, IsaParsingAndTables) {
  EXPECT_EQ(*parse_isa("scalar"), Isa::kScalar);
  EXPECT_EQ(*parse_isa("avx2"), Isa::kAvx2);
  EXPECT_EQ(*parse_isa("avx512"), Isa::kAvx512);
  EXPECT_FALSE(parse_isa("neon").ok());
  EXPECT_TRUE(isa_supported(active_isa()));
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    for (Type t : kAllTypes) {
      const TypeKernels& k = kernel_table(isa).of(t);
      EXPECT_TRUE(k.act_bytes && k.prepare && k.matvec && k.matmul) << isa_name(isa) << " " << type_name(t);
      EXPECT_EQ(k.matvec_x4 != nullptr, has_x4_layout(t)) << isa_name(isa) << " " << type_name(t);
      EXPECT_EQ(k.matmul_x4 != nullptr, has_x4_layout(t)) << isa_name(isa) << " " << type_name(t);
      if (isa != Isa::kScalar) {  // every type has its own SIMD kernel, not the scalar fallback
        EXPECT_NE(k.matvec, kernel_table(Isa::kScalar).of(t).matvec) << isa_name(isa) << " " << type_name(t);
        EXPECT_NE(k.matmul, kernel_table(Isa::kScalar).of(t).matmul) << isa_name(isa) << " " << type_name(t);
      }
    }
}

// ---- layouts, checked on hand-built blocks ----

TEST(Layouts, Fp16RoundTripAndF16cAgree) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = fp16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_fp16(f), h) << h;
  }
  EXPECT_EQ(fp16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(f32_to_fp16(70000.0f), 0x7c00);
}

TEST(Layouts, Q4_0AndQ8_0) {
  uint8_t b[18];
  uint16_t d = f32_to_fp16(0.5f);
  std::memcpy(b, &d, 2);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  dequantize_row(Type::kQ4_0, b, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.5f * (j - 8));
    EXPECT_EQ(out[j + 16], 0.5f * (7 - j));
  }
  uint8_t q8[34];
  std::memcpy(q8, &d, 2);
  for (int j = 0; j < 32; ++j) q8[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  dequantize_row(Type::kQ8_0, q8, out, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.5f * (j - 16));
}

TEST(Layouts, Q4_1Q5_0Q5_1) {
  uint8_t b[24] = {};
  uint16_t d = f32_to_fp16(0.25f), m = f32_to_fp16(-1.0f);
  // Q5_1: d, m, qh (bit j -> element j), qs
  std::memcpy(b, &d, 2);
  std::memcpy(b + 2, &m, 2);
  uint32_t qh = 0x80000001u;  // element 0 and element 31 get the fifth bit
  std::memcpy(b + 4, &qh, 4);
  for (int j = 0; j < 16; ++j) b[8 + j] = static_cast<uint8_t>(3 | (5 << 4));
  float out[32];
  dequantize_row(Type::kQ5_1, b, out, 32);
  EXPECT_EQ(out[0], 0.25f * 19 - 1.0f);
  EXPECT_EQ(out[1], 0.25f * 3 - 1.0f);
  EXPECT_EQ(out[16], 0.25f * 5 - 1.0f);
  EXPECT_EQ(out[31], 0.25f * 21 - 1.0f);
  // Q5_0: d, qh, qs; value (q - 16) * d
  uint8_t c[22] = {};
  std::memcpy(c, &d, 2);
  std::memcpy(c + 2, &qh, 4);
  for (int j = 0; j < 16; ++j) c[6 + j] = static_cast<uint8_t>(3 | (5 << 4));
  dequantize_row(Type::kQ5_0, c, out, 32);
  EXPECT_EQ(out[0], 0.25f * (19 - 16));
  EXPECT_EQ(out[1], 0.25f * (3 - 16));
  EXPECT_EQ(out[31], 0.25f * (21 - 16));
  // Q4_1: d, m, qs; q * d + m
  uint8_t e[20] = {};
  std::memcpy(e, &d, 2);
  std::memcpy(e + 2, &m, 2);
  for (int j = 0; j < 16; ++j) e[4 + j] = static_cast<uint8_t>(j | (j << 4));
  dequantize_row(Type::kQ4_1, e, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.25f * j - 1.0f);
    EXPECT_EQ(out[j + 16], 0.25f * j - 1.0f);
  }
}

TEST(Layouts, Q4_KScalesAndMins) {
  uint8_t b[144] = {};
  uint16_t d = f32_to_fp16(1.0f), dmin = f32_to_fp16(0.5f);
  std::memcpy(b, &d, 2);
  std::memcpy(b + 2, &dmin, 2);
  uint8_t* sc = b + 4;
  // sub-block 0: scale 2, min 4 (low 6 bits of bytes 0 and 4); sub-block 5: scale 0x25 = 37, min 0x13 = 19:
  // low nibbles in byte 9 (scale) / high nibble of byte 9 (min), top 2 bits in bytes 1 (scale) and 5 (min).
  sc[0] = 2;
  sc[4] = 4;
  sc[9] = static_cast<uint8_t>(0x5 | (0x3 << 4));
  sc[1] = static_cast<uint8_t>(0x2 << 6);
  sc[5] = static_cast<uint8_t>(0x1 << 6);
  uint8_t* qs = b + 16;
  qs[0] = 0x73;        // element 0 = 3 (sub-block 0), element 32 = 7 (sub-block 1: scale 0, min 0)
  qs[64 + 5] = 0x90;   // chunk 2: element 128+5 = 0 (sub-block 4), element 160+5 = 9 (sub-block 5)
  float out[256];
  dequantize_row(Type::kQ4_K, b, out, 256);
  EXPECT_EQ(out[0], 1.0f * 2 * 3 - 0.5f * 4);
  EXPECT_EQ(out[1], -0.5f * 4);
  EXPECT_EQ(out[32], 0.0f);
  EXPECT_EQ(out[165], 1.0f * 37 * 9 - 0.5f * 19);
}

TEST(Layouts, Q6_K) {
  uint8_t b[210] = {};
  uint16_t d = f32_to_fp16(0.5f);
  std::memcpy(b + 208, &d, 2);
  auto* scales = reinterpret_cast<int8_t*>(b + 192);
  for (int g = 0; g < 16; ++g) scales[g] = static_cast<int8_t>(g - 8);
  // second half (elements 128..255): element 128+64+3 takes the high nibble of ql[64+3] and bits 4-5 of qh[32+3]
  b[64 + 3] = 0xA0;
  b[128 + 32 + 3] = 0x30;
  float out[256];
  dequantize_row(Type::kQ6_K, b, out, 256);
  const int e = 128 + 64 + 3;
  EXPECT_EQ(out[e], 0.5f * scales[e / 16] * ((0xA | (3 << 4)) - 32));
  EXPECT_EQ(out[0], 0.5f * scales[0] * -32);
}

TEST(Prepare, Q8BlocksAndSums) {
  auto x = random_vec(512, 3);
  x[5] = 0;
  std::vector<uint8_t> a(kernel_table(Isa::kScalar).of(Type::kQ4_0).act_bytes(512));
  kernel_table(Isa::kScalar).of(Type::kQ4_0).prepare(x.data(), 512, a.data());
  for (size_t i = 0; i < 16; ++i) {
    detail::ActQ8 b;
    std::memcpy(&b, a.data() + i * sizeof b, sizeof b);
    int sum = 0, amax = 0;
    for (int j = 0; j < 32; ++j) {
      sum += b.qs[j];
      amax = std::max(amax, std::abs(int{b.qs[j]}));
      EXPECT_NEAR(b.d * b.qs[j], x[32 * i + j], b.d * 0.5f + 1e-7f);
    }
    EXPECT_EQ(amax, 127);
    EXPECT_FLOAT_EQ(b.s, b.d * sum);
  }
  std::vector<uint8_t> k(kernel_table(Isa::kScalar).of(Type::kQ6_K).act_bytes(512));
  kernel_table(Isa::kScalar).of(Type::kQ6_K).prepare(x.data(), 512, k.data());
  detail::ActQ8K kb;
  std::memcpy(&kb, k.data() + sizeof kb, sizeof kb);
  for (int g = 0; g < 16; ++g) {
    int s = 0;
    for (int j = 0; j < 16; ++j) s += kb.qs[16 * g + j];
    EXPECT_EQ(kb.bsums[g], s);
  }
  // zero input: zero scale, zero quants, no NaN
  std::vector<float> z(32, 0.0f);
  kernel_table(Isa::kScalar).of(Type::kQ8_0).prepare(z.data(), 32, a.data());
  detail::ActQ8 zb;
  std::memcpy(&zb, a.data(), sizeof zb);
  EXPECT_EQ(zb.d, 0.0f);
  EXPECT_EQ(zb.s, 0.0f);
}

// ---- repacked layouts ----

TEST(Repack, X4MatchesPlainKernelsOnEveryIsa) {
  for (Type t : {Type::kQ4_0, Type::kQ8_0}) {
    for (size_t rows : {1u, 3u, 4u, 6u, 17u, 64u}) {
      const size_t n = 320;
      Case c = make_case(t, rows, n, rows + 5);
      std::vector<uint8_t> packed(repacked_bytes(t, rows, n));
      ASSERT_TRUE(repack_x4(t, c.w.data(), c.stride, rows, n, packed.data()).ok());
      const TypeKernels& ref = kernel_table(Isa::kScalar).of(t);
      auto x = random_vec(n, rows);
      std::vector<uint8_t> act(ref.act_bytes(n));
      ref.prepare(x.data(), n, act.data());
      std::vector<float> want(rows);
      ref.matvec(c.w.data(), c.stride, n, act.data(), want.data(), 0, rows);
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (!isa_supported(isa)) continue;
        for (size_t r0 : {size_t{0}, size_t{4}}) {
          if (r0 >= rows) continue;
          std::vector<float> y(rows - r0 + 4, 1234.0f);
          matvec_repacked_x4(isa, t, packed.data(), rows, n, act.data(), y.data(), r0, rows);
          for (size_t r = r0; r < rows; ++r)
            ASSERT_NEAR(y[r - r0], want[r], 1e-3f * (1 + std::fabs(want[r])))
                << isa_name(isa) << " " << type_name(t) << " rows=" << rows << " r=" << r;
          EXPECT_EQ(y[rows - r0], 1234.0f) << "wrote past r1";
        }
      }
    }
  }
  EXPECT_FALSE(repack_x4(Type::kQ6_K, nullptr, 0, 1, 256, nullptr).ok());
}

TEST(Repack, X4MatmulMatchesPlainForBatches1To9AndRaggedRows) {
  for (Type t : {Type::kQ4_0, Type::kQ8_0}) {
    for (size_t rows : {1u, 5u, 11u, 32u}) {
      for (size_t n : {32u, 96u, 2048u}) {
        Case c = make_case(t, rows, n, rows * 7 + n, 2);
        std::vector<uint8_t> packed(repacked_bytes(t, rows, n));
        ASSERT_TRUE(repack_x4(t, c.w.data(), c.stride, rows, n, packed.data()).ok());
        const TypeKernels& ref = kernel_table(Isa::kScalar).of(t);
        const size_t ab = ref.act_bytes(n);
        for (size_t batch : {1u, 2u, 3u, 4u, 5u, 9u}) {
          std::vector<uint8_t> acts(batch * ab);
          for (size_t b = 0; b < batch; ++b) {
            auto x = random_vec(n, 77 + batch * 13 + b);
            ref.prepare(x.data(), n, acts.data() + b * ab);
          }
          for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
            if (!isa_supported(isa)) continue;
            const TypeKernels& k = kernel_table(isa).of(t);
            for (size_t r0 : {size_t{0}, size_t{4}}) {
              if (r0 >= rows) continue;
              const size_t ys = rows + 3;
              std::vector<float> y(batch * ys, 1234.0f);
              k.matmul_x4(packed.data(), rows, n, acts.data(), ab, batch, y.data(), ys, r0, rows);
              for (size_t b = 0; b < batch; ++b) {
                std::vector<float> want(rows - r0);
                ref.matvec(c.w.data(), c.stride, n, acts.data() + b * ab, want.data(), r0, rows);
                for (size_t r = r0; r < rows; ++r) {
                  const float w = want[r - r0];
                  ASSERT_NEAR(y[b * ys + (r - r0)], w, 1e-4f * (1 + std::fabs(w)) * std::sqrt(float(n)))
                      << isa_name(isa) << " " << type_name(t) << " rows=" << rows << " n=" << n << " batch=" << batch
                      << " r=" << r << " col=" << b;
                }
                EXPECT_EQ(y[b * ys + (rows - r0)], 1234.0f) << "wrote past r1";
              }
            }
          }
        }
      }
    }
  }
}

TEST(Repack, ExtractRowGivesThePlainRowBack) {
  for (Type t : {Type::kQ4_0, Type::kQ8_0}) {
    const size_t rows = 7, n = 96;
    Case c = make_case(t, rows, n, 5, 1);
    std::vector<uint8_t> packed(repacked_bytes(t, rows, n));
    ASSERT_TRUE(repack_x4(t, c.w.data(), c.stride, rows, n, packed.data()).ok());
    EXPECT_EQ(repacked_bytes(t, 8, n), 8 * row_bytes(t, n)) << "same size as the plain layout for whole groups";
    std::vector<uint8_t> row(row_bytes(t, n));
    for (size_t r = 0; r < rows; ++r) {
      extract_row_x4(t, packed.data(), n, r, row.data());
      EXPECT_EQ(0, std::memcmp(row.data(), c.w.data() + r * c.stride, row.size())) << type_name(t) << " r=" << r;
    }
  }
}

}  // namespace
}  // namespace veil::kernels
