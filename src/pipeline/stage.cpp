// StageServer: one layer range of the pipeline (runtime.h, docs/pipeline.md). A session is the front's control
// channel, the predecessor's data channel (stages after the first) and the data channel this stage opens to its
// successor (stages before the last). The accept thread starts and ends sessions; the control thread reads the
// front's channel; the worker (stage 0: the control thread, later stages: the upstream thread) runs the batches and
// passes their results down the chain.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "pipeline/runtime.h"

namespace veil::pipeline {

using namespace std::chrono_literals;

namespace {

// Sends on a channel that a session has stopped using fail fast; this bounds a send to a live but stalled peer.
constexpr auto kSendTimeout = 60s;

std::chrono::milliseconds until(channel::Deadline d) {
  return std::max(0ms, std::chrono::duration_cast<std::chrono::milliseconds>(d - channel::Clock::now()));
}

}  // namespace

struct StageServer::Impl {
  // One pipeline session. Channels are set by the accept thread under Impl::mu (stop() aborts them from any thread);
  // `upstream` is replaced when the predecessor reconnects.
  struct Session {
    std::unique_ptr<channel::Channel> control;
    std::mutex control_send;  // pongs (control thread) and outputs, done notes, sentinels (worker) share it
    std::thread control_thread;
    std::unique_ptr<channel::Channel> upstream;
    std::thread upstream_thread;
    std::unique_ptr<channel::Channel> downstream;
    std::thread downstream_watch;
    std::atomic<bool> downstream_lost{false};
    std::atomic<bool> ended{false};

    void abort_all() {
      for (auto* ch : {control.get(), upstream.get(), downstream.get()}) {
        if (ch) ch->abort();
      }
    }
    void join() {
      for (auto* t : {&control_thread, &upstream_thread, &downstream_watch}) {
        if (t->joinable()) t->join();
      }
    }
  };

  ShardManifest manifest;
  StageSpec spec;
  uint32_t n_layers = 0;
  std::shared_ptr<const engine::Model> model;
  StageOptions options;
  channel::ChannelOptions downstream_options;  // client side, to the successor
  uint32_t n_ctx = 0;
  std::unique_ptr<channel::Listener> listener;
  std::mutex work_mu;  // the engine: ctx, caches, requests
  engine::Context ctx;
  std::vector<engine::KvCache> caches;
  std::vector<engine::ForwardRequest> requests;
  std::thread thread;  // accepts, and starts and ends sessions
  std::mutex mu;       // guards session's channels, stopping
  std::unique_ptr<Session> session;
  bool stopping = false;
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> session_count{0};
  std::atomic<uint64_t> data_session_count{0};

  Impl(const engine::HParams& hp, uint32_t threads) : ctx(hp, {.threads = threads}) {}

  bool last() const { return spec.index + 1 == manifest.stages.size(); }

  bool is_stopping() {
    std::lock_guard lock(mu);
    return stopping;
  }

  void run() {
    while (!is_stopping()) {
      auto t = listener->accept(channel::deadline_in(24h));
      if (!t.ok()) continue;  // closed by stop(), or a failed accept: the loop condition decides
      auto ch = channel::server_handshake(std::move(*t), options.channel);
      if (!ch.ok()) continue;  // refused or failed: the channel logged it without secrets
      admit(std::move(*ch));
    }
    end_session();
  }

  Message error_reply(uint64_t request_id, const Error& e, uint32_t stage) const {
    Message r;
    r.type = MsgType::kError;
    r.request_id = request_id;
    r.error_stage = stage;
    r.error_code = e.code();
    r.reason = e.message().substr(0, kMaxReasonBytes);
    return r;
  }
  Message error_reply(uint64_t request_id, const Error& e) const { return error_reply(request_id, e, spec.index); }

  StageInfo info() const {
    const engine::HParams& hp = model->hparams();
    return {spec.index, spec.layer_begin, spec.layer_end, n_layers, hp.n_embd, hp.n_vocab, n_ctx,
            static_cast<uint32_t>(caches.size())};
  }

