// Block layouts, exact dequantisation and quantisation of every tensor type (layouts as GGUF/GGML define them).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "tensor/blocks.h"
#include "tensor/tensor.h"

namespace veil::tensor {

// ---------------- fp16 / bf16 ----------------

namespace {
struct Fp16Table {
  std::array<float, 65536> v;
  Fp16Table() {
    for (uint32_t h = 0; h < 65536; ++h) {
      uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
      float f;
      if (exp == 0) {
        f = std::ldexp(static_cast<float>(mant), -24);
      } else if (exp == 31) {
        uint32_t bits = 0x7f800000u | (mant << 13);
        std::memcpy(&f, &bits, 4);
      } else {
        uint32_t bits = ((exp + 112) << 23) | (mant << 13);
        std::memcpy(&f, &bits, 4);
      }
      v[h] = sign ? -f : f;
    }
  }
};
const Fp16Table& fp16_table() {
  static const Fp16Table t;
  return t;
}
}  // namespace

float fp16_to_f32(uint16_t h) { return fp16_table().v[h]; }

uint16_t f32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffff;
  if (ax >= 0x7f800000) return static_cast<uint16_t>(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
  if (ax >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds to infinity
  if (ax < 0x38800000) {  // below the smallest normal half: subnormal or zero
    float v;
    std::memcpy(&v, &ax, 4);
    auto m = static_cast<uint32_t>(std::nearbyint(v * 16777216.0f));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffff) >> 13);
  uint32_t rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

// ---------------- type table ----------------

bool is_supported(TensorType type) {
  for (TensorType t : kAllTypes) {
    if (t == type) return true;
  }
  return false;
}

uint32_t block_size(TensorType type) {
  const auto* t = gguf::type_traits(type);
  return t ? t->block_size : 1;
}

size_t row_bytes(TensorType type, size_t n) {
  const auto* t = gguf::type_traits(type);
  return t ? n / t->block_size * t->type_size : 0;
}

// ---------------- dequantisation ----------------

namespace {

inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void deq_q4_0(const BlockQ4_0& b, float* y) {
  float d = fp16_to_f32(b.d);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((b.qs[j] & 0xF) - 8) * d;
    y[j + 16] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
  }
}
void deq_q4_1(const BlockQ4_1& b, float* y) {
  float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(b.qs[j] & 0xF) * d + m;
    y[j + 16] = static_cast<float>(b.qs[j] >> 4) * d + m;
  }
}
void deq_q5_0(const BlockQ5_0& b, float* y) {
  float d = fp16_to_f32(b.d);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; ++j) {
    int h0 = ((qh >> j) & 1) << 4;
    int h1 = ((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>(((b.qs[j] & 0xF) | h0) - 16) * d;
    y[j + 16] = static_cast<float>(((b.qs[j] >> 4) | h1) - 16) * d;
  }
}
void deq_q5_1(const BlockQ5_1& b, float* y) {
  float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; ++j) {
    int h0 = ((qh >> j) & 1) << 4;
    int h1 = ((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>((b.qs[j] & 0xF) | h0) * d + m;
    y[j + 16] = static_cast<float>((b.qs[j] >> 4) | h1) * d + m;
  }
}
void deq_q8_0(const BlockQ8_0& b, float* y) {
  float d = fp16_to_f32(b.d);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
}
void deq_q4_k(const BlockQ4_K& b, float* y) {
  float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  const uint8_t* q = b.qs;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
    uint8_t sc, m;
    scale_min_k4(is, b.scales, &sc, &m);
    float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, b.scales, &sc, &m);
    float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
  }
}
void deq_q5_k(const BlockQ5_K& b, float* y) {
  float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  const uint8_t* ql = b.qs;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
    uint8_t sc, m;
    scale_min_k4(is, b.scales, &sc, &m);
    float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, b.scales, &sc, &m);
    float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (b.qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (b.qh[l] & u2 ? 16 : 0)) - m2;
    ql += 32;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}
void deq_q6_k(const BlockQ6_K& b, float* y) {
  float d = fp16_to_f32(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

template <typename Block, void (*F)(const Block&, float*), int QK>
void deq_blocks(const void* src, float* dst, size_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n / QK; ++i) {
    Block blk;
    std::memcpy(&blk, b + i * sizeof(Block), sizeof(Block));
    F(blk, dst + i * QK);
  }
}

}  // namespace

void dequantize_row(TensorType type, const void* src, float* dst, size_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case TensorType::kF32: std::memcpy(dst, src, n * 4); return;
    case TensorType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = fp16_to_f32(h);
      }
      return;
    case TensorType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case TensorType::kQ4_0: deq_blocks<BlockQ4_0, deq_q4_0, 32>(src, dst, n); return;
    case TensorType::kQ4_1: deq_blocks<BlockQ4_1, deq_q4_1, 32>(src, dst, n); return;
    case TensorType::kQ5_0: deq_blocks<BlockQ5_0, deq_q5_0, 32>(src, dst, n); return;
    case TensorType::kQ5_1: deq_blocks<BlockQ5_1, deq_q5_1, 32>(src, dst, n); return;
    case TensorType::kQ8_0: deq_blocks<BlockQ8_0, deq_q8_0, 32>(src, dst, n); return;
    case TensorType::kQ4_K: deq_blocks<BlockQ4_K, deq_q4_k, 256>(src, dst, n); return;
    case TensorType::kQ5_K: deq_blocks<BlockQ5_K, deq_q5_k, 256>(src, dst, n); return;
    case TensorType::kQ6_K: deq_blocks<BlockQ6_K, deq_q6_k, 256>(src, dst, n); return;
  }
  std::fill(dst, dst + n, 0.0f);  // unreachable for supported types; callers check is_supported first
}

