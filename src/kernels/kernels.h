// kernels: tensor types (GGUF block layouts, exact dequantisation, quantisation), the matrix-vector /
// matrix-matrix kernels with runtime dispatch, load-time repacking, the decode thread pool and the memory-bandwidth
// probe. The engine's only source of arithmetic on weights. Read this first.
//
// Types. Weights are GGUF tensors in their on-disk block layout (type ids as gguf::TensorType numbers them):
// F32, F16, BF16 (any row length), Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (rows a multiple of 32) and Q4_K, Q5_K, Q6_K (rows a
// multiple of 256). Row r of a matrix starts at w + r * row_stride. dequantize_row() is the format's definition
// (exact); quantize_row() is a plain round-to-nearest quantiser for every type (used by `veil quantize` / `synth`).
//
// Activations. A float vector x of length n is first "prepared" once (prepare(), act_bytes() bytes), then reused
// by every matvec/matmul against matrices of that weight type:
//   - F32, F16, BF16 weights: the activation is x itself as f32 (a copy).
//   - Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: ActQ8 blocks of 32: {f32 d, f32 s = d * sum(q), int8 q[32]} (40 bytes).
//   - Q4_K, Q5_K, Q6_K: ActQ8K super-blocks of 256: {f32 d, int16 bsums[16] (sum of each 16 q), int8 q[256]}.
// Quantisation is symmetric, round to nearest, d = max|x| / 127. The prepared format is the same for every ISA,
// so an activation prepared by one table may be used with another table's kernels.
//
// Arithmetic. Every ISA computes the same exact integer dot product per block (weights x int8 activations); only
// the order of the final f32 accumulation differs, so results match the scalar reference to float rounding.
//
// Dispatch. kernel_table(isa) gives one function table per instruction set: kScalar (portable C++, the
// reference), kAvx2 (AVX2 + FMA + F16C, int8 maddubs), kAvx512 (AVX-512 F/BW/VL + VNNI dpbusd; compiled with
// target attributes so the binary runs everywhere). active_isa() is the best the CPU supports, or
// VEIL_KERNELS=scalar|avx2|avx512 (an unsupported request falls back to the best supported, with a warning).
//
// Repacking. repack_x4() interleaves 4 rows' Q4_0 / Q8_0 blocks so one contiguous pass over the weights produces
// 4 outputs per step; TypeKernels::matvec_x4 / matmul_x4 run on that layout (every ISA, scalar included). The
// engine repacks at load (docs/engine.md says when).
//
// Thread pool. ThreadPool keeps persistent workers that spin (bounded) between jobs and then sleep on a futex;
// run() splits [0, n) into contiguous ranges that the threads claim from a shared counter; it allocates nothing.
//
// Thread-safety: every kernel is a pure function of its inputs and may run concurrently on disjoint outputs.
// A ThreadPool's run() must be called by one thread at a time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <thread>
#include <vector>

#include "core/core.h"

namespace veil::kernels {

// GGUF tensor type ids (identical to gguf::TensorType; static_cast between them).
enum class Type : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};
inline constexpr Type kAllTypes[] = {Type::kF32,  Type::kF16,  Type::kBF16, Type::kQ8_0, Type::kQ4_0, Type::kQ4_1,
                                     Type::kQ5_0, Type::kQ5_1, Type::kQ4_K, Type::kQ5_K, Type::kQ6_K};

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* type_name(Type t);
bool type_supported(Type t);
uint32_t block_elems(Type t);  // 1 for F32/F16/BF16, 32, or 256
uint32_t block_bytes(Type t);
size_t row_bytes(Type t, size_t n);  // n a multiple of block_elems(t)

const char* isa_name(Isa isa);
Result<Isa> parse_isa(std::string_view name);  // "scalar" | "avx2" | "avx512"
bool isa_supported(Isa isa);                   // by this CPU
Isa best_isa();                                // best the CPU supports
Isa active_isa();                              // VEIL_KERNELS if set and supported, else best_isa(); cached

