// sampling: choosing the next token from logits, and deciding when generation stops. Read this first.
//
// API in one screen:
//   SamplingParams p; p.temperature = 0.8f; p.top_k = 40; p.seed = 42;
//   auto s = Sampler::create(p, vocab_size);          // validates the parameters
//   TokenId id = s->sample(logits);                    // logits: one float per vocabulary entry
//   s->accept(id);                                     // record it for the repetition penalties
//   StopDetector stop({"\n\n", "User:"}, max_tokens);  // stop strings across streamed text + token limit
//   std::string out; bool done = stop.push(decoded_piece, out); ... if (!done) stop.flush(out);
//
// Pipeline of sample(), in this order: repetition / frequency / presence penalties over the last
// `penalty_last_n` accepted tokens -> (temperature <= 0: greedy argmax, ties to the lowest id) -> top-k ->
// top-p -> min-p -> temperature -> softmax -> one draw.
//   repetition (llama.cpp / CTRL rule): a logit of a token seen in the window is divided by `repeat_penalty` if
//   positive, multiplied if negative; frequency: minus count * frequency_penalty; presence: minus
//   presence_penalty once if seen.
//   top-k keeps the k highest (0 = all); top-p keeps the smallest prefix (by probability, descending) whose mass
//   reaches p (1 = all); min-p drops tokens whose probability is below min_p * the top probability (0 = off).
// Randomness: xoshiro256** seeded with SplitMix64(seed); the draw is a double in [0,1) from the top 53 bits.
// The same seed, parameters, logits and accepted tokens give the same ids on every platform (the candidate
// order is fully determined: ties broken by the lower id; probabilities in double).
//
// Allocation: create() reserves every buffer; sample() and accept() allocate nothing.
// Thread-safety: a Sampler or StopDetector belongs to one generation (one thread).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/core.h"

namespace veil::sampling {

using TokenId = int32_t;

struct SamplingParams {
  float temperature = 0.8f;    // <= 0: greedy
  int32_t top_k = 40;          // <= 0: off
  float top_p = 0.95f;         // >= 1: off
  float min_p = 0.05f;         // <= 0: off
  float repeat_penalty = 1.0f; // 1: off
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int32_t penalty_last_n = 64; // window of recent tokens for the penalties (0: off)
  uint64_t seed = 0;

  static SamplingParams greedy() {
    SamplingParams p;
    p.temperature = 0.0f;
    return p;
  }
};

// Deterministic PRNG: xoshiro256** (Blackman & Vigna), state from SplitMix64.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  // kInvalidArgument naming the parameter if a value is out of range (NaN, negative temperature is greedy,
  // top_p/min_p outside [0,1], penalties negative or non-finite) or vocab_size is 0.
  static Result<Sampler> create(const SamplingParams& params, size_t vocab_size);

  // Picks the next token. `logits.size()` must equal the vocabulary size (otherwise kNoToken-like -1 is
  // returned); non-finite logits are treated as -infinity. The logits are not modified.
  TokenId sample(std::span<const float> logits);
  // Records a generated (or prompt) token for the repetition penalties.
  void accept(TokenId id);
  // Forgets the penalty window and reseeds with `seed` (a new generation).
  void reset(uint64_t seed);

  const SamplingParams& params() const { return params_; }

 private:
  Sampler(const SamplingParams& params, size_t vocab_size);
  struct Candidate {
    float logit;
    TokenId id;
  };
  SamplingParams params_;
  size_t vocab_size_;
  Xoshiro256 rng_;
  std::vector<Candidate> cand_;
  std::vector<double> probs_;
  std::vector<TokenId> window_;   // ring buffer of the last penalty_last_n tokens
  size_t window_pos_ = 0;
  size_t window_len_ = 0;
  std::vector<uint32_t> counts_;  // occurrences in the window, per token (vocab_size entries)
};

// Stop strings on streamed text, and the token limit. push() takes the decoded text of one generated token and
// appends to `out` only the text that can no longer be part of a stop string: text that might be the start of
// one is held back until it is ruled out. When a stop string completes, the text before it is appended, the
// stop string and anything after are dropped, and push returns true. When `max_tokens` pushes have been made
// (0 = unlimited) push returns true after appending what it can. flush() appends the held-back text (call it
// when generation ends for another reason: EOG token or end of context).
class StopDetector {
 public:
  enum class Reason { kNone, kStopString, kMaxTokens };
  explicit StopDetector(std::vector<std::string> stop_strings, size_t max_tokens = 0);

  bool push(std::string_view piece, std::string& out);
  void flush(std::string& out);
  Reason reason() const { return reason_; }
  size_t tokens() const { return n_tokens_; }

 private:
  std::vector<std::string> stops_;
  size_t max_tokens_;
  size_t max_stop_len_ = 0;
  size_t n_tokens_ = 0;
  std::string held_;
  Reason reason_ = Reason::kNone;
};

}  // namespace veil::sampling
