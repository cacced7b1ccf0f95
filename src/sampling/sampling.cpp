#include "sampling/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace veil::sampling {

namespace {

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int32_t kMaxWindow = 1 << 20;

}  // namespace

Xoshiro256::Xoshiro256(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) s = splitmix64(x);
}

uint64_t Xoshiro256::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Xoshiro256::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Result<Sampler> Sampler::create(const SamplingParams& p, size_t vocab_size) {
  auto bad = [](const char* name, double v, const char* why) {
    return make_error(ErrorCode::kInvalidArgument, "sampling: parameter {} = {} {}", name, v, why);
  };
  if (vocab_size == 0 || vocab_size > static_cast<size_t>(std::numeric_limits<TokenId>::max()))
    return make_error(ErrorCode::kInvalidArgument, "sampling: vocabulary size {} is out of range", vocab_size);
  if (!std::isfinite(p.temperature)) return bad("temperature", p.temperature, "is not finite");
  if (!(p.top_p >= 0.0f && p.top_p <= 1.0f)) return bad("top_p", p.top_p, "is outside [0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return bad("min_p", p.min_p, "is outside [0, 1]");
  if (!(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0.0f))
    return bad("repeat_penalty", p.repeat_penalty, "must be a positive number");
  if (!std::isfinite(p.frequency_penalty)) return bad("frequency_penalty", p.frequency_penalty, "is not finite");
  if (!std::isfinite(p.presence_penalty)) return bad("presence_penalty", p.presence_penalty, "is not finite");
  if (p.penalty_last_n < 0 || p.penalty_last_n > kMaxWindow)
    return bad("penalty_last_n", p.penalty_last_n, "is outside [0, 1048576]");
  if (p.top_k < 0) return bad("top_k", p.top_k, "is negative");
  return Sampler(p, vocab_size);
}

Sampler::Sampler(const SamplingParams& params, size_t vocab_size)
    : params_(params), vocab_size_(vocab_size), rng_(params.seed) {
  cand_.resize(vocab_size);
  probs_.resize(vocab_size);
  window_.assign(static_cast<size_t>(params.penalty_last_n), 0);
  counts_.assign(vocab_size, 0);
}

void Sampler::accept(TokenId id) {
  if (window_.empty() || id < 0 || static_cast<size_t>(id) >= vocab_size_) return;
  if (window_len_ == window_.size()) {
    --counts_[static_cast<size_t>(window_[window_pos_])];
  } else {
    ++window_len_;
  }
  window_[window_pos_] = id;
  ++counts_[static_cast<size_t>(id)];
  window_pos_ = (window_pos_ + 1) % window_.size();
}

void Sampler::reset(uint64_t seed) {
  for (size_t i = 0; i < window_len_; ++i) counts_[static_cast<size_t>(window_[i])] = 0;
  window_len_ = 0;
  window_pos_ = 0;
  rng_ = Xoshiro256(seed);
  params_.seed = seed;
}

TokenId Sampler::sample(std::span<const float> logits) {
  if (logits.size() != vocab_size_) return -1;
  const size_t n = vocab_size_;
  for (size_t i = 0; i < n; ++i) {
    float l = logits[i];
    cand_[i] = {std::isfinite(l) ? l : kNegInf, static_cast<TokenId>(i)};
  }
  // Penalties, once per distinct token in the window (cand_ is still indexed by id). The first visit of an id
  // marks its count with the top bit; the second pass clears the marks.
  constexpr uint32_t kVisited = 0x80000000u;
  const bool penalize =
      params_.repeat_penalty != 1.0f || params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f;
  if (penalize) {
    for (size_t i = 0; i < window_len_; ++i) {
      uint32_t& count = counts_[static_cast<size_t>(window_[i])];
      if (count & kVisited) continue;
      float& l = cand_[static_cast<size_t>(window_[i])].logit;
      if (l != kNegInf) {
        l = l > 0.0f ? l / params_.repeat_penalty : l * params_.repeat_penalty;
        l -= static_cast<float>(count) * params_.frequency_penalty + params_.presence_penalty;
      }
      count |= kVisited;
    }
    for (size_t i = 0; i < window_len_; ++i) counts_[static_cast<size_t>(window_[i])] &= ~kVisited;
  }
  auto better = [](const Candidate& a, const Candidate& b) {
    if (a.logit != b.logit) return a.logit > b.logit;
    return a.id < b.id;
  };
  if (params_.temperature <= 0.0f) {
    const Candidate* best = &cand_[0];
    for (size_t i = 1; i < n; ++i) {
      if (better(cand_[i], *best)) best = &cand_[i];
    }
    return best->id;
  }
  // Only as much of the candidate list is sorted as the cut-offs need: `sorted` leading entries are in final
  // order (logit desc, id asc) and everything after them ranks below them. With no cut-off at all nothing is
  // sorted and the draw walks the candidates in id order (equally deterministic).
  size_t size = n;
  size_t sorted = 0;
  auto sort_to = [&](size_t want) {  // extend the sorted prefix to at least `want` entries (of `size`)
    want = std::min(want, size);
    if (want <= sorted) return;
    std::partial_sort(cand_.begin() + static_cast<ptrdiff_t>(sorted), cand_.begin() + static_cast<ptrdiff_t>(want),
                      cand_.begin() + static_cast<ptrdiff_t>(size), better);
    sorted = want;
  };
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    sort_to(static_cast<size_t>(params_.top_k));
    size = sorted;
  }
  const bool cut_p = params_.top_p < 1.0f;
  const bool cut_min = params_.min_p > 0.0f;
  float top;
  if (cut_p || cut_min || sorted > 0) {
    sort_to(64);
    top = cand_[0].logit;
  } else {
    top = kNegInf;
    for (size_t i = 0; i < size; ++i) top = std::max(top, cand_[i].logit);
  }
  if (top == kNegInf) {  // every logit is -inf: the lowest id
    TokenId lowest = cand_[0].id;
    for (size_t i = 1; i < size; ++i) lowest = std::min(lowest, cand_[i].id);
    return lowest;
  }
  // top-p over the untempered distribution of the current set.
  if (cut_p) {
    double sum = 0.0;
    for (size_t i = 0; i < size; ++i) sum += std::exp(static_cast<double>(cand_[i].logit) - top);
    const double target = static_cast<double>(params_.top_p) * sum;
    double cum = 0.0;
    size_t i = 0;
    for (;;) {
      for (; i < sorted; ++i) {
        cum += std::exp(static_cast<double>(cand_[i].logit) - top);
        if (cum >= target) break;
      }
      if (i < sorted) {
        size = i + 1;
        break;
      }
      if (sorted >= size) break;  // rounding: keep everything
      sort_to(sorted * 4);
    }
  }
  // min-p: p_i >= min_p * p_max  <=>  logit_i >= top + log(min_p).
  if (cut_min) {
    const double cut = static_cast<double>(top) + std::log(static_cast<double>(params_.min_p));
    size_t keep = 1;
    for (;;) {
      while (keep < sorted && static_cast<double>(cand_[keep].logit) >= cut) ++keep;
      if (keep < sorted || sorted >= size) break;
      sort_to(sorted * 4);
    }
    size = std::min(size, keep);
  }
  // Temperature, softmax, one draw.
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  double sum = 0.0;
  for (size_t i = 0; i < size; ++i) {
    probs_[i] = std::exp((static_cast<double>(cand_[i].logit) - top) * inv_t);
    sum += probs_[i];
  }
  const double r = rng_.uniform() * sum;
  double cum = 0.0;
  for (size_t i = 0; i < size; ++i) {
    cum += probs_[i];
    if (r < cum) return cand_[i].id;
  }
  return cand_[size - 1].id;
}

