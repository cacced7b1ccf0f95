// The generation backend: the one interface between the HTTP layer and inference.
//
//   HTTP handler --(GenerationRequest, prompt token ids)--> GenerationBackend::submit()
//                <--(GenerationEvent: text piece ... finish + usage)-- EventSink (any thread)
//                --cancel()--> (frees the sequence's slot at the next scheduler step)
//
// The shipped implementation is BatchingBackend (scheduler.h): continuous batching over a StepModel.
// Tests may implement StepModel/TextCodec with deterministic fakes; no fake is ever shipped.
//
// Thread-safety: every method of a GenerationBackend is safe to call from any thread. Sinks are
// called from the backend's worker thread, in order, never concurrently for one request, and must
// not block; exactly one event with finish set ends every accepted request.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"

namespace veil::server {

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

struct SamplingOptions {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
};

struct GenerationRequest {
  uint32_t max_tokens = 16;
  std::vector<std::string> stop;  // up to 4, each non-empty
  SamplingOptions sampling;
  std::string client_id;          // fairness key (the API key id); never logged with content
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", "cancelled", "error"

struct Usage {
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
};

struct GenerationEvent {
  std::string text;                           // a piece of valid UTF-8 (may be empty)
  FinishReason finish = FinishReason::kNone;  // set on the last event only
  Usage usage;                                // final on the last event
  std::string error;                          // when finish == kError: a content-free reason
};

using EventSink = std::function<void(GenerationEvent&&)>;

// A handle on one accepted request. Destroying it does not cancel; call cancel().
class GenerationHandle {
 public:
  virtual ~GenerationHandle() = default;
  virtual void cancel() = 0;
  virtual uint64_t id() const = 0;
  // Backpressure: a paused sequence keeps its slot but is left out of forward passes until resumed
  // (the connection pauses it while the client is not reading fast enough).
  virtual void set_paused(bool paused) = 0;
};

struct BackendStats {
  size_t running = 0;   // sequences holding a slot
  size_t queued = 0;    // accepted, waiting for a slot
  size_t max_slots = 0;
  size_t max_queue = 0;
  uint64_t forward_passes = 0;        // batched forward passes run so far
  uint64_t forward_sequences = 0;     // sequences summed over those passes (/ passes = mean batch)
  size_t lanes = 1;                   // forward passes that may be in flight at once (pipeline: up to one per stage)
};

class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  virtual const std::string& model_id() const = 0;
  virtual uint32_t context_length() const = 0;
  // Prompt -> token ids (BOS added as the model expects). kInvalidArgument on unusable input.
  virtual Result<std::vector<int32_t>> tokenize_prompt(const std::string& prompt) = 0;
  // Applies the model's chat template, then tokenizes.
  virtual Result<std::vector<int32_t>> tokenize_chat(const std::vector<ChatMessage>& messages) = 0;
  // Accepts a request or refuses it: kResourceExhausted when the queue is full, kUnavailable when
  // shutting down, kInvalidArgument when prompt + max_tokens exceeds the context.
  virtual Result<std::shared_ptr<GenerationHandle>> submit(const GenerationRequest& request,
                                                           std::vector<int32_t> prompt_ids, EventSink sink) = 0;
  virtual BackendStats stats() const = 0;
  // Stops accepting; requests in flight finish (drain) or, after `grace`, end with kCancelled.
  virtual void shutdown(std::chrono::milliseconds grace) = 0;
};

}  // namespace veil::server
