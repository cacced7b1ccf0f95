// TEST ONLY: a deterministic, synthetic StepModel/TextCodec/sampler for exercising the scheduler and the
// HTTP layer without the real engine. Never shipped: it lives under tests/ and is linked only into tests.
//
// Vocabulary: ids 0..255 are byte tokens <0x00>..<0xFF>, 256 = BOS, 257 = EOS (a real tokenizer::Tokenizer built
// from that vocabulary detokenises, as in the shipped codec). The "model" puts all probability on the byte
// kScript[(pos + 1) % len] after the token at position `pos`, so greedy output depends only on positions
// and is easy to predict. It checks the scheduler's invariants on every forward pass: slot range, each
// slot's positions contiguous with its cached length, no slot twice in one batch.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "server/scheduler.h"

namespace veil::server::testing {

inline constexpr int32_t kBos = 256;
inline constexpr int32_t kEos = 257;
inline constexpr uint32_t kVocab = 258;
inline const std::string kScript = "Once upon a time there was a tiny synthetic model. ";

// The text greedy decoding produces for a prompt of `n_prompt` tokens and `n` new tokens.
inline std::string expected_text(size_t n_prompt, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += kScript[(n_prompt + i) % kScript.size()];
  return s;
}

struct FakeModelStats {
  std::mutex mu;
  size_t forwards = 0;
  size_t max_seqs = 0;
  size_t max_tokens_one_seq = 0;
  size_t steps_mixing_prefill_and_decode = 0;
  std::string violation;  // first invariant violation seen
  std::condition_variable cv;  // notified after every forward pass
  // Concurrency (models made with concurrent > 1): forward passes inside the model at once, the most seen, and a
  // rendezvous: until `rendezvous` passes have been inside together, each pass waits (bounded) for the others,
  // so a test can prove that lanes overlap without timing assumptions.
  size_t inside = 0;
  size_t max_inside = 0;
  size_t rendezvous = 0;
  // While `hold` is set, every forward pass waits (bounded) inside the model: a test queues several requests
  // before the scheduler's first step ends, so what it checks about batching does not depend on thread timing.
  bool hold = false;
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    hold = false;
    cv.notify_all();
  }
  // Waits (bounded) until at least `n` forward passes have run.
  bool wait_forwards(size_t n, std::chrono::seconds timeout = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return forwards >= n; });
  }
};

class FakeModel final : public StepModel {
 public:
  FakeModel(uint32_t ctx, uint32_t slots, std::shared_ptr<FakeModelStats> stats, uint32_t concurrent = 1)
      : ctx_(ctx), lengths_(slots, 0), stats_(std::move(stats)), concurrent_(concurrent) {}
  uint32_t max_concurrent_forwards() const override { return concurrent_; }
  uint32_t context_length() const override { return ctx_; }
  uint32_t vocab_size() const override { return kVocab; }
  uint32_t max_slots() const override { return static_cast<uint32_t>(lengths_.size()); }
  void reset_slot(uint32_t slot) override { lengths_.at(slot) = 0; }

