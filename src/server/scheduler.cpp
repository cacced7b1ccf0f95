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
  std::condition_variable cv;       // wakes the worker
  std::condition_variable idle_cv;  // signals shutdown() when everything has drained
  std::map<std::string, std::deque<std::unique_ptr<Sequence>>> queued_by_client;
  std::deque<std::string> rotation;  // clients with queued requests, in round-robin order
  size_t queued = 0;
  size_t running = 0;
  bool stopping = false;
  bool force_stop = false;
  bool woken = false;  // a handle was cancelled or resumed
  uint64_t next_id = 1;
  std::atomic<uint64_t> steps{0};
  std::atomic<uint32_t> max_batch{0};
  std::atomic<uint64_t> batched_sequences{0};

  std::vector<std::unique_ptr<Sequence>> active;  // worker thread only
  std::vector<uint32_t> free_slots;                // worker thread only
  std::thread worker;

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

  void admit_locked() {
    while (!free_slots.empty() && !rotation.empty()) {
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
      seq->slot = free_slots.back();
      free_slots.pop_back();
      model->reset_slot(seq->slot);
      ++running;
      active.push_back(std::move(seq));
    }
  }

  // Removes finished sequences, frees their slots. Takes the lock.
  void reap() {
    size_t removed = 0;
    for (auto& s : active) {
      if (s->done) {
        free_slots.push_back(s->slot);
        s.reset();
        ++removed;
      }
    }
    if (removed == 0) return;
    active.erase(std::remove(active.begin(), active.end(), nullptr), active.end());
    std::lock_guard<std::mutex> lock(mu);
    running -= removed;
    if (running == 0 && queued == 0) idle_cv.notify_all();
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

  void run() {
    std::vector<StepInput> batch;
    std::vector<Sequence*> batch_seqs;
    std::vector<int32_t> decode_tokens;
    std::vector<float> logits;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return force_stop || !active.empty() || (queued > 0 && !free_slots.empty()) ||
                                   (stopping && queued == 0 && active.empty()); });
        woken = false;
        cancel_queued_locked(force_stop);
        if (force_stop) {
          for (auto& s : active) finish(*s, FinishReason::kCancelled);
        } else {
          admit_locked();
        }
        if (queued == 0 && active.empty()) idle_cv.notify_all();
      }
      for (auto& s : active) {
        if (!s->done && s->handle->cancelled()) finish(*s, FinishReason::kCancelled);
      }
      reap();
      if (active.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        if (force_stop || (stopping && queued == 0)) return;
        continue;
      }

      // Build the batch: decode tokens first, then prompt chunks within the budget.
      batch.clear();
      batch_seqs.clear();
      decode_tokens.assign(active.size(), 0);
      size_t n_decode = 0;
      for (auto& s : active) {
        if (s->prefilled < s->prompt.size() || s->handle->paused()) continue;
        decode_tokens[n_decode] = s->last_token;
        StepInput in;
        in.slot = s->slot;
        in.tokens = std::span<const int32_t>(&decode_tokens[n_decode], 1);
        in.pos0 = static_cast<uint32_t>(s->prompt.size()) + s->generated - 1;
        in.want_logits = true;
        batch.push_back(in);
        batch_seqs.push_back(s.get());
        ++n_decode;
      }
      size_t budget = options.step_token_budget > n_decode ? options.step_token_budget - n_decode : 0;
      for (auto& s : active) {
        if (s->prefilled >= s->prompt.size() || s->handle->paused()) continue;
        size_t left = s->prompt.size() - s->prefilled;
        size_t n = std::min<size_t>({left, options.prefill_chunk, budget});
        if (n == 0) {
          if (!batch.empty()) break;
          n = std::min<size_t>(left, std::max<uint32_t>(1, options.prefill_chunk));  // always make progress
        }
        StepInput in;
        in.slot = s->slot;
        in.tokens = std::span<const int32_t>(s->prompt.data() + s->prefilled, n);
        in.pos0 = s->prefilled;
        in.want_logits = (n == left);
        batch.push_back(in);
        batch_seqs.push_back(s.get());
        budget -= std::min(budget, n);
      }

      if (batch.empty()) {
        // Every sequence is paused by its connection: wait for a resume, a cancel or new work.
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return woken || force_stop || (queued > 0 && !free_slots.empty()); });
        continue;
      }
      Status st = ok_status();
      try {
        st = model->forward(batch, logits);
      } catch (const std::exception& e) {
        st = make_error(ErrorCode::kInternal, "forward pass threw: {}", e.what());
      }
      steps.fetch_add(1, std::memory_order_relaxed);
      uint32_t nseq = static_cast<uint32_t>(batch.size());
      batched_sequences.fetch_add(nseq, std::memory_order_relaxed);
      if (nseq > max_batch.load(std::memory_order_relaxed)) max_batch.store(nseq, std::memory_order_relaxed);
      if (!st.ok()) {
        spdlog::error("scheduler: forward pass over {} sequences failed: {}", batch.size(), st.error().message());
        // A pipeline stage that timed out or went away is named to the client (content-free); other failures stay generic.
        ErrorCode code = st.error().code();
        std::string why = code == ErrorCode::kUnavailable || code == ErrorCode::kTimeout
                              ? "inference failed: " + st.error().message()
                              : "inference failed";
        for (auto* s : batch_seqs) finish(*s, FinishReason::kError, why);
        reap();
        continue;
      }
      size_t li = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        Sequence& s = *batch_seqs[i];
        bool prefill = s.prefilled < s.prompt.size();
        if (prefill) s.prefilled += static_cast<uint32_t>(batch[i].tokens.size());
        if (!batch[i].want_logits) continue;
        std::span<float> row(logits.data() + li * vocab, vocab);
        ++li;
        if (s.handle->cancelled()) {
          finish(s, FinishReason::kCancelled);
          continue;
        }
        on_token(s, s.sampler->sample(row));
      }
      reap();
    }
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
  impl_->options = options;
  for (uint32_t i = options.max_slots; i > 0; --i) impl_->free_slots.push_back(i - 1);
  impl_->worker = std::thread([this] { impl_->run(); });
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
    handle = std::make_shared<Handle>(seq->id, [im] {
      {
        std::lock_guard<std::mutex> lock(im->mu);
        im->woken = true;
      }
      im->cv.notify_one();
    });
    seq->handle = handle;
    auto& q = impl_->queued_by_client[seq->client];
    if (q.empty()) impl_->rotation.push_back(seq->client);
    q.push_back(std::move(seq));
    ++impl_->queued;
  }
  impl_->cv.notify_one();
  return std::shared_ptr<GenerationHandle>(handle);
}

BackendStats BatchingBackend::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return BackendStats{impl_->running,      impl_->queued,
                      impl_->options.max_slots, impl_->options.max_queue,
                      impl_->steps.load(),  impl_->batched_sequences.load()};
}

void BatchingBackend::shutdown(std::chrono::milliseconds grace) {
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
    impl_->cv.notify_one();
    impl_->idle_cv.wait_for(lock, grace, [&] { return impl_->running == 0 && impl_->queued == 0; });
    impl_->force_stop = true;
  }
  impl_->cv.notify_one();
  if (impl_->worker.joinable()) impl_->worker.join();
}

bool BatchingBackend::wait_idle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->idle_cv.wait_for(lock, timeout, [&] { return impl_->running == 0 && impl_->queued == 0; });
}

uint64_t BatchingBackend::steps() const { return impl_->steps.load(); }
uint32_t BatchingBackend::max_batch_sequences() const { return impl_->max_batch.load(); }

}  // namespace veil::server