  static bool same_stage(const StageInfo& i, const StageSpec& s, uint32_t n_layers) {
    return i.stage_index == s.index && i.layer_begin == s.layer_begin && i.layer_end == s.layer_end &&
           i.n_layers == n_layers;
  }

  // The hello names the right stage, and in mutual mode the peer's verified claims satisfy the policy for its role
  // (the handshake accepted either the front's policy or the predecessor's).
  Status check_hello(const Message& m, const channel::Channel& ch) const {
    const StageInfo& got = m.info;
    const bool front = m.hello_from == Peer::kFront;
    if (!front && spec.index == 0) {
      return make_error(ErrorCode::kSecurity, "stage 0: a data channel from stage {}: stage 0 has no predecessor",
                        got.stage_index);
    }
    const StageSpec& want = front ? spec : manifest.stages[spec.index - 1];
    if (!same_stage(got, want, n_layers)) {
      return make_error(front ? ErrorCode::kInvalidArgument : ErrorCode::kSecurity,
                        "stage {}: the {} says stage {} layers [{}, {}) of {}; expected stage {} [{}, {}) of {}",
                        spec.index, front ? "front" : "data channel", got.stage_index, got.layer_begin,
                        got.layer_end, got.n_layers, want.index, want.layer_begin, want.layer_end, n_layers);
    }
    if (options.channel.mode != channel::Mode::kMutual) return ok_status();
    const attest::Claims* claims = ch.peer_claims();
    if (!claims) return make_error(ErrorCode::kSecurity, "stage {}: the peer presented no evidence", spec.index);
    Status st = attest::check_policy(front ? *options.front_policy : want.policy, *claims, claims->report_data,
                                     std::chrono::system_clock::now());
    if (!st.ok()) {
      return make_error(ErrorCode::kSecurity, "stage {}: the {} does not satisfy its policy: {}", spec.index,
                        front ? "front" : fmt::format("data channel from stage {}", want.index), st.error().message());
    }
    return ok_status();
  }

  // The first message after the handshake is a hello: from the front (a new session) or the predecessor (the data
  // channel into the current session).
  void admit(std::unique_ptr<channel::Channel> ch) {
    auto hello = recv_message(*ch, channel::deadline_in(options.channel.handshake_timeout));
    if (!hello.ok()) {
      spdlog::info("pipeline stage {}: no hello from {}: {}", spec.index, ch->peer(), hello.error().message());
      ch->abort();
      return;
    }
    received.fetch_add(1);
    Status st = hello->type == MsgType::kHello
                    ? check_hello(*hello, *ch)
                    : make_error(ErrorCode::kInvalidArgument, "stage {}: no hello yet", spec.index);
    if (!st.ok()) {
      spdlog::warn("pipeline stage {}: refused {}: {}", spec.index, ch->peer(), st.error().message());
      (void)send_message(*ch, error_reply(hello->request_id, st.error()), channel::deadline_in(1s));
      ch->abort();
      return;
    }
    if (hello->hello_from == Peer::kFront) {
      start_session(std::move(ch), *hello);
    } else {
      attach_upstream(std::move(ch), *hello);
    }
  }

  void start_session(std::unique_ptr<channel::Channel> ch, const Message& hello) {
    end_session();  // a new front session replaces the previous one (a hung batch delays this until it returns)
    {
      std::lock_guard lock(work_mu);
      for (auto& c : caches) c.clear();  // a new session starts from nothing
    }
    auto owned = std::make_unique<Session>();
    Session& s = *owned;
    s.control = std::move(ch);
    {
      std::lock_guard lock(mu);
      if (stopping) {
        s.abort_all();
        return;
      }
      session = std::move(owned);
    }
    session_count.fetch_add(1);
    if (!last()) {
      Status st = open_downstream(s, channel::deadline_in(std::chrono::milliseconds(hello.timeout_ms)));
      if (!st.ok()) {
        spdlog::warn("pipeline stage {}: {}", spec.index, st.error().message());
        send_control(s, error_reply(hello.request_id, st.error(), spec.index + 1));
        return close_session(s);  // it stays until the next one (or stop) ends and joins it
      }
      s.downstream_watch = std::thread([this, &s] { watch_downstream(s); });
    }
    Message reply;
    reply.type = MsgType::kInfo;
    reply.request_id = hello.request_id;
    reply.info = info();
    if (!send_control(s, reply)) return close_session(s);
    s.control_thread = std::thread([this, &s] { control_loop(s); });
  }

