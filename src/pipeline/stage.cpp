// StageServer: one layer range served to one front at a time over an attested channel (runtime.h).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "pipeline/runtime.h"

namespace veil::pipeline {

using namespace std::chrono_literals;

struct StageServer::Impl {
  StageSpec spec;
  uint32_t n_layers = 0;
  std::shared_ptr<const engine::Model> model;
  StageOptions options;
  uint32_t n_ctx = 0;
  std::unique_ptr<channel::Listener> listener;
  engine::Context ctx;
  std::vector<engine::KvCache> caches;
  std::vector<engine::ForwardRequest> requests;
  std::thread thread;
  std::mutex mu;  // guards current, stopping
  channel::Channel* current = nullptr;
  bool stopping = false;
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> session_count{0};

  Impl(const engine::HParams& hp, uint32_t threads) : ctx(hp, {.threads = threads}) {}

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
      {
        std::lock_guard lock(mu);
        if (stopping) break;
        current = ch->get();
      }
      serve(**ch);
      std::lock_guard lock(mu);
      current = nullptr;
    }
  }

  Message error_reply(uint64_t request_id, const Error& e) const {
    Message r;
    r.type = MsgType::kError;
    r.request_id = request_id;
    r.error_stage = spec.index;
    r.error_code = e.code();
    r.reason = e.message().substr(0, kMaxReasonBytes);
    return r;
  }

  StageInfo info() const {
    const engine::HParams& hp = model->hparams();
    return {spec.index, spec.layer_begin, spec.layer_end, n_layers, hp.n_embd, hp.n_vocab, n_ctx,
            static_cast<uint32_t>(caches.size())};
  }

  Status check_hello(const Message& m) const {
    const StageInfo& want = m.info;
    if (want.stage_index != spec.index || want.layer_begin != spec.layer_begin || want.layer_end != spec.layer_end ||
        want.n_layers != n_layers) {
      return make_error(ErrorCode::kInvalidArgument,
                        "stage {}: the front asked for stage {} layers [{}, {}) of {}; this stage runs [{}, {}) of {}",
                        spec.index, want.stage_index, want.layer_begin, want.layer_end, want.n_layers,
                        spec.layer_begin, spec.layer_end, n_layers);
    }
    return ok_status();
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

  Result<Message> forward(const Message& m) {
    VEIL_TRY(prepare(m));
    if (options.before_forward) options.before_forward();
    VEIL_TRY(model->forward(requests, ctx));
    Message out;
    out.type = MsgType::kOutput;
    out.request_id = m.request_id;
    std::span<const float> v;
    if (model->last_stage()) {
      out.output = OutputKind::kLogits;
      out.rows = static_cast<uint32_t>(ctx.logit_rows());
      out.width = model->hparams().n_vocab;
      v = ctx.logits();
    } else {
      out.output = OutputKind::kHidden;
      out.width = model->hparams().n_embd;
      v = ctx.hidden();
      out.rows = static_cast<uint32_t>(v.size() / out.width);
    }
    out.values.assign(v.begin(), v.end());
    return out;
  }

  // One message in, at most one reply out. Returns false when the session must end (protocol misuse).
  bool handle(const Message& m, bool& hello_done, Message& reply) {
    reply = Message{};
    reply.request_id = m.request_id;
    if (!hello_done && m.type != MsgType::kHello) {
      reply = error_reply(m.request_id, make_error(ErrorCode::kInvalidArgument, "stage {}: no hello yet", spec.index));
      return false;
    }
    switch (m.type) {
      case MsgType::kHello: {
        Status st = check_hello(m);
        if (!st.ok()) {
          reply = error_reply(m.request_id, st.error());
          return false;
        }
        hello_done = true;
        reply.type = MsgType::kInfo;
        reply.info = info();
        return true;
      }
      case MsgType::kForward: {
        auto out = forward(m);
        reply = out.ok() ? std::move(out).value() : error_reply(m.request_id, out.error());
        return true;
      }
      case MsgType::kReset:
        if (m.slot >= caches.size()) {
          reply = error_reply(m.request_id, make_error(ErrorCode::kInvalidArgument, "stage {}: reset of slot {} out of range",
                                                       spec.index, m.slot));
          return false;
        }
        caches[m.slot].clear();
        reply.type = MsgType::kPing;  // no reply is sent for a reset (see serve)
        return true;
      case MsgType::kPing:
        reply.type = MsgType::kPong;
        return true;
      default:
        reply = error_reply(m.request_id, make_error(ErrorCode::kInvalidArgument, "stage {}: unexpected message type {}",
                                                     spec.index, static_cast<int>(m.type)));
        return false;
    }
  }

  void serve(channel::Channel& ch) {
    session_count.fetch_add(1);
    for (auto& c : caches) c.clear();  // a new session starts from nothing
    bool hello_done = false;
    for (;;) {
      auto m = recv_message(ch, channel::deadline_in(24h));
      if (!m.ok()) {
        if (m.error().code() != ErrorCode::kCancelled) {
          spdlog::info("pipeline stage {}: session with {} ended: {}", spec.index, ch.peer(), m.error().message());
        }
        return;
      }
      received.fetch_add(1);
      Message reply;
      bool keep = handle(*m, hello_done, reply);
      bool silent = m->type == MsgType::kReset && keep;
      if (!silent) {
        Status st = send_message(ch, reply, channel::deadline_in(60s));
        if (!st.ok()) keep = false;
      }
      if (!keep) {
        ch.abort();
        return;
      }
    }
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
  VEIL_ASSIGN_OR_RETURN(channel::Endpoint ep, stage_endpoint(options.listen.empty() ? spec.endpoint : options.listen));
  VEIL_ASSIGN_OR_RETURN(auto listener, channel::listen(ep));

  auto impl = std::make_unique<Impl>(hp, std::max<uint32_t>(1, options.threads));
  impl->spec = spec;
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
    if (impl_->current) impl_->current->abort();
  }
  impl_->listener->close();
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint64_t StageServer::messages_received() const { return impl_->received.load(); }
uint64_t StageServer::sessions() const { return impl_->session_count.load(); }

}  // namespace veil::pipeline
