// PipelineStepModel: the front's StepModel over attested stages (runtime.h, docs/pipeline.md).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "pipeline/runtime.h"

namespace veil::pipeline {

using namespace std::chrono_literals;
using channel::Clock;
using channel::Deadline;

namespace {

// One stage as the front sees it. `mu` serialises the forward path, resets and health checks on the channel.
struct StageLink {
  const StageSpec* spec = nullptr;
  channel::Endpoint endpoint;
  channel::ChannelOptions options;  // with this stage's verifier
  std::mutex mu;
  std::unique_ptr<channel::Channel> ch;
  StageInfo info;  // as reported at the first connection; later sessions must match it
  bool ever_connected = false;
  uint64_t reconnects = 0;
  std::string last_error;

  Error named(const Error& e) const {
    return Error(e.code(), fmt::format("pipeline stage {} ({}): {}", spec->index, spec->endpoint, e.message()));
  }
  void drop(const Error& e) {
    if (ch) {
      ch->abort();
      ch.reset();
      spdlog::warn("pipeline: stage {} ({}) dropped: {}", spec->index, spec->endpoint, e.message());
    }
    last_error = e.message();
  }
};

std::chrono::milliseconds until(Deadline d) {
  return std::max(0ms, std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()));
}

}  // namespace

struct PipelineStepModel::Impl {
  ShardManifest manifest;
  FrontOptions options;
  std::vector<std::unique_ptr<StageLink>> links;
  uint32_t n_embd = 0, n_vocab = 0, n_ctx = 0, slots = 0;
  std::atomic<uint64_t> next_request{1};
  std::atomic<uint64_t> next_ping{1};
  std::mutex health_mu;
  std::condition_variable health_cv;
  bool stopping = false;
  std::thread health_thread;

  // Checks what a stage reports against the manifest and, after the first session, against its first report.
  Status check_info(const StageLink& l, const StageInfo& got) const {
    const StageSpec& s = *l.spec;
    if (got.stage_index != s.index || got.layer_begin != s.layer_begin || got.layer_end != s.layer_end ||
        got.n_layers != manifest.n_layers || got.n_embd == 0 || got.n_vocab == 0 || got.n_ctx == 0 ||
        got.max_slots == 0) {
      return make_error(ErrorCode::kSecurity, "reports stage {} layers [{}, {}) of {}, the manifest says stage {} [{}, {}) of {}",
                        got.stage_index, got.layer_begin, got.layer_end, got.n_layers, s.index, s.layer_begin,
                        s.layer_end, manifest.n_layers);
    }
    if (l.ever_connected && !(got == l.info)) {
      return make_error(ErrorCode::kSecurity, "came back with other shapes (embedding, vocabulary, context or slots)");
    }
    return ok_status();
  }

  // Connect (with retries, within `deadline`), verify the evidence in the handshake, exchange hello/info.
  Status connect_link(StageLink& l, Deadline deadline, int max_attempts = 0) {
    channel::RetryPolicy p = options.retry;
    if (max_attempts > 0) p.max_attempts = max_attempts;
    p.overall_timeout = std::min(p.overall_timeout, until(deadline));
    auto ch = channel::connect_channel(l.endpoint, l.options, p);
    if (!ch.ok()) return l.named(ch.error());
    Message hello;
    hello.type = MsgType::kHello;
    hello.request_id = next_request++;
    hello.info = {l.spec->index, l.spec->layer_begin, l.spec->layer_end, manifest.n_layers, 0, 0, 0, 0};
    Status st = send_message(**ch, hello, deadline);
    Result<Message> reply = st.ok() ? recv_message(**ch, deadline) : Result<Message>(st.error());
    if (reply.ok() && reply->type == MsgType::kError) {
      reply = make_error(reply->error_code, "refused the hello: {}", reply->reason);
    } else if (reply.ok() && reply->type != MsgType::kInfo) {
      reply = make_error(ErrorCode::kCorrupt, "answered the hello with message type {}", static_cast<int>(reply->type));
    }
    if (reply.ok()) {
      Status ok = check_info(l, reply->info);
      if (!ok.ok()) reply = ok.error();
    }
    if (!reply.ok()) {
      (*ch)->abort();
      return l.named(reply.error());
    }
    if (l.ever_connected) ++l.reconnects;
    l.info = reply->info;
    l.ever_connected = true;
    l.ch = std::move(*ch);
    l.last_error.clear();
    return ok_status();
  }

