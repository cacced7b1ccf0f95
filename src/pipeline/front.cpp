// PipelineStepModel: the front's StepModel over attested stages (runtime.h, docs/pipeline.md). The front holds one
// control channel per stage; batches enter at stage 0 and their logits come back from the last stage. A reader
// thread per channel hands replies to the waiting forward passes by request id (the mailbox); any failure ends the
// pipeline session, and the next use reconnects every stage, the last first (each stage opens its data channel to
// its successor while it answers the hello, so the successor must already be in the new session).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "pipeline/runtime.h"

namespace veil::pipeline {

using namespace std::chrono_literals;
using channel::Clock;
using channel::Deadline;

namespace {

std::chrono::milliseconds until(Deadline d) {
  return std::max(0ms, std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()));
}

// One stage as the front sees it. `ch` and `reader` are replaced only by the session owner (Impl::session_mu held);
// `send_mu` serialises senders on `ch` (lanes, resets, pings).
struct StageLink {
  const StageSpec* spec = nullptr;
  channel::Endpoint endpoint;
  channel::ChannelOptions options;  // with this stage's verifier
  std::mutex send_mu;
  std::unique_ptr<channel::Channel> ch;
  std::thread reader;
  StageInfo info;  // as reported at the first connection; later sessions must match it
  bool ever_connected = false;
  uint64_t reconnects = 0;
  std::string last_error;

  Error named(const Error& e) const {
    return Error(e.code(), fmt::format("pipeline stage {} ({}): {}", spec->index, spec->endpoint, e.message()));
  }
};

// A forward pass, reset or ping waiting for its answer.
struct Waiter {
  uint64_t session = 0;
  uint32_t passed = 0;  // stages that noted the request done (passed it on): the first one that did not is blamed
  std::optional<Result<Message>> reply;
};

}  // namespace

struct PipelineStepModel::Impl {
  ShardManifest manifest;
  FrontOptions options;
  std::vector<std::unique_ptr<StageLink>> links;
  uint32_t n_embd = 0, n_vocab = 0, n_ctx = 0, slots = 0;
  std::atomic<uint64_t> next_request{1};
  std::atomic<uint64_t> next_ping{1};

  // The pipeline session: every link connected (`up`), numbered so that late failures of an old one are ignored.
  mutable std::mutex session_mu;
  bool up = false;
  uint64_t session = 1;

  // The mailbox: replies by request id, for the current session.
  std::mutex mbox_mu;
  std::condition_variable mbox_cv;
  std::unordered_map<uint64_t, Waiter> waiting;
  uint64_t mbox_session = 1;
  std::optional<Error> broken;  // why the current session failed

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

  // The stage an error sentinel names (a stage reports its own failures and an unreachable successor). While
  // serving, every stage failure is unavailable (or a timeout); `keep_code` keeps the stage's code (a refusal while
  // connecting stays kSecurity).
  Error sentinel_error(const Message& m, bool keep_code = false) const {
    if (m.error_stage >= links.size()) {
      return make_error(ErrorCode::kCorrupt, "an error sentinel names stage {} of {}", m.error_stage, links.size());
    }
    ErrorCode code = keep_code || m.error_code == ErrorCode::kTimeout ? m.error_code : ErrorCode::kUnavailable;
    return links[m.error_stage]->named(Error(code, fmt::format("failed: {}", m.reason)));
  }