  void close_session(Session& s) {
    std::lock_guard lock(mu);
    s.ended = true;
    s.abort_all();
  }

  // Ends the current session: aborts its channels and joins its threads.
  void end_session() {
    std::unique_ptr<Session> old;
    {
      std::lock_guard lock(mu);
      old = std::move(session);
      if (old) old->abort_all();
    }
    if (old) old->join();
  }

  // Opens the data channel to the successor (verified against the manifest's policy for it) and checks its info.
  Status open_downstream(Session& s, channel::Deadline deadline) {
    const StageSpec& next = manifest.stages[spec.index + 1];
    auto fail = [&](const Error& e) {
      return Error(e.code(), fmt::format("unreachable from stage {}: {}", spec.index, e.message()));
    };
    auto ep = stage_endpoint(next.endpoint);
    if (!ep.ok()) return fail(ep.error());
    channel::RetryPolicy p = options.retry;
    p.overall_timeout = std::min(p.overall_timeout, until(deadline));
    auto ch = channel::connect_channel(*ep, downstream_options, p);
    if (!ch.ok()) return fail(ch.error());
    Message hello;
    hello.type = MsgType::kHello;
    hello.hello_from = Peer::kPredecessor;
    hello.info = {spec.index, spec.layer_begin, spec.layer_end, n_layers, 0, 0, 0, 0};
    Status st = send_message(**ch, hello, deadline);
    Result<Message> reply = st.ok() ? recv_message(**ch, deadline) : Result<Message>(st.error());
    if (reply.ok() && reply->type == MsgType::kError) {
      reply = make_error(reply->error_code, "refused the data channel: {}", reply->reason);
    } else if (reply.ok() && (reply->type != MsgType::kInfo || !same_stage(reply->info, next, n_layers) ||
                              reply->info.n_embd != model->hparams().n_embd)) {
      reply = make_error(ErrorCode::kSecurity, "answered the data channel's hello with another stage or shape");
    }
    if (!reply.ok()) {
      (*ch)->abort();
      return fail(reply.error());
    }
    std::lock_guard lock(mu);
    s.downstream = std::move(*ch);
    return ok_status();
  }

  // The successor never sends on the data channel: anything it reads means the channel is gone.
  void watch_downstream(Session& s) {
    Bytes unused;
    Status st = s.downstream->recv_into(unused, channel::deadline_in(24h * 365));
    s.downstream_lost = true;
    if (!s.ended) {
      spdlog::warn("pipeline stage {}: data channel to stage {} lost: {}", spec.index, spec.index + 1,
                   st.ok() ? "it sent a message" : st.error().message());
    }
    s.downstream->abort();
  }

  void attach_upstream(std::unique_ptr<channel::Channel> ch, const Message& hello) {
    Session* s = nullptr;
    std::unique_ptr<channel::Channel> old;
    {
      std::lock_guard lock(mu);
      if (session && !session->ended) {
        s = session.get();
        old = std::move(s->upstream);
        if (old) old->abort();
      }
    }
    if (!s) {
      Error e = make_error(ErrorCode::kUnavailable, "stage {}: no front session yet", spec.index);
      (void)send_message(*ch, error_reply(hello.request_id, e), channel::deadline_in(1s));
      ch->abort();
      return;
    }
    if (s->upstream_thread.joinable()) s->upstream_thread.join();  // the predecessor reconnected
    Message reply;
    reply.type = MsgType::kInfo;
    reply.request_id = hello.request_id;
    reply.info = info();
    if (!send_message(*ch, reply, channel::deadline_in(kSendTimeout)).ok()) {
      ch->abort();
      return;
    }
    data_session_count.fetch_add(1);
    channel::Channel* up = ch.get();
    {
      std::lock_guard lock(mu);
      s->upstream = std::move(ch);
      if (s->ended) up->abort();
    }
    s->upstream_thread = std::thread([this, s, up] { upstream_loop(*s, *up); });
  }