  // Sends `m` to a stage and returns its reply (not an error sentinel), holding the link for the whole exchange so
  // that concurrent users of the link (lanes, the health thread) never read each other's replies. Any failure
  // drops the channel: the next use reconnects, and the new session starts with empty caches.
  Result<Message> exchange(StageLink& l, const Message& m, Deadline deadline) {
    std::lock_guard lock(l.mu);
    VEIL_TRY(send_locked(l, m, deadline));
    return receive_locked(l, m.request_id, deadline);
  }

  Status send_to(StageLink& l, const Message& m, Deadline deadline) {
    std::lock_guard lock(l.mu);
    return send_locked(l, m, deadline);
  }

  Result<Message> receive_from(StageLink& l, uint64_t request_id, Deadline deadline) {
    std::lock_guard lock(l.mu);
    return receive_locked(l, request_id, deadline);
  }

  Status send_locked(StageLink& l, const Message& m, Deadline deadline) {
    if (!l.ch) VEIL_TRY(connect_link(l, deadline));
    Status st = send_message(*l.ch, m, deadline);
    if (!st.ok()) return failed(l, st.error());
    return ok_status();
  }

  Result<Message> receive_locked(StageLink& l, uint64_t request_id, Deadline deadline) {
    if (!l.ch) return l.named(make_error(ErrorCode::kUnavailable, "the connection was dropped"));
    Result<Message> reply = recv_message(*l.ch, deadline);
    if (!reply.ok()) return failed(l, reply.error());
    if (reply->type == MsgType::kError) {
      Error e(reply->error_code == ErrorCode::kTimeout ? ErrorCode::kTimeout : ErrorCode::kUnavailable,
              fmt::format("failed: {}", reply->reason));
      if (reply->error_stage != l.spec->index) e = make_error(ErrorCode::kCorrupt, "sent an error naming stage {}", reply->error_stage);
      return failed(l, e);
    }
    if (reply->request_id != request_id) {
      return failed(l, make_error(ErrorCode::kCorrupt, "replied to request {} instead of {}", reply->request_id, request_id));
    }
    return reply;
  }

  // Drops the link (the caller holds its lock) and names the stage.
  Error failed(StageLink& l, const Error& why) {
    Error e = why.code() == ErrorCode::kTimeout
                  ? make_error(ErrorCode::kTimeout, "no reply within {} ms", options.request_timeout.count())
                  : why;
    l.drop(e);
    return l.named(e);
  }

  Status check_output(StageLink& l, const Message& out, bool last, size_t tokens, size_t rows) {
    OutputKind kind = last ? OutputKind::kLogits : OutputKind::kHidden;
    size_t want_rows = last ? rows : tokens, want_width = last ? n_vocab : n_embd;
    if (out.type != MsgType::kOutput || out.output != kind || out.rows != want_rows || out.width != want_width) {
      Error e = make_error(ErrorCode::kCorrupt, "returned {} rows of width {}, expected {} rows of width {}", out.rows,
                           out.width, want_rows, want_width);
      std::lock_guard lock(l.mu);
      l.drop(e);
      return l.named(e);
    }
    return ok_status();
  }

  Status forward(std::span<const server::StepInput> batch, std::vector<float>& logits) {
    Deadline deadline = channel::deadline_in(options.request_timeout);
    Message m;
    m.type = MsgType::kForward;
    for (const auto& in : batch) {
      if (in.slot >= slots || in.tokens.empty()) {
        return make_error(ErrorCode::kInternal, "pipeline front: slot {} with {} tokens is not a valid step", in.slot,
                          in.tokens.size());
      }
      m.segments.push_back({in.slot, in.pos0, static_cast<uint32_t>(in.tokens.size()), in.want_logits});
      m.tokens.insert(m.tokens.end(), in.tokens.begin(), in.tokens.end());
    }
    logits.clear();
    Status st = ok_status();
    if (links.size() > 1 && options.micro_batches > 1) {
      std::vector<Message> mbs = split_batch(m, options.micro_batches);
      st = fill_drain(mbs, logits, deadline);
    } else {
      m.request_id = next_request++;
      st = chain(m, logits, deadline);
    }
    return st.ok() ? st : as_stage_failure(st.error());
  }

  // Whole batch through the stages in order, one link held at a time: several lanes may run this at once, each
  // in a different stage (lane A in stage 1 while lane B is in stage 0), so every stage stays busy.
  Status chain(Message& m, std::vector<float>& logits, Deadline deadline) {
    size_t rows = 0, tokens = 0;
    for (const Segment& seg : m.segments) {
      rows += seg.want_logits;
      tokens += seg.n_tokens;
    }
    for (size_t s = 0; s < links.size(); ++s) {
      const bool last = s + 1 == links.size();
      Result<Message> out = exchange(*links[s], m, deadline);
      if (!out.ok()) return out.error();
      VEIL_TRY(check_output(*links[s], *out, last, tokens, rows));
      if (last) {
        logits = std::move(out->values);
      } else {
        m.tokens.clear();
        m.values = std::move(out->values);
        m.request_id = next_request++;
      }
    }
    return ok_status();
  }