  // Connect (with retries, within `deadline`), verify the evidence in the handshake, exchange hello/info; the stage
  // opens its data channel to its successor before it answers. Errors name the stage at fault. session_mu held.
  Status connect_link(StageLink& l, Deadline deadline, int max_attempts) {
    channel::RetryPolicy p = options.retry;
    if (max_attempts > 0) p.max_attempts = max_attempts;
    p.overall_timeout = std::min(p.overall_timeout, until(deadline));
    auto ch = channel::connect_channel(l.endpoint, l.options, p);
    if (!ch.ok()) return record(l, l.named(ch.error()));
    Message hello;
    hello.type = MsgType::kHello;
    hello.hello_from = Peer::kFront;
    hello.request_id = next_request++;
    hello.info = {l.spec->index, l.spec->layer_begin, l.spec->layer_end, manifest.n_layers, 0, 0, 0, 0};
    // The stage reaches its successor within three quarters of what is left, so that its sentinel naming an
    // unreachable successor arrives before this hello times out.
    hello.timeout_ms = static_cast<uint32_t>(until(deadline).count() * 3 / 4);
    Status st = send_message(**ch, hello, deadline);
    Result<Message> reply = st.ok() ? recv_message(**ch, deadline) : Result<Message>(st.error());
    if (!reply.ok()) {
      (*ch)->abort();
      return record(l, l.named(reply.error()));
    }
    Status ok = ok_status();
    if (reply->type == MsgType::kError) {
      ok = sentinel_error(*reply, /*keep_code=*/true);
    } else if (reply->type != MsgType::kInfo) {
      ok = l.named(make_error(ErrorCode::kCorrupt, "answered the hello with message type {}", static_cast<int>(reply->type)));
    } else if (Status info = check_info(l, reply->info); !info.ok()) {
      ok = l.named(info.error());
    }
    if (!ok.ok()) {
      (*ch)->abort();
      return record(reply->type == MsgType::kError && reply->error_stage < links.size() ? *links[reply->error_stage] : l,
                    ok.error());
    }
    if (l.ever_connected) ++l.reconnects;
    l.info = reply->info;
    l.ever_connected = true;
    std::lock_guard lock(l.send_mu);
    l.ch = std::move(*ch);
    l.last_error.clear();
    return ok_status();
  }

  static Error record(StageLink& l, const Error& e) {
    l.last_error = e.message();
    return e;
  }

  // The current session, connecting every stage (the last first) when it is down. Returns its number.
  Result<uint64_t> ensure_session(Deadline deadline, int max_attempts = 0) {
    std::lock_guard lock(session_mu);
    if (up) return session;
    for (size_t i = links.size(); i-- > 0;) {
      Status st = connect_link(*links[i], deadline, max_attempts);
      if (!st.ok()) {
        close_links();
        return st.error();
      }
    }
    {
      std::lock_guard mbox(mbox_mu);
      mbox_session = session;
      broken.reset();
    }
    for (size_t i = 0; i < links.size(); ++i) {
      StageLink& l = *links[i];
      l.reader = std::thread([this, &l, i, s = session] { read_loop(l, static_cast<uint32_t>(i), s); });
    }
    up = true;
    return session;
  }

  // Aborts every channel and joins the readers. session_mu held.
  void close_links() {
    for (auto& l : links) {
      if (l->ch) l->ch->abort();
    }
    for (auto& l : links) {
      if (l->reader.joinable()) l->reader.join();
      std::lock_guard lock(l->send_mu);
      l->ch.reset();
    }
  }

  // Ends session `s` because of `e` (the first failure wins): every waiter of it gets the error, every channel is
  // dropped (the stages drop their data channels and caches), and the next use reconnects.
  void fail_session(uint64_t s, const Error& e) {
    break_session(s, e);
    std::lock_guard lock(session_mu);
    if (!up || session != s) return;
    spdlog::warn("pipeline: session dropped: {}", e.message());
    for (auto& l : links) {
      if (e.message().starts_with(fmt::format("pipeline stage {} (", l->spec->index))) l->last_error = e.message();
    }
    close_links();
    up = false;
    ++session;
  }

  // Hands `e` to every waiter of session `s` (called by readers, which must not join themselves).
  void break_session(uint64_t s, const Error& e) {
    std::lock_guard lock(mbox_mu);
    if (mbox_session != s || broken) return;
    broken = e;
    for (auto& [id, w] : waiting) {
      if (w.session == s && !w.reply) w.reply = Result<Message>(e);
    }
    mbox_cv.notify_all();
  }

  // One stage's control channel: outputs and sentinels (to their waiters), done notes, pongs.
  void read_loop(StageLink& l, uint32_t index, uint64_t s) {
    const bool last = index + 1 == links.size();
    for (;;) {
      Result<Message> m = recv_message(*l.ch, channel::deadline_in(24h * 365));
      Error why = m.ok() ? Error(ErrorCode::kInternal, "") : l.named(m.error());
      if (m.ok()) {
        const bool expected = m->type == MsgType::kError || m->type == MsgType::kPong ||
                              (last ? m->type == MsgType::kOutput : m->type == MsgType::kDone);
        if (expected && deliver(*m, index, s)) continue;
        // A sentinel for no waiting request (a reset's, say) still ends the session, naming the stage it names.
        why = m->type == MsgType::kError
                  ? sentinel_error(*m)
                  : l.named(make_error(ErrorCode::kCorrupt, "sent message type {} for request {}, which is not expected",
                                       static_cast<int>(m->type), m->request_id));
      }
      if (why.code() == ErrorCode::kCancelled) why = l.named(make_error(ErrorCode::kUnavailable, "closed the session"));
      break_session(s, why);
      return;
    }
  }

