// The broker's server and client over the attested channel (mutual attestation).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "kbs/kbs.h"
#include "sealed/sealed.h"

namespace veil::kbs {
namespace {

constexpr size_t kMaxRequest = 4096;
constexpr uint8_t kReplyOk = 0;
constexpr uint8_t kReplyError = 1;
constexpr size_t kKeyIdSize = 16;

Result<channel::Endpoint> endpoint_of(const std::string& address) {
  std::string a = address;
  if (a.find(':') != std::string::npos && a.rfind("tcp:", 0) != 0 && a.rfind("unix:", 0) != 0 &&
      a.rfind("vsock:", 0) != 0) {
    a = "tcp:" + a;  // "host:port"
  }
  auto e = channel::parse_endpoint(a);
  if (!e.ok()) return std::move(e).error().wrap(fmt::format("kbs address '{}'", address));
  return e;
}

// Node evidence: verified cryptographically against the collateral and bound to the transcript; the
// model's policy is applied later, once the request names the model.
channel::EvidenceVerifier node_verifier(attest::Collateral collateral, std::function<TimePoint()> now) {
  return [collateral = std::move(collateral), now = std::move(now)](
             const attest::Evidence& evidence, const attest::ReportData& expected) -> Result<attest::Claims> {
    const attest::Verifier* v = attest::verifier_for(evidence.type);
    if (v == nullptr) {
      return make_error(ErrorCode::kSecurity, "kbs: no verifier for evidence type {}", attest::tee_type_name(evidence.type));
    }
    VEIL_ASSIGN_OR_RETURN(attest::Claims claims, v->verify(evidence, collateral, now()));
    if (!ct_equal(claims.report_data, expected)) {
      return make_error(ErrorCode::kSecurity, "kbs: the node's evidence does not bind this channel (report_data)");
    }
    return claims;
  };
}

Bytes error_reply(const Error& e) {
  Bytes out{kReplyError, static_cast<uint8_t>(e.code())};
  std::string m = e.message().substr(0, 1024);
  out.insert(out.end(), m.begin(), m.end());
  return out;
}

Result<ReleaseRequest> parse_request(ByteView msg, const std::string& peer) {
  if (msg.size() > kMaxRequest) return make_error(ErrorCode::kCorrupt, "kbs request from {}: {} bytes is too large", peer, msg.size());
  auto j = nlohmann::json::parse(msg.begin(), msg.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "kbs request from {}: not a JSON object", peer);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "type" && it.key() != "model_id" && it.key() != "version") {
      return make_error(ErrorCode::kCorrupt, "kbs request from {}: field '{}': unknown", peer, it.key().substr(0, 64));
    }
  }
  if (!j.contains("type") || j["type"] != "key-request") {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'type': must be \"key-request\"", peer);
  }
  if (!j.contains("model_id") || !j["model_id"].is_string() || j["model_id"].get<std::string>().empty() ||
      j["model_id"].get<std::string>().size() > 128) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'model_id': must be a string of 1..128 characters", peer);
  }
  if (!j.contains("version") || !j["version"].is_number_unsigned()) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'version': must be a non-negative integer", peer);
  }
  return ReleaseRequest{j["model_id"].get<std::string>(), j["version"].get<uint64_t>(), peer};
}

}  // namespace

struct Server::Impl {
  Broker* broker = nullptr;
  ServerOptions options;
  channel::ChannelOptions channel_options;
  std::unique_ptr<channel::Listener> listener;
  std::string address;
  std::thread acceptor;
  std::vector<std::thread> workers;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> served{0};
  // Accepted connections waiting for a worker. Bounded: beyond it new connections are closed at once, so a
  // flood of silent peers costs a bounded amount of memory and never delays the peers already being served.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<channel::Transport>> pending;

  void serve_one(std::unique_ptr<channel::Transport> transport) {
    std::string peer = transport->peer();
    auto ch = channel::server_handshake(std::move(transport), channel_options);
    if (!ch.ok()) {
      spdlog::warn("kbs: handshake with {} failed: {}", peer, ch.error().message());
      return;
    }
    auto deadline = channel::deadline_in(options.io_timeout);
    auto msg = (*ch)->recv(deadline);
    if (!msg.ok()) {
      spdlog::warn("kbs: reading the request from {}: {}", peer, msg.error().message());
      (*ch)->abort();
      return;
    }
    Bytes reply;
    const attest::Claims* claims = (*ch)->peer_claims();
    auto req = parse_request(*msg, peer);
    if (!req.ok()) {
      reply = error_reply(req.error());
    } else if (claims == nullptr) {
      reply = error_reply(Error(ErrorCode::kSecurity, "kbs: the node did not attest"));
    } else {
      auto rel = broker->release(*req, *claims);
      if (!rel.ok()) {
        reply = error_reply(rel.error());
      } else {
        reply.reserve(1 + rel->key.size() + kKeyIdSize);
        reply.push_back(kReplyOk);
        reply.insert(reply.end(), rel->key.view().begin(), rel->key.view().end());
        reply.insert(reply.end(), rel->key_id.begin(), rel->key_id.end());
      }
    }
    Status st = (*ch)->send(reply, deadline);
    secure_zero(reply.data(), reply.size());
    if (!st.ok()) spdlog::warn("kbs: replying to {}: {}", peer, st.error().message());
    (void)(*ch)->close(deadline);
    served.fetch_add(1);
  }

