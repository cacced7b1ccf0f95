#include "server/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace veil::server {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

// ---- TextAssembler ----------------------------------------------------------------------------

std::string TextAssembler::push(int32_t id) {
  if (stopped_) return {};
  return push_text(decoder_.push(id));
}

std::string TextAssembler::push_text(std::string text) {
  pending_ += text;
  size_t best = std::string::npos;
  for (const auto& s : stop_) {
    size_t at = pending_.find(s);
    if (at < best) best = at;
  }
  if (best != std::string::npos) {
    std::string out = pending_.substr(0, best);
    pending_.clear();
    stopped_ = true;
    return out;
  }
  size_t hold = 0;
  for (const auto& s : stop_) {
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string TextAssembler::flush() {
  if (stopped_) return {};
  std::string out = push_text(decoder_.flush());  // the decoder's tail may still complete a stop string
  if (stopped_) return out;
  out += pending_;
  pending_.clear();
  return out;
}

// ---- BatchingBackend ----------------------------------------------------------------------------

namespace {

class Handle final : public GenerationHandle {
 public:
  Handle(uint64_t id, std::function<void()> wake) : id_(id), wake_(std::move(wake)) {}
  void cancel() override {
    cancelled_.store(true, std::memory_order_release);
    wake_();
  }
  uint64_t id() const override { return id_; }
  void set_paused(bool paused) override {
    paused_.store(paused, std::memory_order_release);
    if (!paused) wake_();
  }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  bool paused() const { return paused_.load(std::memory_order_acquire); }

 private:
  uint64_t id_;
  std::function<void()> wake_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> paused_{false};
};

struct Sequence {
  uint64_t id = 0;
  std::string client;
  GenerationRequest request;
  std::vector<int32_t> prompt;
  EventSink sink;
  std::shared_ptr<Handle> handle;
  std::unique_ptr<TokenSampler> sampler;
  std::unique_ptr<TextAssembler> text;
  uint32_t slot = 0;
  uint32_t prefilled = 0;   // prompt tokens already in the KV cache
  uint32_t generated = 0;
  int32_t last_token = 0;   // the token to feed at the next decode step
  bool done = false;
};

// One worker thread with its share of the slots and the sequences admitted into them. `active` is the lane's
// own; `free_slots` and `running` are guarded by Impl::mu (admission compares the lanes).
struct Lane {
  uint32_t index = 0;
  std::vector<std::unique_ptr<Sequence>> active;
  std::vector<uint32_t> free_slots;
  size_t running = 0;
  std::thread thread;
};

}  // namespace

struct BatchingBackend::Impl {
  std::string model_id;
  std::unique_ptr<StepModel> model;
  std::unique_ptr<TextCodec> codec;
  SamplerFactory samplers;
  BatchingOptions options;
  uint32_t ctx = 0;
  uint32_t vocab = 0;

  mutable std::mutex mu;
  std::condition_variable cv;       // wakes the lanes
  std::condition_variable idle_cv;  // signals shutdown() when everything has drained
  std::map<std::string, std::deque<std::unique_ptr<Sequence>>> queued_by_client;
  std::deque<std::string> rotation;  // clients with queued requests, in round-robin order
  size_t queued = 0;
  size_t running = 0;
  bool stopping = false;
  bool force_stop = false;
  uint64_t wakes = 0;  // bumped when a handle is cancelled or resumed
  uint64_t next_id = 1;
  std::atomic<uint64_t> steps{0};
  std::atomic<uint32_t> max_batch{0};
  std::atomic<uint64_t> batched_sequences{0};
  std::vector<std::unique_ptr<Lane>> lanes;

  void finish(Sequence& s, FinishReason reason, std::string error = {}) {
    GenerationEvent ev;
    if (reason == FinishReason::kStop || reason == FinishReason::kLength) ev.text = s.text->flush();
    ev.finish = reason;
    ev.usage.prompt_tokens = static_cast<uint32_t>(s.prompt.size());
    ev.usage.completion_tokens = s.generated;
    ev.error = std::move(error);
    s.sink(std::move(ev));
    s.done = true;
  }

  // Accepts the sampled token; finishes the sequence when it is done.
  void on_token(Sequence& s, int32_t tok) {
    if (tok < 0 || static_cast<uint32_t>(tok) >= vocab) {
      finish(s, FinishReason::kError, "the sampler returned no token");
      return;
    }
    if (codec->is_end_of_generation(tok)) {
      finish(s, FinishReason::kStop);
      return;
    }
    ++s.generated;
    std::string piece = s.text->push(tok);
    if (!piece.empty()) {
      GenerationEvent ev;
      ev.text = std::move(piece);
      s.sink(std::move(ev));
    }
    if (s.text->stopped()) {
      finish(s, FinishReason::kStop);
      return;
    }
    uint32_t pos = static_cast<uint32_t>(s.prompt.size()) + s.generated - 1;  // where tok would go
    if (s.generated >= s.request.max_tokens || pos >= ctx) {
      finish(s, FinishReason::kLength);
      return;
    }
    s.last_token = tok;
  }

  // A lane takes the next queued request only while no other lane with a free slot runs fewer sequences, so
  // concurrent requests spread over the lanes (and so over the stages of a pipeline).
  bool may_admit_locked(const Lane& lane) const {
    if (lane.free_slots.empty() || rotation.empty()) return false;
    for (const auto& other : lanes) {
      if (other.get() != &lane && !other->free_slots.empty() && other->running < lane.running) return false;
    }
    return true;
  }

  // Moves queued requests into the lane's free slots; returns the slots to reset before their first step.
  std::vector<uint32_t> admit_locked(Lane& lane) {
    std::vector<uint32_t> fresh;
    while (may_admit_locked(lane)) {
      std::string client = std::move(rotation.front());
      rotation.pop_front();
      auto it = queued_by_client.find(client);
      auto seq = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) {
        queued_by_client.erase(it);
      } else {
        rotation.push_back(client);
      }
      --queued;
      seq->slot = lane.free_slots.back();
      lane.free_slots.pop_back();
      fresh.push_back(seq->slot);
      ++running;
      ++lane.running;
      lane.active.push_back(std::move(seq));
    }
    return fresh;
  }

  // Removes the lane's finished sequences, frees their slots. Takes the lock.
  void reap(Lane& lane) {
    std::vector<uint32_t> freed;
    for (auto& s : lane.active) {
      if (s->done) {
        freed.push_back(s->slot);
        s.reset();
      }
    }
    if (freed.empty()) return;
    lane.active.erase(std::remove(lane.active.begin(), lane.active.end(), nullptr), lane.active.end());
    std::lock_guard<std::mutex> lock(mu);
    lane.free_slots.insert(lane.free_slots.end(), freed.begin(), freed.end());
    running -= freed.size();
    lane.running -= freed.size();
    if (running == 0 && queued == 0) idle_cv.notify_all();
    if (queued > 0) cv.notify_all();  // another lane may now be the one to admit
  }

  void cancel_queued_locked(bool all) {
    for (auto it = queued_by_client.begin(); it != queued_by_client.end();) {
      auto& q = it->second;
      for (auto qi = q.begin(); qi != q.end();) {
        if (all || (*qi)->handle->cancelled()) {
          finish(**qi, FinishReason::kCancelled);
          qi = q.erase(qi);
          --queued;
        } else {
          ++qi;
        }
      }
      if (q.empty()) {
        rotation.erase(std::remove(rotation.begin(), rotation.end(), it->first), rotation.end());
        it = queued_by_client.erase(it);
      } else {
        ++it;
      }
    }
  }

  // One step's batch: a decode token for every generating sequence, then prompt chunks within the budget.
  struct Batch {
    std::vector<StepInput> inputs;
    std::vector<Sequence*> seqs;
    std::vector<int32_t> decode_tokens;
  };

  void build_batch(Lane& lane, Batch& b) {
    b.inputs.clear();
    b.seqs.clear();
    b.decode_tokens.assign(lane.active.size(), 0);
    size_t n_decode = 0;
    for (auto& s : lane.active) {
      if (s->prefilled < s->prompt.size() || s->handle->paused()) continue;
      b.decode_tokens[n_decode] = s->last_token;
      StepInput in;
      in.slot = s->slot;
      in.tokens = std::span<const int32_t>(&b.decode_tokens[n_decode], 1);
      in.pos0 = static_cast<uint32_t>(s->prompt.size()) + s->generated - 1;
      in.want_logits = true;
      b.inputs.push_back(in);
      b.seqs.push_back(s.get());
      ++n_decode;
    }
    size_t budget = options.step_token_budget > n_decode ? options.step_token_budget - n_decode : 0;
    for (auto& s : lane.active) {
      if (s->prefilled >= s->prompt.size() || s->handle->paused()) continue;
      size_t left = s->prompt.size() - s->prefilled;
      size_t n = std::min<size_t>({left, options.prefill_chunk, budget});
      if (n == 0) {
        if (!b.inputs.empty()) break;
        n = std::min<size_t>(left, std::max<uint32_t>(1, options.prefill_chunk));  // always make progress
      }
      StepInput in;
      in.slot = s->slot;
      in.tokens = std::span<const int32_t>(s->prompt.data() + s->prefilled, n);
      in.pos0 = s->prefilled;
      in.want_logits = (n == left);
      b.inputs.push_back(in);
      b.seqs.push_back(s.get());
      budget -= std::min(budget, n);
    }
  }

  // Runs the forward pass, samples and emits; a failed pass finishes every sequence of the batch with an error.
  void step(Batch& b, std::vector<float>& logits) {
    Status st = ok_status();
    try {
      st = model->forward(b.inputs, logits);
    } catch (const std::exception& e) {
      st = make_error(ErrorCode::kInternal, "forward pass threw: {}", e.what());
    }
    steps.fetch_add(1, std::memory_order_relaxed);
    uint32_t nseq = static_cast<uint32_t>(b.inputs.size());
    batched_sequences.fetch_add(nseq, std::memory_order_relaxed);
    uint32_t seen = max_batch.load(std::memory_order_relaxed);
    while (nseq > seen && !max_batch.compare_exchange_weak(seen, nseq, std::memory_order_relaxed)) {
    }
    if (!st.ok()) {
      spdlog::error("scheduler: forward pass over {} sequences failed: {}", b.inputs.size(), st.error().message());
      // A pipeline stage that timed out or went away is named to the client (content-free); other failures stay generic.
      ErrorCode code = st.error().code();
      std::string why = code == ErrorCode::kUnavailable || code == ErrorCode::kTimeout
                            ? "inference failed: " + st.error().message()
                            : "inference failed";
      for (auto* s : b.seqs) finish(*s, FinishReason::kError, why);
      return;
    }
    size_t li = 0;
    for (size_t i = 0; i < b.inputs.size(); ++i) {
      Sequence& s = *b.seqs[i];
      bool prefill = s.prefilled < s.prompt.size();
      if (prefill) s.prefilled += static_cast<uint32_t>(b.inputs[i].tokens.size());
      if (!b.inputs[i].want_logits) continue;
      std::span<float> row(logits.data() + li * vocab, vocab);
      ++li;
      if (s.handle->cancelled()) {
        finish(s, FinishReason::kCancelled);
        continue;
      }
      on_token(s, s.sampler->sample(row));
    }
  }

  void run(Lane& lane) {
    Batch batch;
    std::vector<float> logits;
    for (;;) {
      uint64_t seen_wakes = 0;
      std::vector<uint32_t> fresh;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] {
          return force_stop || !lane.active.empty() || (queued > 0 && may_admit_locked(lane)) ||
                 (stopping && queued == 0);
        });
        seen_wakes = wakes;
        cancel_queued_locked(force_stop);
        if (force_stop) {
          for (auto& s : lane.active) finish(*s, FinishReason::kCancelled);
        } else {
          fresh = admit_locked(lane);
        }
        if (queued == 0 && running == 0) idle_cv.notify_all();
      }
      for (uint32_t slot : fresh) model->reset_slot(slot);
      for (auto& s : lane.active) {
        if (!s->done && s->handle->cancelled()) finish(*s, FinishReason::kCancelled);
      }
      reap(lane);
      if (lane.active.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        if (force_stop || (stopping && queued == 0)) return;
        continue;
      }
      build_batch(lane, batch);
      if (batch.inputs.empty()) {
        // Every sequence is paused by its connection: wait for a resume, a cancel or new work.
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return wakes != seen_wakes || force_stop || (queued > 0 && may_admit_locked(lane)); });
        continue;
      }
      step(batch, logits);
      reap(lane);
    }
  }

  void wake() {
    {
      std::lock_guard<std::mutex> lock(mu);
      ++wakes;
    }
    cv.notify_all();
  }
};