  // Hands a message to its waiter; false when nobody waits for it in this session.
  bool deliver(const Message& m, uint32_t index, uint64_t s) {
    std::lock_guard lock(mbox_mu);
    if (mbox_session != s) return true;  // an old session's reader is being stopped
    auto it = waiting.find(m.request_id);
    // A done note may arrive after the last stage's output (the request is then finished): it is only progress.
    if (it == waiting.end() || it->second.session != s) return m.type == MsgType::kDone;
    Waiter& w = it->second;
    if (m.type == MsgType::kDone) {
      w.passed = std::max(w.passed, index + 1);
    } else if (!w.reply) {
      w.reply = m.type == MsgType::kError ? Result<Message>(sentinel_error(m)) : Result<Message>(m);
    }
    mbox_cv.notify_all();
    return true;
  }

  // Registers a waiter for `id` in session `s` (a timeout blames stage `first` or a later one that had not passed
  // the request on); fails when the session is already broken.
  Status expect(uint64_t id, uint64_t s, uint32_t first) {
    std::lock_guard lock(mbox_mu);
    if (mbox_session != s || broken) {
      return broken ? *broken : make_error(ErrorCode::kUnavailable, "pipeline: the session ended");
    }
    waiting[id] = Waiter{s, first, std::nullopt};
    return ok_status();
  }

  void forget(std::span<const uint64_t> ids) {
    std::lock_guard lock(mbox_mu);
    for (uint64_t id : ids) waiting.erase(id);
  }

  // The reply to `id`, or the session's failure, or a timeout naming the first stage that had not passed it on.
  Result<Message> await(uint64_t id, Deadline deadline) {
    std::unique_lock lock(mbox_mu);
    Waiter& w = waiting.at(id);
    if (!mbox_cv.wait_until(lock, deadline, [&] { return w.reply.has_value(); })) {
      return links[std::min<size_t>(w.passed, links.size() - 1)]->named(
          make_error(ErrorCode::kTimeout, "no reply within {} ms", options.request_timeout.count()));
    }
    return *w.reply;
  }

  Status send_to(StageLink& l, const Message& m, Deadline deadline) {
    std::lock_guard lock(l.send_mu);
    if (!l.ch) return l.named(make_error(ErrorCode::kUnavailable, "the connection was dropped"));
    Status st = send_message(*l.ch, m, deadline);
    return st.ok() ? st : Status(l.named(st.error()));
  }

  // Sends `msgs` to stage `stage` and waits for every reply, in order; any failure ends the session. `*session`:
  // the session they went through.
  Result<std::vector<Message>> exchange(size_t stage, std::vector<Message>& msgs, Deadline deadline,
                                        uint64_t* session, int max_attempts = 0) {
    VEIL_ASSIGN_OR_RETURN(uint64_t s, ensure_session(deadline, max_attempts));
    *session = s;
    std::vector<uint64_t> ids;
    for (Message& m : msgs) ids.push_back(m.request_id);
    Status st = ok_status();
    for (uint64_t id : ids) {
      if (st.ok()) st = expect(id, s, static_cast<uint32_t>(stage));
    }
    std::vector<Message> replies;
    for (size_t i = 0; i < msgs.size() && st.ok(); ++i) st = send_to(*links[stage], msgs[i], deadline);
    for (size_t i = 0; i < msgs.size() && st.ok(); ++i) {
      Result<Message> r = await(ids[i], deadline);
      if (r.ok()) replies.push_back(std::move(r).value());
      else st = r.error();
    }
    forget(ids);
    if (!st.ok()) {
      fail_session(s, st.error());
      return st.error();
    }
    return replies;
  }