std::vector<float> dequantize(TensorType type, const void* src, size_t n) {
  std::vector<float> out(n);
  dequantize_row(type, src, out.data(), n);
  return out;
}

// ---------------- quantisation ----------------

namespace {

inline int nearest(float x) { return static_cast<int>(std::lrintf(x)); }

// Largest-magnitude value of x[0..n), with its sign.
float signed_absmax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void q4_0(const float* x, BlockQ4_0& b) {
  float max = signed_absmax(x, 32);
  float d = max / -8.0f;
  float id = d != 0 ? 1.0f / d : 0.0f;
  b.d = f32_to_fp16(d);
  for (int j = 0; j < 16; ++j) {
    int a = std::clamp(nearest(x[j] * id) + 8, 0, 15);
    int c = std::clamp(nearest(x[j + 16] * id) + 8, 0, 15);
    b.qs[j] = static_cast<uint8_t>(a | (c << 4));
  }
}
void q4_1(const float* x, BlockQ4_1& b) {
  float mn = *std::min_element(x, x + 32), mx = *std::max_element(x, x + 32);
  float d = (mx - mn) / 15.0f;
  float id = d != 0 ? 1.0f / d : 0.0f;
  b.d = f32_to_fp16(d);
  b.m = f32_to_fp16(mn);
  float m = fp16_to_f32(b.m);
  for (int j = 0; j < 16; ++j) {
    int a = std::clamp(nearest((x[j] - m) * id), 0, 15);
    int c = std::clamp(nearest((x[j + 16] - m) * id), 0, 15);
    b.qs[j] = static_cast<uint8_t>(a | (c << 4));
  }
}
void q5_0(const float* x, BlockQ5_0& b) {
  float max = signed_absmax(x, 32);
  float d = max / -16.0f;
  float id = d != 0 ? 1.0f / d : 0.0f;
  b.d = f32_to_fp16(d);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    int a = std::clamp(nearest(x[j] * id) + 16, 0, 31);
    int c = std::clamp(nearest(x[j + 16] * id) + 16, 0, 31);
    b.qs[j] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
    qh |= static_cast<uint32_t>((a >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((c >> 4) & 1) << (j + 16);
  }
  std::memcpy(b.qh, &qh, 4);
}
void q5_1(const float* x, BlockQ5_1& b) {
  float mn = *std::min_element(x, x + 32), mx = *std::max_element(x, x + 32);
  float d = (mx - mn) / 31.0f;
  float id = d != 0 ? 1.0f / d : 0.0f;
  b.d = f32_to_fp16(d);
  b.m = f32_to_fp16(mn);
  float m = fp16_to_f32(b.m);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    int a = std::clamp(nearest((x[j] - m) * id), 0, 31);
    int c = std::clamp(nearest((x[j + 16] - m) * id), 0, 31);
    b.qs[j] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
    qh |= static_cast<uint32_t>((a >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((c >> 4) & 1) << (j + 16);
  }
  std::memcpy(b.qh, &qh, 4);
}
void q8_0(const float* x, BlockQ8_0& b) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  float d = amax / 127.0f;
  float id = d != 0 ? 1.0f / d : 0.0f;
  b.d = f32_to_fp16(d);
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(std::clamp(nearest(x[j] * id), -127, 127));
}

// K-quants with 6-bit sub-block scales and mins (x ~= d*sc*q - dmin*m), `levels` = 15 (Q4_K) or 31 (Q5_K).
// Fills L[256] with the levels and the packed scales.
void kquant_scale_min(const float* x, int levels, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales, uint8_t* L) {
  float sub_scale[8], sub_min[8];
  for (int s = 0; s < 8; ++s) {
    const float* v = x + 32 * s;
    float mn = std::min(0.0f, *std::min_element(v, v + 32));
    float mx = *std::max_element(v, v + 32);
    sub_scale[s] = (mx - mn) / static_cast<float>(levels);
    sub_min[s] = -mn;
  }
  float max_scale = *std::max_element(sub_scale, sub_scale + 8);
  float max_min = *std::max_element(sub_min, sub_min + 8);
  float d = max_scale / 63.0f, dmin = max_min / 63.0f;
  *d_out = f32_to_fp16(d);
  *dmin_out = f32_to_fp16(dmin);
  float dq = fp16_to_f32(*d_out), dminq = fp16_to_f32(*dmin_out);
  uint8_t sc[8], mi[8];
  for (int s = 0; s < 8; ++s) {
    sc[s] = static_cast<uint8_t>(dq > 0 ? std::clamp(nearest(sub_scale[s] / dq), 0, 63) : 0);
    mi[s] = static_cast<uint8_t>(dminq > 0 ? std::clamp(nearest(sub_min[s] / dminq), 0, 63) : 0);
    float ds = dq * sc[s], ms = dminq * mi[s];
    for (int l = 0; l < 32; ++l) {
      int q = ds > 0 ? nearest((x[32 * s + l] + ms) / ds) : 0;
      L[32 * s + l] = static_cast<uint8_t>(std::clamp(q, 0, levels));
    }
  }
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(mi[j] | ((mi[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mi[j + 4] & 0xF) << 4));
  }
}

void q4_k(const float* x, BlockQ4_K& b) {
  uint8_t L[256];
  kquant_scale_min(x, 15, &b.d, &b.dmin, b.scales, L);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}
void q5_k(const float* x, BlockQ5_K& b) {
  uint8_t L[256];
  kquant_scale_min(x, 31, &b.d, &b.dmin, b.scales, L);
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      int a = L[64 * c + l], h = L[64 * c + 32 + l];
      b.qs[32 * c + l] = static_cast<uint8_t>((a & 0xF) | ((h & 0xF) << 4));
      b.qh[l] = static_cast<uint8_t>(b.qh[l] | (((a >> 4) & 1) << (2 * c)) | (((h >> 4) & 1) << (2 * c + 1)));
    }
  }
}
void q6_k(const float* x, BlockQ6_K& b) {
  float sub_scale[16];
  for (int s = 0; s < 16; ++s) {
    float amax = 0;
    for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(x[16 * s + l]));
    sub_scale[s] = amax / 31.0f;
  }
  float max_scale = *std::max_element(sub_scale, sub_scale + 16);
  float d = max_scale / 127.0f;
  b.d = f32_to_fp16(d);
  float dq = fp16_to_f32(b.d);
  uint8_t L[256];
  for (int s = 0; s < 16; ++s) {
    int sc = dq > 0 ? std::clamp(nearest(sub_scale[s] / dq), 0, 127) : 0;
    b.scales[s] = static_cast<int8_t>(sc);
    float ds = dq * static_cast<float>(sc);
    for (int l = 0; l < 16; ++l) {
      int q = ds > 0 ? nearest(x[16 * s + l] / ds) : 0;
      L[16 * s + l] = static_cast<uint8_t>(std::clamp(q, -32, 31) + 32);
    }
  }
  for (int n = 0; n < 256; n += 128) {
    uint8_t* ql = b.ql + n / 2;
    uint8_t* qh = b.qh + n / 4;
    for (int l = 0; l < 32; ++l) {
      const uint8_t* v = L + n;
      ql[l] = static_cast<uint8_t>((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6));
    }
  }
}

