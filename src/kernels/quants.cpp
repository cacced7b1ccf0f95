// Quantisation of every type (the inverse of dequantize_row up to rounding): absmax or min/max per block; K-quants
// choose sub-block scales and mins, then quantise those to 6 bits. Used by `veil quantize` and `veil synth`.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/internal.h"

namespace veil::kernels {
using namespace detail;

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

void quantize_row(Type type, const float* src, uint8_t* dst, size_t n) {
  uint8_t* d = dst;
  switch (type) {
    case Type::kF32: std::memcpy(dst, src, n * 4); return;
    case Type::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_fp16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case Type::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case Type::kQ4_0: q_blocks<BlockQ4_0, q4_0, 32>(src, dst, n); return;
    case Type::kQ4_1: q_blocks<BlockQ4_1, q4_1, 32>(src, dst, n); return;
    case Type::kQ5_0: q_blocks<BlockQ5_0, q5_0, 32>(src, dst, n); return;
    case Type::kQ5_1: q_blocks<BlockQ5_1, q5_1, 32>(src, dst, n); return;
    case Type::kQ8_0: q_blocks<BlockQ8_0, q8_0, 32>(src, dst, n); return;
    case Type::kQ4_K: q_blocks<BlockQ4_K, q4_k, 256>(src, dst, n); return;
    case Type::kQ5_K: q_blocks<BlockQ5_K, q5_k, 256>(src, dst, n); return;
    case Type::kQ6_K: q_blocks<BlockQ6_K, q6_k, 256>(src, dst, n); return;
  }
}

Result<Bytes> quantize(Type type, std::span<const float> values, size_t row_len) {
  if (!type_supported(type)) {
    return make_error(ErrorCode::kUnsupported, "quantize: type {} is not supported", type_name(type));
  }
  if (row_len == 0 || row_len % block_elems(type) != 0 || values.size() % row_len != 0) {
    return make_error(ErrorCode::kInvalidArgument, "quantize: row length {} is not a multiple of the {} block size {}",
                      row_len, type_name(type), block_elems(type));
  }
  size_t rows = values.size() / row_len;
  size_t rb = row_bytes(type, row_len);
  Bytes out(rows * rb);
  for (size_t r = 0; r < rows; ++r) quantize_row(type, values.data() + r * row_len, out.data() + r * rb, row_len);
  return out;
}

}  // namespace veil::kernels