  Status check_output(const Message& out, const Message& in, uint64_t s) {
    size_t rows = 0;
    for (const Segment& seg : in.segments) rows += seg.want_logits;
    if (out.type != MsgType::kOutput || out.output != OutputKind::kLogits || out.rows != rows || out.width != n_vocab) {
      Error e = links.back()->named(make_error(ErrorCode::kCorrupt, "returned {} rows of width {}, expected {} rows of width {}",
                                               out.rows, out.width, rows, n_vocab));
      fail_session(s, e);
      return e;
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
    std::vector<Message> mbs;
    if (links.size() > 1 && options.micro_batches > 1) {
      mbs = split_batch(m, options.micro_batches);
    } else {
      m.request_id = next_request++;
      mbs.push_back(std::move(m));
    }
    uint64_t s = 0;
    Result<std::vector<Message>> outs = exchange(0, mbs, deadline, &s);
    if (!outs.ok()) return as_stage_failure(outs.error());
    for (size_t i = 0; i < mbs.size(); ++i) {
      VEIL_TRY(check_output((*outs)[i], mbs[i], s));
      logits.insert(logits.end(), (*outs)[i].values.begin(), (*outs)[i].values.end());
    }
    return ok_status();
  }

  uint32_t max_concurrent_forwards() const {
    return options.micro_batches > 1 ? 1u : static_cast<uint32_t>(links.size());
  }

  // Splits the batch's token stream into at most `k` contiguous micro-batches (split_micro_batches). A segment cut
  // in two continues at the next position; only its last piece asks for logits, so logit rows keep batch order.
  // Stage 0 receives them one after the other and passes each on when it is done, so consecutive micro-batches run
  // on consecutive stages at once (fill-drain, pipeline.h).
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

  // During serving, a stage that fails in any way (connection lost or truncated, refused on reconnection,
  // malformed reply, error sentinel) is unavailable; a deadline stays a timeout. The message names the stage.
  static Error as_stage_failure(const Error& e) {
    return Error(e.code() == ErrorCode::kTimeout ? ErrorCode::kTimeout : ErrorCode::kUnavailable, e.message());
  }

  // A reset enters at stage 0 and travels down the chain in order with the batches (no reply). When the session is
  // down there is nothing to reset: the next session starts with empty caches.
  void reset_slot(uint32_t slot) {
    uint64_t s;
    {
      std::lock_guard lock(session_mu);
      if (!up) return;
      s = session;
    }
    Message m;
    m.type = MsgType::kReset;
    m.slot = slot;
    Status st = send_to(*links[0], m, channel::deadline_in(options.request_timeout));
    if (!st.ok()) fail_session(s, st.error());
  }

  void check_health() {
    Deadline deadline = channel::deadline_in(std::min<std::chrono::milliseconds>(options.request_timeout, 10s));
    bool was_up;
    {
      std::lock_guard lock(session_mu);
      was_up = up;
    }
    if (!was_up) {
      // One try per health round: the interval is the backoff.
      if (ensure_session(deadline, /*max_attempts=*/1).ok()) spdlog::info("pipeline: every stage is back");
      return;
    }
    for (size_t i = 0; i < links.size(); ++i) {
      std::vector<Message> ping(1);
      ping[0].type = MsgType::kPing;
      ping[0].request_id = next_ping.fetch_add(1) | (1ull << 63);  // disjoint from forward request ids
      uint64_t s = 0;
      auto pong = exchange(i, ping, deadline, &s, /*max_attempts=*/1);
      if (!pong.ok()) return;  // the session was dropped; the next round reconnects
      if (pong->front().type != MsgType::kPong) {
        fail_session(s, links[i]->named(make_error(ErrorCode::kCorrupt, "answered a ping with message type {}",
                                                                   static_cast<int>(pong->front().type))));
        return;
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
  for (const StageSpec& s : impl->manifest.stages) {
    auto l = std::make_unique<StageLink>();
    l->spec = &s;
    auto ep = stage_endpoint(s.endpoint);
    if (!ep.ok()) return l->named(ep.error());
    l->endpoint = *ep;
    l->options = impl->options.channel;
    l->options.verifier = channel::verifier_from_policy(s.policy, impl->options.collateral);
    impl->links.push_back(std::move(l));
  }
  auto first_session = impl->ensure_session(channel::deadline_in(impl->options.request_timeout));
  if (!first_session.ok()) return first_session.error();
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
  std::lock_guard lock(impl_->session_mu);
  for (auto& l : impl_->links) {
    std::lock_guard send(l->send_mu);
    if (l->ch) (void)l->ch->close(channel::deadline_in(1s));
  }
  impl_->close_links();
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
  std::lock_guard lock(impl_->session_mu);
  for (const auto& l : impl_->links) {
    out.push_back({l->spec->index, l->spec->endpoint, impl_->up && l->ch != nullptr, l->reconnects, l->last_error});
  }
  return out;
}

}  // namespace veil::pipeline
