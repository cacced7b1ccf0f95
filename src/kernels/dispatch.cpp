// Type traits, ISA selection and the per-ISA kernel tables.
#include <cstdlib>
#include <mutex>

#include <spdlog/spdlog.h>

#include "kernels/internal.h"

namespace veil::kernels {
using namespace detail;

const char* type_name(Type t) {
  switch (t) {
    case Type::kF32: return "F32";
    case Type::kF16: return "F16";
    case Type::kBF16: return "BF16";
    case Type::kQ8_0: return "Q8_0";
    case Type::kQ4_0: return "Q4_0";
    case Type::kQ4_1: return "Q4_1";
    case Type::kQ5_0: return "Q5_0";
    case Type::kQ5_1: return "Q5_1";
    case Type::kQ4_K: return "Q4_K";
    case Type::kQ5_K: return "Q5_K";
    case Type::kQ6_K: return "Q6_K";
  }
  return "unknown";
}

bool type_supported(Type t) {
  for (Type a : kAllTypes)
    if (a == t) return true;
  return false;
}

uint32_t block_elems(Type t) {
  switch (t) {
    case Type::kF32: case Type::kF16: case Type::kBF16: return 1;
    case Type::kQ4_K: case Type::kQ5_K: case Type::kQ6_K: return 256;
    default: return 32;
  }
}

uint32_t block_bytes(Type t) {
  switch (t) {
    case Type::kF32: return 4;
    case Type::kF16: case Type::kBF16: return 2;
    case Type::kQ8_0: return 34;
    case Type::kQ4_0: return 18;
    case Type::kQ4_1: return 20;
    case Type::kQ5_0: return 22;
    case Type::kQ5_1: return 24;
    case Type::kQ4_K: return 144;
    case Type::kQ5_K: return 176;
    case Type::kQ6_K: return 210;
  }
  return 0;
}

size_t row_bytes(Type t, size_t n) { return n / block_elems(t) * block_bytes(t); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

Result<Isa> parse_isa(std::string_view name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  return make_error(ErrorCode::kInvalidArgument, "unknown kernel set '{}': expected scalar, avx2 or avx512", name);
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return f.avx2 && f.fma && f.f16c;
    case Isa::kAvx512: return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa active_isa() {
  static const Isa isa = [] {
    const char* env = std::getenv("VEIL_KERNELS");
    if (env == nullptr || *env == 0) return best_isa();
    auto r = parse_isa(env);
    if (!r.ok()) {
      spdlog::warn("VEIL_KERNELS: {}; using {}", r.error().message(), isa_name(best_isa()));
      return best_isa();
    }
    if (!isa_supported(*r)) {
      spdlog::warn("VEIL_KERNELS={}: this CPU lacks it; using {}", env, isa_name(best_isa()));
      return best_isa();
    }
    return *r;
  }();
  return isa;
}

const KernelTable& kernel_table(Isa isa) {
  static KernelTable tables[3];
  static std::once_flag once;
  std::call_once(once, [] {
    fill_scalar(tables[0]);
    tables[1] = tables[0];
    fill_avx2(tables[1]);
    tables[2] = tables[1];
    fill_avx512(tables[2]);
  });
  return tables[static_cast<int>(isa)];
}

// ---- repacked x4 layouts ----

bool has_x4_layout(Type t) { return t == Type::kQ4_0 || t == Type::kQ8_0; }

size_t repacked_group_stride(Type t, size_t n) {
  if (t == Type::kQ4_0) return n / 32 * kX4BlockQ4_0;
  if (t == Type::kQ8_0) return n / 32 * kX4BlockQ8_0;
  return 0;
}

size_t repacked_bytes(Type t, size_t rows, size_t n) { return (rows + 3) / 4 * repacked_group_stride(t, n); }

Status repack_x4(Type t, const uint8_t* w, size_t row_stride, size_t rows, size_t n, uint8_t* dst) {
  if (!has_x4_layout(t))
    return make_error(ErrorCode::kUnsupported, "repack_x4: type {} has no x4 layout", type_name(t));
  if (n % 32 != 0) return make_error(ErrorCode::kInvalidArgument, "repack_x4: row length {} not a multiple of 32", n);
  const size_t bb = block_bytes(t), qb = bb - 2, nb = n / 32;
  const size_t gstride = repacked_group_stride(t, n);
  for (size_t g = 0; g < (rows + 3) / 4; ++g) {
    uint8_t* out = dst + g * gstride;
    for (size_t j = 0; j < nb; ++j) {
      uint8_t* blk = out + j * 4 * bb;
      for (size_t k = 0; k < 4; ++k) {
        size_t r = 4 * g + k;
        if (r < rows) {
          const uint8_t* src = w + r * row_stride + j * bb;
          std::memcpy(blk + 2 * k, src, 2);
          std::memcpy(blk + 8 + k * qb, src + 2, qb);
        } else {
          std::memset(blk + 2 * k, 0, 2);
          std::memset(blk + 8 + k * qb, t == Type::kQ4_0 ? 0x88 : 0, qb);
        }
      }
    }
  }
  return ok_status();
}

void extract_row_x4(Type t, const uint8_t* packed, size_t n, size_t r, uint8_t* dst) {
  const size_t bb = block_bytes(t), qb = bb - 2, nb = n / 32, k = r % 4;
  const uint8_t* group = packed + (r / 4) * repacked_group_stride(t, n);
  for (size_t j = 0; j < nb; ++j) {
    const uint8_t* blk = group + j * 4 * bb;
    std::memcpy(dst + j * bb, blk + 2 * k, 2);
    std::memcpy(dst + j * bb + 2, blk + 8 + k * qb, qb);
  }
}

void matvec_repacked_x4(Isa isa, Type t, const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, float* y,
                        size_t r0, size_t r1) {
  kernel_table(isa).of(t).matvec_x4(packed, rows, n, act, y, r0, r1);
}

}  // namespace veil::kernels