template <typename Block, void (*F)(const float*, Block&), int QK>
void q_blocks(const float* src, void* dst, size_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < n / QK; ++i) {
    Block b{};
    F(src + i * QK, b);
    std::memcpy(out + i * sizeof(Block), &b, sizeof(Block));
  }
}

}  // namespace

void quantize_row(TensorType type, const float* src, void* dst, size_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  switch (type) {
    case TensorType::kF32: std::memcpy(dst, src, n * 4); return;
    case TensorType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_fp16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case TensorType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case TensorType::kQ4_0: q_blocks<BlockQ4_0, q4_0, 32>(src, dst, n); return;
    case TensorType::kQ4_1: q_blocks<BlockQ4_1, q4_1, 32>(src, dst, n); return;
    case TensorType::kQ5_0: q_blocks<BlockQ5_0, q5_0, 32>(src, dst, n); return;
    case TensorType::kQ5_1: q_blocks<BlockQ5_1, q5_1, 32>(src, dst, n); return;
    case TensorType::kQ8_0: q_blocks<BlockQ8_0, q8_0, 32>(src, dst, n); return;
    case TensorType::kQ4_K: q_blocks<BlockQ4_K, q4_k, 256>(src, dst, n); return;
    case TensorType::kQ5_K: q_blocks<BlockQ5_K, q5_k, 256>(src, dst, n); return;
    case TensorType::kQ6_K: q_blocks<BlockQ6_K, q6_k, 256>(src, dst, n); return;
  }
}

Result<Bytes> quantize(TensorType type, std::span<const float> values, size_t row_len) {
  if (!is_supported(type)) {
    return make_error(ErrorCode::kUnsupported, "quantize: type {} is not supported", gguf::type_name(type));
  }
  if (row_len == 0 || row_len % block_size(type) != 0 || values.size() % row_len != 0) {
    return make_error(ErrorCode::kInvalidArgument, "quantize: row length {} is not a multiple of the {} block size {}",
                      row_len, gguf::type_name(type), block_size(type));
  }
  size_t rows = values.size() / row_len;
  size_t rb = row_bytes(type, row_len);
  Bytes out(rows * rb);
  for (size_t r = 0; r < rows; ++r) quantize_row(type, values.data() + r * row_len, out.data() + r * rb, row_len);
  return out;
}

}  // namespace veil::tensor