  bool send_control(Session& s, const Message& m) {
    std::lock_guard lock(s.control_send);
    Status st = send_message(*s.control, m, channel::deadline_in(kSendTimeout));
    if (!st.ok()) s.control->abort();
    return st.ok();
  }

  // The front's channel: pings, and for stage 0 the batches and resets.
  void control_loop(Session& s) {
    for (;;) {
      auto m = recv_message(*s.control, channel::deadline_in(24h));
      if (!m.ok()) {
        if (m.error().code() != ErrorCode::kCancelled) {
          spdlog::info("pipeline stage {}: session with {} ended: {}", spec.index, s.control->peer(),
                       m.error().message());
        }
        break;
      }
      received.fetch_add(1);
      if (m->type == MsgType::kPing) {
        Message pong;
        pong.type = MsgType::kPong;
        pong.request_id = m->request_id;
        if (!send_control(s, pong)) break;
      } else if (spec.index == 0 && (m->type == MsgType::kForward || m->type == MsgType::kReset)) {
        pass(s, *m);
      } else {
        send_control(s, error_reply(m->request_id, make_error(ErrorCode::kInvalidArgument,
                                                              "stage {}: unexpected message type {} from the front",
                                                              spec.index, static_cast<int>(m->type))));
        break;
      }
    }
    close_session(s);  // the front is gone: so is the session (its data channels end with it)
  }

  // The predecessor's data channel: batches, resets and error sentinels, in order.
  void upstream_loop(Session& s, channel::Channel& up) {
    for (;;) {
      auto m = recv_message(up, channel::deadline_in(24h));
      if (!m.ok()) {
        if (m.error().code() != ErrorCode::kCancelled && !s.ended) {
          spdlog::info("pipeline stage {}: data channel from stage {} ended: {}", spec.index, spec.index - 1,
                       m.error().message());
        }
        return;
      }
      received.fetch_add(1);
      if (m->type != MsgType::kForward && m->type != MsgType::kReset && m->type != MsgType::kError) {
        spdlog::warn("pipeline stage {}: unexpected message type {} on the data channel from stage {}", spec.index,
                     static_cast<int>(m->type), spec.index - 1);
        up.abort();
        return;
      }
      pass(s, *m);
    }
  }

  // Runs a batch or a reset and passes the result on; an error sentinel from upstream is passed on as it is.
  void pass(Session& s, const Message& m) {
    if (m.type == MsgType::kError) return deliver(s, m);
    if (m.type == MsgType::kReset) {
      bool in_range;
      {
        std::lock_guard lock(work_mu);
        in_range = m.slot < caches.size();
        if (in_range) caches[m.slot].clear();
      }
      if (!in_range) {
        return deliver(s, error_reply(m.request_id, make_error(ErrorCode::kInvalidArgument,
                                                               "stage {}: reset of slot {} out of range", spec.index,
                                                               m.slot)));
      }
      return deliver(s, m);
    }
    auto out = forward(m);
    deliver(s, out.ok() ? std::move(out).value() : error_reply(m.request_id, out.error()));
  }

  // To the successor (a forward is then noted done to the front), or from the last stage to the front. A successor
  // that cannot be reached gets an error sentinel naming it, sent to the front.
  void deliver(Session& s, const Message& m) {
    if (last()) {
      if (m.type != MsgType::kReset) send_control(s, m);
      return;
    }
    Status st = s.downstream_lost ? make_error(ErrorCode::kUnavailable, "the data channel is closed")
                                  : send_message(*s.downstream, m, channel::deadline_in(kSendTimeout));
    if (!st.ok()) {
      s.downstream_lost = true;
      s.downstream->abort();
      Error e(st.error().code() == ErrorCode::kTimeout ? ErrorCode::kTimeout : ErrorCode::kUnavailable,
              fmt::format("unreachable from stage {}: {}", spec.index, st.error().message()));
      send_control(s, error_reply(m.request_id, e, spec.index + 1));
      return;
    }
    if (m.type == MsgType::kForward) {
      Message done;
      done.type = MsgType::kDone;
      done.request_id = m.request_id;
      send_control(s, done);
    }
  }