  Status forward(std::span<const StepInput> batch, std::vector<float>& logits) override {
    std::set<uint32_t> seen;
    size_t n_logits = 0, decode = 0, prefill = 0;
    std::unique_lock<std::mutex> lock(stats_->mu);
    ++stats_->inside;
    stats_->max_inside = std::max(stats_->max_inside, stats_->inside);
    stats_->cv.notify_all();
    stats_->cv.wait_for(lock, std::chrono::seconds(10),
                        [&] { return stats_->max_inside >= stats_->rendezvous; });
    stats_->cv.wait_for(lock, std::chrono::seconds(10), [&] { return !stats_->hold; });
    struct Leave {
      FakeModelStats& s;
      ~Leave() { --s.inside; }
    } leave{*stats_};
    for (const auto& in : batch) {
      std::string bad;
      if (in.slot >= lengths_.size()) bad = "slot out of range";
      else if (!seen.insert(in.slot).second) bad = "slot twice in one batch";
      else if (in.pos0 != lengths_[in.slot]) bad = "positions not contiguous";
      else if (in.tokens.empty()) bad = "empty input";
      if (!bad.empty()) {
        if (stats_->violation.empty()) stats_->violation = bad;
        return make_error(ErrorCode::kInternal, "fake model: {}", bad);
      }
      lengths_[in.slot] += static_cast<uint32_t>(in.tokens.size());
      n_logits += in.want_logits;
      (in.tokens.size() == 1 && in.pos0 > 0 ? decode : prefill)++;
      stats_->max_tokens_one_seq = std::max(stats_->max_tokens_one_seq, in.tokens.size());
    }
    ++stats_->forwards;
    stats_->cv.notify_all();
    stats_->max_seqs = std::max(stats_->max_seqs, batch.size());
    if (decode > 0 && prefill > 0) ++stats_->steps_mixing_prefill_and_decode;
    logits.assign(n_logits * kVocab, 0.0f);
    size_t li = 0;
    for (const auto& in : batch) {
      if (!in.want_logits) continue;
      uint32_t pos = in.pos0 + static_cast<uint32_t>(in.tokens.size()) - 1;
      logits[li * kVocab + static_cast<uint8_t>(kScript[(pos + 1) % kScript.size()])] = 10.0f;
      ++li;
    }
    return ok_status();
  }

 private:
  uint32_t ctx_;
  std::vector<uint32_t> lengths_;
  std::shared_ptr<FakeModelStats> stats_;
  uint32_t concurrent_ = 1;
};

inline tokenizer::Tokenizer byte_tokenizer() {
  tokenizer::Vocab v;
  v.model = tokenizer::ModelKind::kLlama;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.tokens.emplace_back(name);
    v.types.push_back(tokenizer::TokenType::kByte);
  }
  v.tokens.emplace_back("<s>");
  v.types.push_back(tokenizer::TokenType::kControl);
  v.tokens.emplace_back("</s>");
  v.types.push_back(tokenizer::TokenType::kControl);
  v.bos = kBos;
  v.eos = kEos;
  v.add_space_prefix = 0;
  return std::move(tokenizer::Tokenizer::from_vocab(std::move(v))).value();
}

class FakeCodec final : public TextCodec {
 public:
  Result<std::vector<int32_t>> encode_prompt(const std::string& prompt) override {
    std::vector<int32_t> ids{kBos};
    for (unsigned char c : prompt) ids.push_back(c);
    return ids;
  }
  Result<std::vector<int32_t>> encode_chat(const std::vector<ChatMessage>& messages) override {
    std::string text;
    for (const auto& m : messages) text += m.role + ": " + m.content + "\n";
    text += "assistant: ";
    return encode_prompt(text);
  }
  tokenizer::StreamDecoder stream_decoder(std::span<const int32_t>) const override {
    return tokenizer::StreamDecoder(tok_);
  }
  bool is_end_of_generation(int32_t id) const override { return id == kEos; }

 private:
  tokenizer::Tokenizer tok_ = byte_tokenizer();
};

class ArgmaxSampler final : public TokenSampler {
 public:
  int32_t sample(std::span<float> logits) override {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
};

inline std::unique_ptr<BatchingBackend> make_fake_backend(uint32_t ctx, uint32_t slots, BatchingOptions options,
                                                          std::shared_ptr<FakeModelStats> stats,
                                                          uint32_t concurrent = 1) {
  options.max_slots = slots;
  return std::make_unique<BatchingBackend>(
      "veil-test-synthetic", std::make_unique<FakeModel>(ctx, slots, std::move(stats), concurrent),
      std::make_unique<FakeCodec>(),
      [](const SamplingOptions&) { return std::make_unique<ArgmaxSampler>(); }, options);
}

}  // namespace veil::server::testing
