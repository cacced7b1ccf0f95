#include <algorithm>
#include <limits>

#include "pipeline/pipeline.h"

namespace veil::pipeline {

Result<std::vector<std::pair<uint32_t, uint32_t>>> balance_layers(const std::vector<uint64_t>& layer_bytes,
                                                                  uint32_t n_stages, uint64_t last_stage_extra) {
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
        // best[k][n] is read only for k == n_stages, so the extra lands in the last stage.
        const uint64_t stage = prefix[i] - prefix[j] + (i == n ? last_stage_extra : 0);
        uint64_t cost = std::max(best[k - 1][j], stage);
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

DecodeCosts decode_costs(std::span<const TensorSize> tensors) {
  DecodeCosts c;
  uint64_t output = 0, output_norm = 0, token_embd = 0;
  bool has_output = false;
  for (const TensorSize& t : tensors) {
    const uint32_t part = sealed::part_of_tensor(t.name);
    if (part < sealed::kPartOutput) {  // a layer index
      if (part >= c.layer_bytes.size()) c.layer_bytes.resize(size_t{part} + 1, 0);
      c.layer_bytes[part] += t.bytes;
    } else if (t.name == "output.weight") {
      output += t.bytes;
      has_output = true;
    } else if (part == sealed::kPartOutput) {
      output_norm += t.bytes;
    } else if (t.name == "token_embd.weight") {
      token_embd = t.bytes;
    }
  }
  c.head_bytes = output_norm + (has_output ? output : token_embd);
  return c;
}

Result<std::vector<std::pair<uint32_t, uint32_t>>> balance_stages(const DecodeCosts& costs, uint32_t n_stages) {
  return balance_layers(costs.layer_bytes, n_stages, costs.head_bytes);
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