  // Checks the batch against this stage's slots, caches and shapes, and fills `requests`.
  Status prepare(const Message& m) {
    requests.clear();
    // The payload must match the segments before any segment is cut out of it.
    size_t total = 0;
    for (const Segment& s : m.segments) total += s.n_tokens;
    const size_t n_embd = model->hparams().n_embd;
    if (model->first_stage() ? m.tokens.size() != total : m.values.size() != total * n_embd) {
      return make_error(ErrorCode::kInvalidArgument, "stage {}: the batch carries {} token ids and {} hidden values for {} tokens of width {}",
                        spec.index, m.tokens.size(), m.values.size(), total, n_embd);
    }
    size_t offset = 0;
    for (size_t i = 0; i < m.segments.size(); ++i) {
      const Segment& s = m.segments[i];
      if (s.slot >= caches.size()) {
        return make_error(ErrorCode::kInvalidArgument, "stage {}: segment {}: slot {} is out of range ({} slots)",
                          spec.index, i, s.slot, caches.size());
      }
      engine::KvCache& cache = caches[s.slot];
      if (s.pos0 != cache.n_past()) {
        return make_error(ErrorCode::kInvalidArgument, "stage {}: slot {} is at position {}, the batch says {}",
                          spec.index, s.slot, cache.n_past(), s.pos0);
      }
      engine::ForwardRequest r;
      r.cache = &cache;
      r.n_tokens = s.n_tokens;
      r.logits = s.want_logits ? engine::LogitsMode::kLast : engine::LogitsMode::kNone;
      if (model->first_stage()) r.tokens = std::span<const int32_t>(m.tokens).subspan(offset, s.n_tokens);
      requests.push_back(r);
      offset += s.n_tokens;
    }
    if (!model->first_stage()) ctx.set_hidden(m.values);
    return ok_status();
  }