  uint32_t max_concurrent_forwards() const {
    return options.micro_batches > 1 ? 1u : static_cast<uint32_t>(links.size());
  }

  // Splits the batch's token stream into at most `k` contiguous micro-batches (split_micro_batches). A segment cut
  // in two continues at the next position; only its last piece asks for logits, so logit rows keep batch order.
  std::vector<Message> split_batch(const Message& m, uint32_t k) {
    std::vector<Message> out;
    size_t off = 0, seg = 0;
    for (const MicroBatch& r : split_micro_batches(static_cast<uint32_t>(m.tokens.size()), std::max(1u, k))) {
      Message mb;
      mb.type = MsgType::kForward;
      mb.request_id = next_request++;
      mb.tokens.assign(m.tokens.begin() + r.begin, m.tokens.begin() + r.end);
      for (size_t t = r.begin; t < r.end;) {
        while (off + m.segments[seg].n_tokens <= t) off += m.segments[seg++].n_tokens;
        const Segment& s = m.segments[seg];
        size_t end = std::min<size_t>(r.end, off + s.n_tokens);
        mb.segments.push_back({s.slot, static_cast<uint32_t>(s.pos0 + (t - off)), static_cast<uint32_t>(end - t),
                               s.want_logits && end == off + s.n_tokens});
        t = end;
      }
      out.push_back(std::move(mb));
    }
    return out;
  }

  // Fill-drain over the stages: at step t stage s runs micro-batch t - s; every stage has at most one message
  // outstanding. On a failure every stage with an outstanding message is dropped too (its reply would be stale).
  Status fill_drain(std::vector<Message>& mbs, std::vector<float>& logits, Deadline deadline) {
    const size_t S = links.size(), K = mbs.size();
    for (size_t t = 0; t + 1 < S + K; ++t) {
      size_t lo = t >= K ? t - K + 1 : 0, hi = std::min(t, S - 1);
      for (size_t s = lo; s <= hi; ++s) {
        Status st = send_to(*links[s], mbs[t - s], deadline);
        if (!st.ok()) return abandon(st.error(), lo, s);
      }
      for (size_t s = lo; s <= hi; ++s) {
        Message& mb = mbs[t - s];
        Result<Message> out = receive_from(*links[s], mb.request_id, deadline);
        size_t rows = 0, tokens = 0;
        for (const Segment& seg : mb.segments) {
          rows += seg.want_logits;
          tokens += seg.n_tokens;
        }
        Status st = out.ok() ? check_output(*links[s], *out, s + 1 == S, tokens, rows) : Status(out.error());
        if (!st.ok()) return abandon(st.error(), s + 1, hi + 1);
        if (s + 1 == S) {
          logits.insert(logits.end(), out->values.begin(), out->values.end());
        } else {
          mb.tokens.clear();
          mb.values = std::move(out->values);
          mb.request_id = next_request++;
        }
      }
    }
    return ok_status();
  }

  // Drops links [from, to) (they hold a message whose reply nobody will read) and returns `e`.
  Error abandon(const Error& e, size_t from, size_t to) {
    for (size_t s = from; s < to; ++s) {
      std::lock_guard lock(links[s]->mu);
      links[s]->drop(make_error(ErrorCode::kCancelled, "abandoned after another stage failed"));
    }
    return e;
  }

  // During serving, a stage that fails in any way (connection lost or truncated, refused on reconnection,
  // malformed reply, error sentinel) is unavailable; a deadline stays a timeout. The message names the stage.
  static Error as_stage_failure(const Error& e) {
    return Error(e.code() == ErrorCode::kTimeout ? ErrorCode::kTimeout : ErrorCode::kUnavailable, e.message());
  }

  void reset_slot(uint32_t slot) {
    Message m;
    m.type = MsgType::kReset;
    m.slot = slot;
    for (auto& l : links) {
      std::lock_guard lock(l->mu);
      if (!l->ch) continue;  // its next session starts with empty caches anyway
      Status st = send_message(*l->ch, m, channel::deadline_in(options.request_timeout));
      if (!st.ok()) l->drop(st.error());
    }
  }

