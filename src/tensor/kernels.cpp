// The scalar reference kernels, kernel-set selection, and the threaded matmul driver.
#include <cstdlib>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "tensor/kernels_internal.h"
#include "tensor/tensor.h"
#include "tensor/thread_pool.h"

namespace veil::tensor {

float dot_f32(const float* a, const float* b, size_t n) {
  float s = 0.0f;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

namespace {

size_t f32_act_bytes(size_t n) { return n * sizeof(float); }
void f32_prepare(const float* x, size_t n, uint8_t* out) { std::memcpy(out, x, n * sizeof(float)); }

void matvec_f32(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* x = reinterpret_cast<const float*>(act);
  for (size_t r = r0; r < r1; ++r) {
    const auto* row = reinterpret_cast<const float*>(w + r * stride);
    y[r - r0] = dot_f32(row, x, n);
  }
}

// Reference for every other type: dequantise one chunk of the row at a time, accumulate in element order.
template <TensorType T>
void matvec_deq(const uint8_t* w, size_t stride, size_t n, const uint8_t* act, float* y, size_t r0, size_t r1) {
  const auto* x = reinterpret_cast<const float*>(act);
  constexpr size_t kChunk = 256;
  float buf[kChunk];
  const size_t bs = block_size(T);
  const size_t chunk = kChunk / bs * bs;
  const size_t chunk_bytes = row_bytes(T, chunk);
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * stride;
    float s = 0.0f;
    for (size_t i = 0, c = 0; i < n; i += chunk, ++c) {
      size_t m = std::min(chunk, n - i);
      dequantize_row(T, row + c * chunk_bytes, buf, m);
      for (size_t j = 0; j < m; ++j) s += buf[j] * x[i + j];
    }
    y[r - r0] = s;
  }
}

KernelSet make_scalar() {
  KernelSet k;
  k.name = "scalar";
  auto set = [&](TensorType t, auto fn) {
    k.by_type[static_cast<uint32_t>(t)] = TypeKernel{f32_act_bytes, f32_prepare, fn};
  };
  set(TensorType::kF32, matvec_f32);
  set(TensorType::kF16, matvec_deq<TensorType::kF16>);
  set(TensorType::kBF16, matvec_deq<TensorType::kBF16>);
  set(TensorType::kQ8_0, matvec_deq<TensorType::kQ8_0>);
  set(TensorType::kQ4_0, matvec_deq<TensorType::kQ4_0>);
  set(TensorType::kQ4_1, matvec_deq<TensorType::kQ4_1>);
  set(TensorType::kQ5_0, matvec_deq<TensorType::kQ5_0>);
  set(TensorType::kQ5_1, matvec_deq<TensorType::kQ5_1>);
  set(TensorType::kQ4_K, matvec_deq<TensorType::kQ4_K>);
  set(TensorType::kQ5_K, matvec_deq<TensorType::kQ5_K>);
  set(TensorType::kQ6_K, matvec_deq<TensorType::kQ6_K>);
  return k;
}

const KernelSet* choose_active() {
  if (const char* env = std::getenv("VEIL_KERNELS"); env && *env) {
    auto k = kernels_by_name(env);
    if (k.ok()) return *k;
    spdlog::warn("VEIL_KERNELS={} ignored: {}", env, k.error().message());
  }
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) {
    if (const KernelSet* a = avx2_kernels()) return a;
  }
  return &scalar_kernels();
}

struct MatmulCtx {
  const TypeKernel* kern;
  const Matrix* w;
  const uint8_t* act;
  size_t act_stride;
  size_t batch;
  float* y;
};

void matmul_task(void* p, size_t r0, size_t r1) {
  auto* c = static_cast<MatmulCtx*>(p);
  for (size_t b = 0; b < c->batch; ++b) {
    c->kern->matvec(c->w->data, c->w->row_stride, c->w->cols, c->act + b * c->act_stride,
                    c->y + b * c->w->rows + r0, r0, r1);
  }
}

}  // namespace

const KernelSet& scalar_kernels() {
  static const KernelSet k = make_scalar();
  return k;
}

const KernelSet& active_kernels() {
  static const KernelSet* k = choose_active();
  return *k;
}

Result<const KernelSet*> kernels_by_name(std::string_view name) {
  if (name == "scalar") return &scalar_kernels();
  if (name == "avx2") {
    const CpuFeatures& f = cpu_features();
    if (!(f.avx2 && f.fma && f.f16c)) return make_error(ErrorCode::kUnsupported, "kernels avx2: this CPU lacks AVX2/FMA/F16C");
    if (const KernelSet* a = avx2_kernels()) return a;
    return make_error(ErrorCode::kUnsupported, "kernels avx2: not built for this compiler/architecture");
  }
  if (name == "avx512") {
    return make_error(ErrorCode::kUnsupported, "kernels avx512: not implemented yet (use avx2 or scalar)");
  }
  return make_error(ErrorCode::kInvalidArgument, "kernels '{}': unknown (scalar, avx2 or avx512)", name);
}

void matmul(const KernelSet& k, const Matrix& w, const float* x, size_t batch, float* y, ThreadPool* pool,
            MatmulScratch& scratch) {
  const TypeKernel* kern = &k.of(w.type);
  if (!kern->matvec) kern = &scalar_kernels().of(w.type);
  size_t ab = kern->act_bytes(w.cols);
  ab = (ab + 63) / 64 * 64;
  if (scratch.act.size() < ab * batch) scratch.act.resize(ab * batch);
  for (size_t b = 0; b < batch; ++b) kern->prepare(x + b * w.cols, w.cols, scratch.act.data() + b * ab);
  MatmulCtx ctx{kern, &w, scratch.act.data(), ab, batch, y};
  if (pool) {
    pool->run(w.rows, 16, matmul_task, &ctx);
  } else {
    matmul_task(&ctx, 0, w.rows);
  }
}

}  // namespace veil::tensor