BatchingBackend::BatchingBackend(std::string model_id, std::unique_ptr<StepModel> model,
                                 std::unique_ptr<TextCodec> codec, SamplerFactory samplers, BatchingOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->model_id = std::move(model_id);
  impl_->model = std::move(model);
  impl_->codec = std::move(codec);
  impl_->samplers = std::move(samplers);
  impl_->ctx = impl_->model->context_length();
  impl_->vocab = impl_->model->vocab_size();
  options.max_slots = std::max<uint32_t>(1, std::min(options.max_slots, impl_->model->max_slots()));
  options.prefill_chunk = std::max<uint32_t>(1, options.prefill_chunk);
  uint32_t lanes = options.lanes == 0 ? impl_->model->max_concurrent_forwards() : options.lanes;
  lanes = std::clamp<uint32_t>(lanes, 1, std::min(std::max<uint32_t>(1, impl_->model->max_concurrent_forwards()),
                                                  options.max_slots));
  options.lanes = lanes;
  impl_->options = options;
  for (uint32_t i = 0; i < lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->index = i;
    // Lane i owns the slots congruent to i; the lowest are handed out first.
    for (uint32_t slot = options.max_slots; slot-- > 0;) {
      if (slot % lanes == i) lane->free_slots.push_back(slot);
    }
    impl_->lanes.push_back(std::move(lane));
  }
  for (auto& lane : impl_->lanes) {
    Lane* l = lane.get();
    l->thread = std::thread([this, l] { impl_->run(*l); });
  }
}

