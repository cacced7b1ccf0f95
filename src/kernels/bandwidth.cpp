// Memory read bandwidth probe (`veil bench --bandwidth`, and the roofline share of decode).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/internal.h"

namespace veil::kernels {
using namespace detail;

Result<BandwidthResult> measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  if (bytes < (1u << 20)) return make_error(ErrorCode::kInvalidArgument, "bandwidth buffer {} bytes: need >= 1 MiB", bytes);
  if (reps < 1) reps = 1;
  constexpr size_t kAlign = 2u << 20;
  bytes = (bytes + 4095) / 4096 * 4096;
  size_t alloc = (bytes + kAlign - 1) / kAlign * kAlign;
  void* raw = std::aligned_alloc(kAlign, alloc);
  if (raw == nullptr) return make_error(ErrorCode::kResourceExhausted, "bandwidth: cannot allocate {} bytes", alloc);
  std::unique_ptr<void, void (*)(void*)> guard(raw, std::free);
  madvise(raw, alloc, MADV_HUGEPAGE);
  auto* buf = static_cast<uint8_t*>(raw);
  // Touch every page from the threads that will read it (first-touch placement), with a non-zero pattern.
  pool.parallel_for(bytes, 4096, [&](size_t b, size_t e, int) { std::memset(buf + b, 0x5a, e - b); });

  BandwidthResult res;
  res.bytes = bytes;
  res.threads = pool.size();
  Isa isa = active_isa();
  res.loads = isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "scalar";
  uint64_t (*reader)(const uint8_t*, size_t) =
      isa == Isa::kAvx512 ? read_sum_avx512 : isa == Isa::kAvx2 ? read_sum_avx2 : read_sum_scalar;
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()) * 8, 0);
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // the first pass warms TLBs and is not counted
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(bytes, 4096, [&](size_t b, size_t e, int t) { sink[static_cast<size_t>(t) * 8] += reader(buf + b, e - b); });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, s);
  }
  uint64_t check = 0;
  for (uint64_t v : sink) check += v;
  if (check == 0) return make_error(ErrorCode::kInternal, "bandwidth: read checksum is zero");
  res.seconds = best;
  res.gbs = static_cast<double>(bytes) / best / 1e9;
  return res;
}

}  // namespace veil::kernels
