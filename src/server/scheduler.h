// BatchingBackend: the continuous-batching scheduler behind the HTTP API.
//
// Worker threads ("lanes") run scheduler steps; each lane owns a share of the KV-cache slots and its own
// sequences, and runs its own forward passes. A model that can overlap forward passes (a pipeline front, where
// lane A's batch is in stage 1 while lane B's is in stage 0) gets several lanes; a model that cannot gets one.
// Each step of a lane:
//   1. drops cancelled sequences (their slots are free for this very step) and admits queued requests
//      into free slots, round-robin across client ids so one client cannot starve the others;
//   2. builds one batch: one decode token for every sequence that is generating, then prompt chunks
//      (at most `prefill_chunk` tokens per sequence) for sequences still prefilling, within
//      `step_token_budget` tokens, so a long prompt never stalls running streams for more than a chunk;
//   3. runs one StepModel::forward over the whole batch, samples, detokenises incrementally (the
//      tokenizer's StreamDecoder holds back incomplete UTF-8, so a character split over byte tokens is
//      never split across events; TextAssembler holds back text that might start a stop string) and
//      emits events. Streamed pieces concatenate to exactly the non-streamed text.
// The queue is bounded: submit() refuses with kResourceExhausted when it is full (HTTP 503).
//
// Thread-safety: BatchingBackend's public methods are safe from any thread. The StepModel is called from the
// lanes (concurrently only up to its max_concurrent_forwards(), always on disjoint slots); a sequence's sampler
// and detokeniser are used by its lane only; TextCodec's encode_* and stream_decoder are called from submitting
// threads (they must be safe concurrently with the lanes' decoding).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "server/backend.h"
#include "tokenizer/tokenizer.h"

namespace veil::server {

// One sequence's share of a batched forward pass.
struct StepInput {
  uint32_t slot = 0;                  // KV-cache slot, < StepModel::max_slots()
  std::span<const int32_t> tokens;    // tokens to append at positions pos0, pos0+1, ...
  uint32_t pos0 = 0;
  bool want_logits = false;           // logits of the last token are needed
};

class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual uint32_t context_length() const = 0;
  virtual uint32_t vocab_size() const = 0;
  virtual uint32_t max_slots() const = 0;
  // One forward pass over several sequences. `logits` is resized to vocab_size() floats per input with
  // want_logits, in batch order.
  virtual Status forward(std::span<const StepInput> batch, std::vector<float>& logits) = 0;
  // Forget a slot's KV cache (called before the slot is reused).
  virtual void reset_slot(uint32_t slot) = 0;
  // How many threads may call forward() / reset_slot() at once (on disjoint slots). 1: one thread at a time.
  virtual uint32_t max_concurrent_forwards() const { return 1; }
};

class TextCodec {
 public:
  virtual ~TextCodec() = default;
  virtual Result<std::vector<int32_t>> encode_prompt(const std::string& prompt) = 0;
  virtual Result<std::vector<int32_t>> encode_chat(const std::vector<ChatMessage>& messages) = 0;
  // The detokeniser for the tokens generated after `prompt`: the tokenizer's own StreamDecoder (whole UTF-8
  // characters only; the SentencePiece dummy-prefix space dropped after a BOS-only prompt, as `veil generate`
  // does). The tokenizer it points to lives as long as the codec.
  virtual tokenizer::StreamDecoder stream_decoder(std::span<const int32_t> prompt) const = 0;
  virtual bool is_end_of_generation(int32_t id) const = 0;
};

class TokenSampler {
 public:
  virtual ~TokenSampler() = default;
  // Picks the next token from raw logits (may modify them).
  virtual int32_t sample(std::span<float> logits) = 0;
};
using SamplerFactory = std::function<std::unique_ptr<TokenSampler>(const SamplingOptions&)>;

struct BatchingOptions {
  uint32_t max_slots = 16;          // concurrent sequences (clamped to StepModel::max_slots())
  uint32_t max_queue = 256;         // accepted requests waiting for a slot
  uint32_t prefill_chunk = 64;      // prompt tokens per sequence per step
  uint32_t step_token_budget = 256; // tokens per forward pass (decode tokens always fit)
  uint32_t lanes = 0;               // worker threads; 0 = the model's max_concurrent_forwards() (clamped to it
                                    // and to max_slots)
};

class BatchingBackend final : public GenerationBackend {
 public:
  BatchingBackend(std::string model_id, std::unique_ptr<StepModel> model, std::unique_ptr<TextCodec> codec,
                  SamplerFactory samplers, BatchingOptions options);
  ~BatchingBackend() override;
  BatchingBackend(const BatchingBackend&) = delete;
  BatchingBackend& operator=(const BatchingBackend&) = delete;

  const std::string& model_id() const override;
  uint32_t context_length() const override;
  Result<std::vector<int32_t>> tokenize_prompt(const std::string& prompt) override;
  Result<std::vector<int32_t>> tokenize_chat(const std::vector<ChatMessage>& messages) override;
  Result<std::shared_ptr<GenerationHandle>> submit(const GenerationRequest& request, std::vector<int32_t> prompt_ids,
                                                   EventSink sink) override;
  BackendStats stats() const override;
  void shutdown(std::chrono::milliseconds grace) override;

  // Counters for tests and /metrics: forward passes run, and the most sequences seen in one pass.
  uint64_t steps() const;
  uint32_t max_batch_sequences() const;
  // Worker threads in use (BatchingOptions::lanes after clamping).
  uint32_t lanes() const;
  // Waits (bounded) until no sequence holds a slot and none is queued; false on timeout.
  bool wait_idle(std::chrono::milliseconds timeout) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Incremental text for one sequence: generated token ids in, emittable UTF-8 out. Detokenising is the
// tokenizer's StreamDecoder (one implementation for `veil generate` and the server); this class adds stop
// strings. Stop strings are valid UTF-8, so holding back a prefix of one never splits a character. Public
// for tests.
class TextAssembler {
 public:
  TextAssembler(tokenizer::StreamDecoder decoder, std::vector<std::string> stop)
      : decoder_(std::move(decoder)), stop_(std::move(stop)) {}
  // Adds a generated token; returns the text that can be emitted now. Sets stopped() when a stop string
  // appeared (the stop string and everything after it are dropped).
  std::string push(int32_t id);
  // Remaining text at the end of generation (an incomplete UTF-8 tail becomes U+FFFD).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::string push_text(std::string text);  // complete UTF-8 in, stop strings applied

  tokenizer::StreamDecoder decoder_;
  std::vector<std::string> stop_;
  std::string pending_;  // complete UTF-8 not yet emitted (may start a stop string)
  bool stopped_ = false;
};

}  // namespace veil::server