  // Runs a batch: the successor's batch (the same segments, this stage's hidden states) or, on the last stage, the
  // logits for the front.
  Result<Message> forward(const Message& m) {
    std::lock_guard lock(work_mu);
    VEIL_TRY(prepare(m));
    if (options.before_forward) options.before_forward();
    VEIL_TRY(model->forward(requests, ctx));
    Message out;
    out.request_id = m.request_id;
    if (model->last_stage()) {
      out.type = MsgType::kOutput;
      out.output = OutputKind::kLogits;
      out.rows = static_cast<uint32_t>(ctx.logit_rows());
      out.width = model->hparams().n_vocab;
      out.values.assign(ctx.logits().begin(), ctx.logits().end());
    } else {
      out.type = MsgType::kForward;
      out.segments = m.segments;
      out.values.assign(ctx.hidden().begin(), ctx.hidden().end());
    }
    return out;
  }
};

Result<std::unique_ptr<StageServer>> StageServer::start(const ShardManifest& manifest, uint32_t index,
                                                        std::shared_ptr<const engine::Model> model,
                                                        StageOptions options) {
  if (index >= manifest.stages.size()) {
    return make_error(ErrorCode::kInvalidArgument, "stage: index {} is out of range ({} stages in the manifest)", index,
                      manifest.stages.size());
  }
  const StageSpec& spec = manifest.stages[index];
  if (!model) return make_error(ErrorCode::kInvalidArgument, "stage {}: no model", index);
  const engine::HParams& hp = model->hparams();
  if (hp.n_layer != manifest.n_layers) {
    return make_error(ErrorCode::kInvalidArgument, "stage {}: the model has {} layers, the manifest says n_layers {}",
                      index, hp.n_layer, manifest.n_layers);
  }
  if (model->layers().begin != spec.layer_begin || model->layers().end != spec.layer_end) {
    return make_error(ErrorCode::kInvalidArgument, "stage {}: the model is loaded with layers [{}, {}), the manifest says [{}, {})",
                      index, model->layers().begin, model->layers().end, spec.layer_begin, spec.layer_end);
  }
  if (!options.channel.attester) return make_error(ErrorCode::kInvalidArgument, "stage {}: no attester", index);
  if (options.max_slots == 0 || options.max_slots > 1024) {
    return make_error(ErrorCode::kInvalidArgument, "stage {}: max_slots {} is not in 1..1024", index, options.max_slots);
  }
  if (options.channel.mode != channel::Mode::kServerAttested || options.channel.verifier) {
    return make_error(ErrorCode::kInvalidArgument,
                      "stage {}: set front_policy for mutual attestation, not the channel's mode or verifier", index);
  }
  if (!options.front_policy) options.front_policy = manifest.front_policy;
  channel::ChannelOptions down = options.channel;  // the successor's evidence, against the manifest's policy for it
  if (index + 1 < manifest.stages.size()) {
    down.verifier = channel::verifier_from_policy(manifest.stages[index + 1].policy, options.collateral);
  }
  if (options.front_policy) {
    // Mutual: the handshake accepts evidence satisfying the front's policy or the predecessor's; the hello that
    // follows says which it claims to be, and check_hello holds it to that one.
    std::vector<channel::EvidenceVerifier> accepted = {
        channel::verifier_from_policy(*options.front_policy, options.collateral)};
    if (index > 0) accepted.push_back(channel::verifier_from_policy(manifest.stages[index - 1].policy, options.collateral));
    options.channel.mode = channel::Mode::kMutual;
    options.channel.verifier = [accepted](const attest::Evidence& ev,
                                          const attest::ReportData& expected) -> Result<attest::Claims> {
      Result<attest::Claims> first = accepted.front()(ev, expected);
      for (size_t i = 1; i < accepted.size() && !first.ok(); ++i) {
        if (auto r = accepted[i](ev, expected); r.ok()) return r;
      }
      return first;
    };
  }
  // Data channels are mutual when every stage runs mutual: the manifest says so (a --front-policy given to one stage
  // makes only that stage mutual, and its predecessor, not told, is refused).
  if (manifest.front_policy) down.mode = channel::Mode::kMutual;
  VEIL_ASSIGN_OR_RETURN(channel::Endpoint ep, stage_endpoint(options.listen.empty() ? spec.endpoint : options.listen));
  VEIL_ASSIGN_OR_RETURN(auto listener, channel::listen(ep));

  auto impl = std::make_unique<Impl>(hp, std::max<uint32_t>(1, options.threads));
  impl->manifest = manifest;
  impl->spec = spec;
  impl->downstream_options = std::move(down);
  impl->n_layers = manifest.n_layers;
  impl->model = std::move(model);
  uint32_t n_ctx = options.n_ctx ? options.n_ctx : std::min<uint32_t>(hp.n_ctx_train ? hp.n_ctx_train : 2048, 2048);
  for (uint32_t i = 0; i < options.max_slots; ++i) impl->caches.push_back(impl->model->new_cache(n_ctx, options.kv_type));
  impl->n_ctx = impl->caches.front().n_ctx();
  impl->options = std::move(options);
  impl->listener = std::move(listener);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<StageServer>(new StageServer(std::move(impl)));
}

StageServer::StageServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StageServer::~StageServer() { stop(); }

std::string StageServer::address() const { return impl_->listener->address(); }

void StageServer::stop() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    if (impl_->session) impl_->session->abort_all();
  }
  impl_->listener->close();
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint64_t StageServer::messages_received() const { return impl_->received.load(); }
uint64_t StageServer::sessions() const { return impl_->session_count.load(); }
uint64_t StageServer::data_sessions() const { return impl_->data_session_count.load(); }

}  // namespace veil::pipeline