// One weight type's kernels.
struct TypeKernels {
  // Bytes of the prepared activation for a vector of n elements.
  size_t (*act_bytes)(size_t n) = nullptr;
  // Prepares (copies or quantises) x[0..n) into `out` (act_bytes(n) bytes, any alignment).
  void (*prepare)(const float* x, size_t n, uint8_t* out) = nullptr;
  // Decode: y[r - r0] = dot(row r, act) for r in [r0, r1). Rows are `row_stride` bytes apart, `n` elements long.
  void (*matvec)(const uint8_t* w, size_t row_stride, size_t n, const uint8_t* act, float* y, size_t r0,
                 size_t r1) = nullptr;
  // Prefill / batched decode: `batch` prepared activations, act_stride bytes apart;
  // y[b * y_stride + (r - r0)] = dot(row r, act b). Weights stream once for the whole batch (row tiles stay in
  // cache while every column is applied).
  void (*matmul)(const uint8_t* w, size_t row_stride, size_t n, const uint8_t* act, size_t act_stride,
                 size_t batch, float* y, size_t y_stride, size_t r0, size_t r1) = nullptr;
  // The same two on the repacked x4 layout (repack_x4) of a matrix of `rows` rows; nullptr for types without one.
  // r0 must be a multiple of 4; y is indexed as above (relative to r0); rows past r1 are not written.
  void (*matvec_x4)(const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, float* y, size_t r0,
                    size_t r1) = nullptr;
  void (*matmul_x4)(const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, size_t act_stride,
                    size_t batch, float* y, size_t y_stride, size_t r0, size_t r1) = nullptr;
};

struct KernelTable {
  const char* name = "scalar";
  Isa isa = Isa::kScalar;
  TypeKernels by_type[32];
  const TypeKernels& of(Type t) const { return by_type[static_cast<uint32_t>(t) & 31]; }
  // Element-wise activations: gate[i] = silu(gate[i]) * up[i]; x[i] = gelu(x[i]) (tanh approximation). The scalar
  // table uses libm's expf / tanhf; the SIMD tables a polynomial exp within 2 ulp of it.
  void (*silu_mul)(float* gate, const float* up, size_t n) = nullptr;
  void (*gelu)(float* x, size_t n) = nullptr;
};

// The table of one ISA (callable on any CPU; running a table the CPU lacks raises SIGILL: check isa_supported).
const KernelTable& kernel_table(Isa isa);
inline const KernelTable& active_table() { return kernel_table(active_isa()); }

// Exact dequantisation of one row of n elements (n a multiple of block_elems(t)).
void dequantize_row(Type t, const uint8_t* src, float* dst, size_t n);
// Dequantises a whole tensor of n elements.
std::vector<float> dequantize(Type t, const uint8_t* src, size_t n);
// Quantises n elements (a multiple of block_elems(t)) into row_bytes(t, n) bytes (round to nearest; absmax or
// min/max per block; K-quants choose 6-bit sub-block scales and mins).
void quantize_row(Type t, const float* src, uint8_t* dst, size_t n);
// Quantises a [rows x row_len] matrix; kInvalidArgument if row_len is not a multiple of the block size.
Result<Bytes> quantize(Type t, std::span<const float> values, size_t row_len);

// fp16 / bf16 scalar conversions (round to nearest even; f32 -> fp16 overflows to infinity).
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

// ---- repacked layouts ----
// Q4_0x4 / Q8_0x4: rows grouped by 4; for each block column j the 4 rows' blocks are stored together:
// all four f16 scales, then the four quant arrays. Rows beyond `rows` (ragged tail) are zero-padded.
// repacked_bytes() gives the buffer size; the result is addressed by group g = r / 4 at g * group_stride.
// With rows a multiple of 4, the repacked matrix has exactly the plain matrix's size.
bool has_x4_layout(Type t);                            // kQ4_0, kQ8_0
size_t repacked_bytes(Type t, size_t rows, size_t n);  // 0 for types without an x4 layout
size_t repacked_group_stride(Type t, size_t n);
// Repacks a plain [rows x n] matrix (rows row_stride bytes apart) into dst (repacked_bytes bytes).
Status repack_x4(Type t, const uint8_t* w, size_t row_stride, size_t rows, size_t n, uint8_t* dst);
// Copies row r of a repacked matrix back into the plain layout (row_bytes(t, n) bytes at dst).
void extract_row_x4(Type t, const uint8_t* packed, size_t n, size_t r, uint8_t* dst);
// kernel_table(isa).of(t).matvec_x4, for tests and benchmarks.
void matvec_repacked_x4(Isa isa, Type t, const uint8_t* packed, size_t rows, size_t n, const uint8_t* act, float* y,
                        size_t r0, size_t r1);