BatchingBackend::~BatchingBackend() { shutdown(std::chrono::milliseconds(0)); }

const std::string& BatchingBackend::model_id() const { return impl_->model_id; }
uint32_t BatchingBackend::context_length() const { return impl_->ctx; }

Result<std::vector<int32_t>> BatchingBackend::tokenize_prompt(const std::string& prompt) {
  return impl_->codec->encode_prompt(prompt);
}

Result<std::vector<int32_t>> BatchingBackend::tokenize_chat(const std::vector<ChatMessage>& messages) {
  return impl_->codec->encode_chat(messages);
}

Result<std::shared_ptr<GenerationHandle>> BatchingBackend::submit(const GenerationRequest& request,
                                                                  std::vector<int32_t> prompt_ids, EventSink sink) {
  if (prompt_ids.empty()) return make_error(ErrorCode::kInvalidArgument, "the prompt has no tokens");
  if (prompt_ids.size() >= impl_->ctx) {
    return make_error(ErrorCode::kResourceExhausted, "the prompt has {} tokens; the context holds {}",
                      prompt_ids.size(), impl_->ctx);
  }
  if (request.max_tokens == 0) return make_error(ErrorCode::kInvalidArgument, "max_tokens must be at least 1");
  for (int32_t id : prompt_ids) {
    if (id < 0 || static_cast<uint32_t>(id) >= impl_->vocab) {
      return make_error(ErrorCode::kInvalidArgument, "a prompt token id is outside the vocabulary");
    }
  }
  auto seq = std::make_unique<Sequence>();
  seq->client = request.client_id;
  seq->request = request;
  seq->prompt = std::move(prompt_ids);
  seq->sink = std::move(sink);
  seq->sampler = impl_->samplers(request.sampling);
  if (!seq->sampler) return make_error(ErrorCode::kInvalidArgument, "the sampling parameters are not valid");
  seq->text = std::make_unique<TextAssembler>(impl_->codec->stream_decoder(seq->prompt), request.stop);
  std::shared_ptr<Handle> handle;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopping) return make_error(ErrorCode::kUnavailable, "the server is shutting down");
    if (impl_->queued >= impl_->options.max_queue) {
      return make_error(ErrorCode::kResourceExhausted, "the request queue is full ({} waiting)", impl_->queued);
    }
    seq->id = impl_->next_id++;
    Impl* im = impl_.get();
    handle = std::make_shared<Handle>(seq->id, [im] { im->wake(); });
    seq->handle = handle;
    auto& q = impl_->queued_by_client[seq->client];
    if (q.empty()) impl_->rotation.push_back(seq->client);
    q.push_back(std::move(seq));
    ++impl_->queued;
  }
  impl_->cv.notify_all();
  return std::shared_ptr<GenerationHandle>(handle);
}

BackendStats BatchingBackend::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  BackendStats s;
  s.running = impl_->running;
  s.queued = impl_->queued;
  s.max_slots = impl_->options.max_slots;
  s.max_queue = impl_->options.max_queue;
  s.forward_passes = impl_->steps.load();
  s.forward_sequences = impl_->batched_sequences.load();
  s.lanes = impl_->options.lanes;
  return s;
}

void BatchingBackend::shutdown(std::chrono::milliseconds grace) {
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
    impl_->cv.notify_all();
    impl_->idle_cv.wait_for(lock, grace, [&] { return impl_->running == 0 && impl_->queued == 0; });
    impl_->force_stop = true;
  }
  impl_->cv.notify_all();
  for (auto& lane : impl_->lanes) {
    if (lane->thread.joinable()) lane->thread.join();
  }
}

bool BatchingBackend::wait_idle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->idle_cv.wait_for(lock, timeout, [&] { return impl_->running == 0 && impl_->queued == 0; });
}

uint64_t BatchingBackend::steps() const { return impl_->steps.load(); }
uint32_t BatchingBackend::max_batch_sequences() const { return impl_->max_batch.load(); }
uint32_t BatchingBackend::lanes() const { return impl_->options.lanes; }

}  // namespace veil::server