  void check_health() {
    for (auto& l : links) {
      Deadline deadline = channel::deadline_in(std::min<std::chrono::milliseconds>(options.request_timeout, 10s));
      bool connected;
      {
        std::lock_guard lock(l->mu);
        connected = l->ch != nullptr;
        if (!connected) {
          // One try per health round: the interval is the backoff.
          Status st = connect_link(*l, deadline, /*max_attempts=*/1);
          if (!st.ok()) l->last_error = st.error().message();
          else spdlog::info("pipeline: stage {} ({}) is back", l->spec->index, l->spec->endpoint);
          continue;
        }
      }
      Message ping;
      ping.type = MsgType::kPing;
      ping.request_id = next_ping.fetch_add(1) | (1ull << 63);  // disjoint from forward request ids
      auto pong = exchange(*l, ping, deadline);
      if (pong.ok() && pong->type != MsgType::kPong) {
        std::lock_guard lock(l->mu);
        l->drop(make_error(ErrorCode::kCorrupt, "answered a ping with message type {}", static_cast<int>(pong->type)));
      }
    }
  }

  void health_loop() {
    std::unique_lock lock(health_mu);
    while (!stopping) {
      if (health_cv.wait_for(lock, options.health_interval, [&] { return stopping; })) break;
      lock.unlock();
      check_health();
      lock.lock();
    }
  }
};

Result<std::unique_ptr<PipelineStepModel>> PipelineStepModel::connect(const ShardManifest& manifest,
                                                                     FrontOptions options) {
  if (manifest.stages.empty()) return make_error(ErrorCode::kInvalidArgument, "pipeline front: the manifest has no stages");
  if (options.request_timeout <= 0ms) {
    return make_error(ErrorCode::kInvalidArgument, "pipeline front: the request timeout must be positive");
  }
  auto impl = std::make_unique<Impl>();
  impl->manifest = manifest;
  impl->options = std::move(options);
  Deadline deadline = channel::deadline_in(impl->options.request_timeout);
  for (const StageSpec& s : impl->manifest.stages) {
    auto l = std::make_unique<StageLink>();
    l->spec = &s;
    auto ep = stage_endpoint(s.endpoint);
    if (!ep.ok()) return l->named(ep.error());
    l->endpoint = *ep;
    l->options = impl->options.channel;
    l->options.verifier = channel::verifier_from_policy(s.policy, impl->options.collateral);
    VEIL_TRY(impl->connect_link(*l, deadline));
    impl->links.push_back(std::move(l));
  }
  const StageInfo& first = impl->links.front()->info;
  impl->n_embd = first.n_embd;
  impl->n_vocab = impl->links.back()->info.n_vocab;
  impl->n_ctx = first.n_ctx;
  impl->slots = first.max_slots;
  for (const auto& l : impl->links) {
    if (l->info.n_embd != impl->n_embd) {
      return l->named(make_error(ErrorCode::kInvalidArgument, "embedding width {} differs from stage 0's {}",
                                 l->info.n_embd, impl->n_embd));
    }
    impl->n_ctx = std::min(impl->n_ctx, l->info.n_ctx);
    impl->slots = std::min(impl->slots, l->info.max_slots);
  }
  if (impl->options.health_interval > 0ms) {
    Impl* raw = impl.get();
    impl->health_thread = std::thread([raw] { raw->health_loop(); });
  }
  return std::unique_ptr<PipelineStepModel>(new PipelineStepModel(std::move(impl)));
}

PipelineStepModel::PipelineStepModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PipelineStepModel::~PipelineStepModel() {
  {
    std::lock_guard lock(impl_->health_mu);
    impl_->stopping = true;
  }
  impl_->health_cv.notify_all();
  if (impl_->health_thread.joinable()) impl_->health_thread.join();
  for (auto& l : impl_->links) {
    std::lock_guard lock(l->mu);
    if (l->ch) (void)l->ch->close(channel::deadline_in(1s));
  }
}

uint32_t PipelineStepModel::context_length() const { return impl_->n_ctx; }
uint32_t PipelineStepModel::vocab_size() const { return impl_->n_vocab; }
uint32_t PipelineStepModel::max_slots() const { return impl_->slots; }

Status PipelineStepModel::forward(std::span<const server::StepInput> batch, std::vector<float>& logits) {
  return impl_->forward(batch, logits);
}

void PipelineStepModel::reset_slot(uint32_t slot) { impl_->reset_slot(slot); }

uint32_t PipelineStepModel::max_concurrent_forwards() const { return impl_->max_concurrent_forwards(); }

void PipelineStepModel::check_health() { impl_->check_health(); }

std::vector<StageHealth> PipelineStepModel::health() const {
  std::vector<StageHealth> out;
  for (const auto& l : impl_->links) {
    std::lock_guard lock(l->mu);
    out.push_back({l->spec->index, l->spec->endpoint, l->ch != nullptr, l->reconnects, l->last_error});
  }
  return out;
}

}  // namespace veil::pipeline