// ---------------------------------------------------------------------------------------------------------

StopDetector::StopDetector(std::vector<std::string> stop_strings, size_t max_tokens) : max_tokens_(max_tokens) {
  for (std::string& s : stop_strings) {
    if (s.empty()) continue;
    max_stop_len_ = std::max(max_stop_len_, s.size());
    stops_.push_back(std::move(s));
  }
  held_.reserve(2 * max_stop_len_ + 256);
}

bool StopDetector::push(std::string_view piece, std::string& out) {
  if (reason_ != Reason::kNone) return true;
  ++n_tokens_;
  held_.append(piece);
  // A complete stop string: emit what precedes the earliest one.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) {
    size_t at = held_.find(s);
    if (at < first) first = at;
  }
  if (first != std::string::npos) {
    out.append(held_, 0, first);
    held_.clear();
    reason_ = Reason::kStopString;
    return true;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    size_t max_l = std::min(s.size() - 1, held_.size());
    for (size_t l = max_l; l > keep; --l) {
      if (held_.compare(held_.size() - l, l, s, 0, l) == 0) {
        keep = l;
        break;
      }
    }
  }
  out.append(held_, 0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  if (max_tokens_ != 0 && n_tokens_ >= max_tokens_) {
    out.append(held_);
    held_.clear();
    reason_ = Reason::kMaxTokens;
    return true;
  }
  return false;
}

void StopDetector::flush(std::string& out) {
  out.append(held_);
  held_.clear();
}

}  // namespace veil::sampling
