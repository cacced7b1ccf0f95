#include <algorithm>
#include <limits>

#include "pipeline/pipeline.h"

namespace veil::pipeline {

Result<std::vector<std::pair<uint32_t, uint32_t>>> balance_layers(const std::vector<uint64_t>& layer_bytes,
                                                                  uint32_t n_stages) {
  const size_t n = layer_bytes.size();
  if (n_stages == 0) return make_error(ErrorCode::kInvalidArgument, "--stages must be at least 1");
  if (n_stages > n) {
    return make_error(ErrorCode::kInvalidArgument, "cannot split {} layers into {} stages", n, n_stages);
  }
  std::vector<uint64_t> prefix(n + 1, 0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + layer_bytes[i];
  // best[k][i]: smallest possible largest stage when the first i layers form k stages.
  constexpr uint64_t kInf = std::numeric_limits<uint64_t>::max();
  std::vector<std::vector<uint64_t>> best(n_stages + 1, std::vector<uint64_t>(n + 1, kInf));
  std::vector<std::vector<size_t>> cut(n_stages + 1, std::vector<size_t>(n + 1, 0));
  best[0][0] = 0;
  for (uint32_t k = 1; k <= n_stages; ++k) {
    for (size_t i = k; i <= n; ++i) {
      // Earliest cut first with a strict improvement test, so ties give earlier stages the smaller share.
      for (size_t j = k - 1; j < i; ++j) {
        if (best[k - 1][j] == kInf) continue;
        uint64_t cost = std::max(best[k - 1][j], prefix[i] - prefix[j]);
        if (cost < best[k][i]) {
          best[k][i] = cost;
          cut[k][i] = j;
        }
      }
    }
  }
  std::vector<std::pair<uint32_t, uint32_t>> ranges(n_stages);
  size_t end = n;
  for (uint32_t k = n_stages; k >= 1; --k) {
    size_t begin = cut[k][end];
    ranges[k - 1] = {static_cast<uint32_t>(begin), static_cast<uint32_t>(end)};
    end = begin;
  }
  return ranges;
}

std::vector<MicroBatch> split_micro_batches(uint32_t n_tokens, uint32_t n_micro_batches) {
  std::vector<MicroBatch> out;
  if (n_tokens == 0 || n_micro_batches == 0) return out;
  uint32_t n = std::min(n_tokens, n_micro_batches);
  uint32_t base = n_tokens / n, extra = n_tokens % n, pos = 0;
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len = base + (i < extra ? 1 : 0);
    out.push_back({pos, pos + len});
    pos += len;
  }
  return out;
}

std::vector<std::vector<ScheduleSlot>> fill_drain_schedule(uint32_t n_stages, uint32_t n_micro_batches) {
  std::vector<std::vector<ScheduleSlot>> steps;
  if (n_stages == 0 || n_micro_batches == 0) return steps;
  steps.resize(n_stages + n_micro_batches - 1);
  for (uint32_t t = 0; t < steps.size(); ++t) {
    for (uint32_t s = 0; s < n_stages; ++s) {
      if (t >= s && t - s < n_micro_batches) steps[t].push_back({s, t - s});
    }
  }
  return steps;
}

}  // namespace veil::pipeline
