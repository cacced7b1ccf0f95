// Kernel benchmarks: weight-streaming GB/s of decode-shaped matvec (matrices rotated through a working set larger
// than the L3 so weights come from DRAM, as in decode), GFLOP/s of prefill-shaped matmul (batch 128), and the
// machine's read bandwidth for the roofline share. Results: docs/benchmarks.md.
//
//   veil_bench_kernels [--benchmark_filter=...]      (VEIL_KERNELS=scalar|avx2|avx512 forces the kernel set)
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace {

using namespace veil::kernels;

constexpr size_t kWorkingSet = 256u << 20;  // > L3 (32 MiB): every matvec reads its weights from DRAM

struct Shape {
  size_t rows, cols;
};

ThreadPool& pool_of(int threads) {
  static std::unique_ptr<ThreadPool> pools[9];
  if (!pools[threads]) pools[threads] = std::make_unique<ThreadPool>(threads);
  return *pools[threads];
}

std::vector<float> random_x(size_t n) {
  std::mt19937 g(42);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> x(n);
  for (auto& v : x) v = u(g);
  return x;
}

void bm_matvec(benchmark::State& state, Type t, Shape s, int threads, bool repacked, bool cached) {
  const TypeKernels& k = active_table().of(t);
  const size_t rb = row_bytes(t, s.cols), mat = rb * s.rows;
  const size_t copies = cached ? 1 : std::max<size_t>(1, kWorkingSet / mat);
  std::vector<uint8_t> w(mat * copies);
  fill_random_matrix(t, s.rows, s.cols, 1, w.data());
  for (size_t c = 1; c < copies; ++c) std::memcpy(w.data() + c * mat, w.data(), mat);
  std::vector<uint8_t> packed;
  const size_t pmat = repacked ? repacked_bytes(t, s.rows, s.cols) : 0;
  if (repacked) {
    packed.resize(pmat * copies);
    for (size_t c = 0; c < copies; ++c)
      if (!repack_x4(t, w.data() + c * mat, rb, s.rows, s.cols, packed.data() + c * pmat).ok()) {
        state.SkipWithError("repack failed");
        return;
      }
    std::vector<uint8_t>().swap(w);
  }
  auto x = random_x(s.cols);
  std::vector<uint8_t> act(k.act_bytes(s.cols));
  std::vector<float> y(s.rows);
  ThreadPool& pool = pool_of(threads);
  const Isa isa = active_isa();
  size_t c = 0;
  for (auto _ : state) {
    k.prepare(x.data(), s.cols, act.data());
    if (repacked) {
      const uint8_t* p = packed.data() + c * pmat;
      pool.parallel_for(s.rows, 4, [&](size_t b, size_t e, int) {
        matvec_repacked_x4(isa, t, p, s.rows, s.cols, act.data(), y.data() + b, b, e);
      });
    } else {
      const uint8_t* p = w.data() + c * mat;
      pool.parallel_for(s.rows, 4, [&](size_t b, size_t e, int) {
        k.matvec(p, rb, s.cols, act.data(), y.data() + b, b, e);
      });
    }
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(mat) * static_cast<double>(state.iterations()) / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["rows"] = static_cast<double>(s.rows);  // ns per row = Time / rows
  state.SetLabel(std::string(active_table().name) + (repacked ? " x4" : ""));
}

void bm_matmul(benchmark::State& state, Type t, Shape s, size_t batch, int threads, bool repacked) {
  const TypeKernels& k = active_table().of(t);
  const size_t rb = row_bytes(t, s.cols);
  std::vector<uint8_t> w(rb * s.rows);
  fill_random_matrix(t, s.rows, s.cols, 2, w.data());
  if (repacked) {  // the engine's layout for Q4_0 / Q8_0
    std::vector<uint8_t> packed(repacked_bytes(t, s.rows, s.cols));
    if (!repack_x4(t, w.data(), rb, s.rows, s.cols, packed.data()).ok()) {
      state.SkipWithError("repack failed");
      return;
    }
    w.swap(packed);
  }
  auto x = random_x(s.cols * batch);
  const size_t ab = k.act_bytes(s.cols);
  std::vector<uint8_t> act(ab * batch);
  std::vector<float> y(s.rows * batch);
  ThreadPool& pool = pool_of(threads);
  for (auto _ : state) {
    pool.parallel_for(batch, 1, [&](size_t b, size_t e, int) {
      for (size_t i = b; i < e; ++i) k.prepare(x.data() + i * s.cols, s.cols, act.data() + i * ab);
    });
    pool.parallel_for(s.rows, 16, [&](size_t b, size_t e, int) {
      if (repacked) {
        k.matmul_x4(w.data(), s.rows, s.cols, act.data(), ab, batch, y.data() + b, s.rows, b, e);
      } else {
        k.matmul(w.data(), rb, s.cols, act.data(), ab, batch, y.data() + b, s.rows, b, e);
      }
    });
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * static_cast<double>(s.rows * s.cols * batch);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.SetLabel(std::string(active_table().name) + (repacked ? " x4" : ""));
}

void bm_bandwidth(benchmark::State& state, int threads) {
  double best = 0;
  for (auto _ : state) {
    auto r = measure_read_bandwidth(pool_of(threads), 512u << 20, 3);
    if (!r.ok()) {
      state.SkipWithError(r.error().message().c_str());
      return;
    }
    best = std::max(best, r->gbs);
  }
  state.counters["GB/s"] = best;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int th : {1, 2})
    benchmark::RegisterBenchmark(("bandwidth/threads:" + std::to_string(th)).c_str(), bm_bandwidth, th)
        ->Iterations(1)->Unit(benchmark::kMillisecond);
  const Shape decode_shapes[] = {{2048, 2048}, {5632, 2048}, {2048, 5632}, {768, 768}, {3072, 768}, {32000, 2048}};
  const Type decode_types[] = {Type::kQ4_0, Type::kQ8_0, Type::kF16, Type::kQ4_K, Type::kQ6_K,
                               Type::kQ4_1, Type::kQ5_0, Type::kQ5_1, Type::kQ5_K, Type::kBF16, Type::kF32};
  for (Type t : decode_types)
    for (Shape s : decode_shapes) {
      if (s.cols % block_elems(t) != 0) continue;
      bool main_type = t == Type::kQ4_0 || t == Type::kQ8_0 || t == Type::kF16;
      if (!main_type && !(s.rows == 2048 && s.cols == 2048)) continue;
      for (int th : {1, 2}) {
        std::string name = std::string("matvec/") + type_name(t) + "/" + std::to_string(s.rows) + "x" +
                           std::to_string(s.cols) + "/threads:" + std::to_string(th);
        benchmark::RegisterBenchmark(name.c_str(), bm_matvec, t, s, th, false, false)->UseRealTime()->Unit(benchmark::kMicrosecond);
        if (t == Type::kQ4_0 || t == Type::kQ8_0)
          benchmark::RegisterBenchmark((name + "/x4").c_str(), bm_matvec, t, s, th, true, false)
              ->UseRealTime()->Unit(benchmark::kMicrosecond);
      }
    }
  // Compute-bound kernel throughput: one 256-row matrix that stays in L2, one thread, CPU time (robust to a
  // shared, noisy machine). GB/s here is how fast a core can consume weights; decode is memory-bound when it
  // exceeds the per-core share of DRAM bandwidth.
  for (Type t : decode_types) {
    const Shape s{256, 2048};
    std::string name = std::string("matvec_cached/") + type_name(t) + "/256x2048";
    benchmark::RegisterBenchmark(name.c_str(), bm_matvec, t, s, 1, false, true)->Unit(benchmark::kMicrosecond);
    if (t == Type::kQ4_0 || t == Type::kQ8_0)
      benchmark::RegisterBenchmark((name + "/x4").c_str(), bm_matvec, t, s, 1, true, true)->Unit(benchmark::kMicrosecond);
  }
  const Shape prefill_shapes[] = {{2048, 2048}, {5632, 2048}, {768, 768}};
  for (Type t : {Type::kQ4_0, Type::kQ8_0, Type::kF16, Type::kQ4_K, Type::kQ6_K})
    for (Shape s : prefill_shapes) {
      if (s.cols % block_elems(t) != 0) continue;
      if ((t == Type::kQ4_K || t == Type::kQ6_K) && s.rows != 2048) continue;
      for (int th : {1, 2}) {
        std::string name = std::string("matmul/") + type_name(t) + "/" + std::to_string(s.rows) + "x" +
                           std::to_string(s.cols) + "/batch:128/threads:" + std::to_string(th);
        // 1 thread: CPU time (runs inline; robust on a shared machine). 2 threads: wall time.
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_matmul, t, s, size_t{128}, th, false)->Unit(benchmark::kMillisecond);
        if (th > 1) b->UseRealTime();
        if (has_x4_layout(t)) {
          b = benchmark::RegisterBenchmark((name + "/x4").c_str(), bm_matmul, t, s, size_t{128}, th, true)
                  ->Unit(benchmark::kMillisecond);
          if (th > 1) b->UseRealTime();
        }
      }
    }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