// ---- thread pool ----
// Persistent workers for decode latency. ThreadPool(n) uses the calling thread plus n-1 workers. Between jobs a
// worker spins for up to `spin_us` microseconds, then sleeps on a futex; the caller's wait does the same.
// With pin=true thread i is pinned to the i-th CPU of the process's affinity mask.
//
// Work is handed out in ranges from a shared counter: each thread (the caller included) claims the next range
// until none is left, so a thread the OS has descheduled (a shared, oversubscribed machine) leaves its ranges to
// the others instead of stalling the job, and the caller never waits for a worker that has not started. A job is
// finished when all of its ranges are, whoever ran them.
class ThreadPool {
 public:
  // fn(ctx, begin, end, thread): thread is the index of the running thread (0 = the caller), unique among the
  // threads running the job at one time.
  using TaskFn = void (*)(void* ctx, size_t begin, size_t end, int thread);

  explicit ThreadPool(int n_threads, bool pin = false, int spin_us = 200);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Splits [0, n) into size() * chunks_per_thread contiguous ranges (fewer when n / grain is smaller) whose
  // boundaries are multiples of `grain` (the last range takes the remainder), runs fn on each and returns when all
  // have finished. fn may run several ranges on one thread. Allocates nothing.
  void run(size_t n, size_t grain, TaskFn fn, void* ctx, int chunks_per_thread = 1);
  // Convenience over run(): f(begin, end, thread) for a callable; no allocation.
  template <typename F>
  void parallel_for(size_t n, size_t grain, F&& f, int chunks_per_thread = 1) {
    run(n, grain, [](void* c, size_t b, size_t e, int t) { (*static_cast<F*>(c))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(&f)), chunks_per_thread);
  }
  // How many jobs have been run (for tests).
  uint64_t jobs_run() const { return jobs_; }

 private:
  // A job's description, in one of four slots (job id % 4) so that a worker still looking at an older job never
  // reads a slot being rewritten: a slot is reused only four jobs later, and a claim is valid only while the shared
  // counter still carries that job's id.
  struct Job {
    std::atomic<TaskFn> fn{nullptr};
    std::atomic<void*> ctx{nullptr};
    std::atomic<size_t> n{0};
    std::atomic<size_t> grain{1};
    std::atomic<uint32_t> ranges{0};
  };
  void worker_main(int index);
  void work(uint32_t job, int thread);

  int n_threads_ = 1;
  int spin_us_ = 200;
  std::vector<std::thread> workers_;
  Job jobs_desc_[4];
  alignas(64) std::atomic<uint32_t> generation_{0};  // id of the latest job (workers sleep on it)
  alignas(64) std::atomic<uint64_t> claim_{0};        // (job id << 32) | next range to claim
  alignas(64) std::atomic<uint32_t> done_{0};         // ranges of the current job finished (caller sleeps on it)
  alignas(64) std::atomic<int> sleepers_{0};          // workers asleep on generation_
  std::atomic<int> caller_sleeping_{0};
  std::atomic<bool> stop_{false};
  uint64_t jobs_ = 0;
};

// A spinning barrier for `n` participants: spins up to spin_us, then sleeps on a futex. Reusable.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n, int spin_us = 200) : n_(n), spin_us_(spin_us) {}
  void arrive_and_wait();

 private:
  int n_;
  int spin_us_;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<uint32_t> phase_{0};
  std::atomic<int> sleepers_{0};
};

// ---- memory bandwidth ----
struct BandwidthResult {
  double gbs = 0;        // best of the repetitions, 1e9 bytes per second
  double seconds = 0;    // time of the best repetition
  size_t bytes = 0;      // bytes read per repetition
  int threads = 1;
  const char* loads = "";  // "avx512", "avx2" or "scalar"
};
// Reads a `bytes` buffer (allocated, touched, then read `reps` times) with vector loads split over the pool.
Result<BandwidthResult> measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps);

// ---- helpers for tests and benchmarks ----
// Fills a [rows x n] matrix of type t with deterministic pseudo-random valid blocks (finite scales).
void fill_random_matrix(Type t, size_t rows, size_t n, uint64_t seed, uint8_t* dst);

}  // namespace veil::kernels