  void accept_loop() {
    while (!stopping.load()) {
      auto t = listener->accept(channel::deadline_in(std::chrono::hours(24)));
      if (stopping.load()) break;
      if (!t.ok()) {
        if (t.error().code() == ErrorCode::kTimeout) continue;
        spdlog::warn("kbs: accept: {}", t.error().message());
        if (t.error().code() == ErrorCode::kCancelled || t.error().code() == ErrorCode::kUnavailable) break;
        continue;
      }
      std::unique_lock<std::mutex> lock(mu);
      if (pending.size() >= options.max_pending) {
        lock.unlock();
        spdlog::warn("kbs: {} connections waiting; closing the one from {}", options.max_pending, (*t)->peer());
        continue;  // the transport is destroyed (closed) here
      }
      pending.push_back(std::move(*t));
      lock.unlock();
      cv.notify_one();
    }
  }

  void worker_loop() {
    while (true) {
      std::unique_ptr<channel::Transport> t;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping.load() || !pending.empty(); });
        if (stopping.load()) return;  // connections still waiting are closed with the queue
        t = std::move(pending.front());
        pending.pop_front();
      }
      serve_one(std::move(t));
    }
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { stop(); }

Result<std::unique_ptr<Server>> Server::start(Broker& broker, const std::string& listen_address,
                                              ServerOptions options) {
  if (!options.attester) return make_error(ErrorCode::kInvalidArgument, "kbs serve: the broker needs an attester");
  auto impl = std::make_unique<Impl>();
  impl->broker = &broker;
  if (!options.now) options.now = [] { return std::chrono::system_clock::now(); };
  impl->channel_options.mode = channel::Mode::kMutual;
  impl->channel_options.attester = options.attester;
  impl->channel_options.verifier =
      options.verifier_override ? options.verifier_override : node_verifier(options.collateral, options.now);
  impl->channel_options.handshake_timeout = options.handshake_timeout;
  impl->channel_options.max_message = 64u << 10;
  impl->options = std::move(options);
  VEIL_ASSIGN_OR_RETURN(channel::Endpoint ep, endpoint_of(listen_address));
  auto l = channel::listen(ep);
  if (!l.ok()) return std::move(l).error().wrap("kbs serve");
  impl->listener = std::move(*l);
  impl->address = impl->listener->address();
  Impl* raw = impl.get();
  const uint32_t n_workers = std::max<uint32_t>(1, impl->options.workers);
  for (uint32_t i = 0; i < n_workers; ++i) impl->workers.emplace_back([raw] { raw->worker_loop(); });
  impl->acceptor = std::thread([raw] { raw->accept_loop(); });
  spdlog::info("kbs: serving on {}", impl->address);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

std::string Server::address() const { return impl_->address; }
uint64_t Server::connections_served() const { return impl_->served.load(); }

void Server::stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  impl_->listener->close();
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);  // pairs with the workers' wait: no lost wake-up
  }
  impl_->cv.notify_all();
  for (auto& w : impl_->workers) {
    if (w.joinable()) w.join();  // a worker in the middle of a connection finishes it (bounded by the timeouts)
  }
  impl_->pending.clear();
}

Result<SecretBytes> fetch_model_key(const std::string& kbs_address, const std::string& model_id, uint64_t version,
                                    channel::Attester attester, channel::EvidenceVerifier broker_verifier,
                                    const FetchOptions& options) {
  if (!attester || !broker_verifier) {
    return make_error(ErrorCode::kInvalidArgument, "fetch_model_key: an attester and a broker verifier are required");
  }
  VEIL_ASSIGN_OR_RETURN(channel::Endpoint ep, endpoint_of(kbs_address));
  channel::ChannelOptions co;
  co.mode = channel::Mode::kMutual;
  co.attester = std::move(attester);
  co.verifier = std::move(broker_verifier);
  co.handshake_timeout = options.timeout;
  co.max_message = 64u << 10;
  auto where = [&] { return fmt::format("kbs {} (model '{}' version {})", kbs_address, model_id, version); };
  auto transport = channel::connect(ep, channel::deadline_in(options.timeout));
  if (!transport.ok()) return std::move(transport).error().wrap(where());
  auto ch = channel::client_handshake(std::move(*transport), co);
  if (!ch.ok()) return std::move(ch).error().wrap(where());
  nlohmann::json req;
  req["type"] = "key-request";
  req["model_id"] = model_id;
  req["version"] = version;
  auto deadline = channel::deadline_in(options.timeout);
  std::string text = req.dump();
  Status st = (*ch)->send(as_bytes(text), deadline);
  if (!st.ok()) return std::move(st).error().wrap(where());
  Bytes reply;
  Status rs = (*ch)->recv_into(reply, deadline);
  if (!rs.ok()) return std::move(rs).error().wrap(where());
  (void)(*ch)->close(deadline);
  if (reply.size() >= 2 && reply[0] == kReplyError) {
    uint8_t code = reply[1];
    ErrorCode ec = code <= static_cast<uint8_t>(ErrorCode::kInternal) ? static_cast<ErrorCode>(code) : ErrorCode::kSecurity;
    std::string msg(reply.begin() + 2, reply.end());
    for (char& c : msg) {
      if (c < 0x20 || c > 0x7e) c = '?';
    }
    return make_error(ec, "{}: refused: {}", where(), msg);
  }
  if (reply.size() != 1 + sealed::kModelKeySize + kKeyIdSize || reply[0] != kReplyOk) {
    secure_zero(reply.data(), reply.size());
    return make_error(ErrorCode::kCorrupt, "{}: malformed reply ({} bytes)", where(), reply.size());
  }
  SecretBytes key(ByteView(reply.data() + 1, sealed::kModelKeySize));
  ByteView key_id(reply.data() + 1 + sealed::kModelKeySize, kKeyIdSize);
  bool id_ok = ct_equal(sealed::key_id_for(key.view()), key_id);
  secure_zero(reply.data(), reply.size());
  if (!id_ok) return make_error(ErrorCode::kSecurity, "{}: the released key does not match its key id", where());
  return key;
}

}  // namespace veil::kbs
