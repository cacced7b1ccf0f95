// The broker's server and client over the attested channel (mutual attestation).
#include <algorithm>
#include <array>
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
constexpr uint8_t kReplyRange = 2;
constexpr std::string_view kWholeKeyType = "key-request";
constexpr std::string_view kRangeKeyType = "range-key-request";
constexpr std::array<std::string_view, 3> kWholeKeyFields = {"type", "model_id", "version"};
constexpr std::array<std::string_view, 8> kRangeKeyFields = {"type",       "model_id",    "version",
                                                             "first_layer", "last_layer", "layer_count",
                                                             "tied_embeddings", "metadata_only"};
constexpr std::array<std::string_view, 4> kLayerFields = {"first_layer", "last_layer", "layer_count", "tied_embeddings"};
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

// A u32 field of a range request.
Result<uint32_t> u32_field(const nlohmann::json& j, const char* name, const std::string& peer) {
  if (!j.contains(name) || !j[name].is_number_unsigned() || j[name].get<uint64_t>() > UINT32_MAX) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field '{}': must be an integer in 0..2^32-1", peer,
                      name);
  }
  return j[name].get<uint32_t>();
}

// "metadata_only": true names no layer: the layer fields must then be absent, so a request means one thing.
Result<bool> metadata_only_field(const nlohmann::json& j, const std::string& peer) {
  if (!j.contains("metadata_only")) return false;
  if (!j["metadata_only"].is_boolean()) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'metadata_only': must be true or false", peer);
  }
  if (!j["metadata_only"].get<bool>()) return false;
  for (std::string_view f : kLayerFields) {
    if (j.contains(std::string(f))) {
      return make_error(ErrorCode::kCorrupt, "kbs request from {}: field '{}': not allowed with metadata_only", peer, f);
    }
  }
  return true;
}

Result<RangeRequest> parse_range(const nlohmann::json& j, const std::string& peer) {
  RangeRequest r;
  VEIL_ASSIGN_OR_RETURN(r.metadata_only, metadata_only_field(j, peer));
  if (r.metadata_only) return r;
  VEIL_ASSIGN_OR_RETURN(r.first_layer, u32_field(j, "first_layer", peer));
  VEIL_ASSIGN_OR_RETURN(r.last_layer, u32_field(j, "last_layer", peer));
  VEIL_ASSIGN_OR_RETURN(r.layer_count, u32_field(j, "layer_count", peer));
  if (!j.contains("tied_embeddings") || !j["tied_embeddings"].is_boolean()) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'tied_embeddings': must be true or false", peer);
  }
  r.tied_embeddings = j["tied_embeddings"].get<bool>();
  auto spec = sealed::range_spec_for({r.first_layer, r.last_layer}, r.layer_count, r.tied_embeddings);
  if (!spec.ok()) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: fields 'first_layer', 'last_layer', 'layer_count': {}",
                      peer, spec.error().message());
  }
  return r;
}

SecretBytes ok_reply(const Release& rel) {
  if (rel.range_keys) {
    SecretBytes set = rel.range_keys->serialize();
    SecretBytes out(1 + set.size());
    out.data()[0] = kReplyRange;
    std::copy(set.data(), set.data() + set.size(), out.data() + 1);
    return out;
  }
  SecretBytes out(1 + rel.key.size() + kKeyIdSize);
  out.data()[0] = kReplyOk;
  std::copy(rel.key.data(), rel.key.data() + rel.key.size(), out.data() + 1);
  std::copy(rel.key_id.begin(), rel.key_id.end(), out.data() + 1 + rel.key.size());
  return out;
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
    SecretBytes reply;
    const attest::Claims* claims = (*ch)->peer_claims();
    auto req = parse_key_request(*msg, peer);
    if (!req.ok()) {
      reply = SecretBytes(ByteView(error_reply(req.error())));
    } else if (claims == nullptr) {
      reply = SecretBytes(ByteView(error_reply(Error(ErrorCode::kSecurity, "kbs: the node did not attest"))));
    } else {
      auto rel = broker->release(*req, *claims);
      reply = rel.ok() ? ok_reply(*rel) : SecretBytes(ByteView(error_reply(rel.error())));
    }
    Status st = (*ch)->send(reply.view(), deadline);
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

Result<ReleaseRequest> parse_key_request(ByteView msg, const std::string& peer) {
  if (msg.size() > kMaxRequest) return make_error(ErrorCode::kCorrupt, "kbs request from {}: {} bytes is too large", peer, msg.size());
  auto j = nlohmann::json::parse(msg.begin(), msg.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "kbs request from {}: not a JSON object", peer);
  if (!j.contains("type") || !j["type"].is_string() ||
      (j["type"] != kWholeKeyType && j["type"] != kRangeKeyType)) {
    return make_error(ErrorCode::kCorrupt,
                      "kbs request from {}: field 'type': must be \"key-request\" or \"range-key-request\"", peer);
  }
  const bool range = j["type"] == kRangeKeyType;
  for (auto it = j.begin(); it != j.end(); ++it) {
    auto known = [&](const auto& fields) { return std::find(fields.begin(), fields.end(), it.key()) != fields.end(); };
    if (range ? !known(kRangeKeyFields) : !known(kWholeKeyFields)) {
      return make_error(ErrorCode::kCorrupt, "kbs request from {}: field '{}': unknown", peer, it.key().substr(0, 64));
    }
  }
  if (!j.contains("model_id") || !j["model_id"].is_string() || j["model_id"].get<std::string>().empty() ||
      j["model_id"].get<std::string>().size() > 128) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'model_id': must be a string of 1..128 characters", peer);
  }
  if (!j.contains("version") || !j["version"].is_number_unsigned()) {
    return make_error(ErrorCode::kCorrupt, "kbs request from {}: field 'version': must be a non-negative integer", peer);
  }
  ReleaseRequest r{j["model_id"].get<std::string>(), j["version"].get<uint64_t>(), peer, std::nullopt};
  if (range) {
    VEIL_ASSIGN_OR_RETURN(r.range, parse_range(j, peer));
  }
  return r;
}

Result<Release> parse_key_reply(ByteView reply, bool range) {
  if (reply.size() >= 2 && reply[0] == kReplyError) {
    uint8_t code = reply[1];
    ErrorCode ec = code <= static_cast<uint8_t>(ErrorCode::kInternal) ? static_cast<ErrorCode>(code) : ErrorCode::kSecurity;
    std::string msg(reply.begin() + 2, reply.end());
    for (char& c : msg) {
      if (c < 0x20 || c > 0x7e) c = '?';
    }
    return make_error(ec, "refused: {}", msg);
  }
  Release out;
  if (range) {
    if (reply.empty() || reply[0] != kReplyRange) {
      return make_error(ErrorCode::kCorrupt, "malformed reply ({} bytes, expected a range key set)", reply.size());
    }
    auto set = sealed::RangeKeySet::parse(reply.subspan(1));
    if (!set.ok()) return std::move(set).error().wrap("malformed reply");
    out.key_id = set->key_id();
    out.range_keys = std::move(*set);
    return out;
  }
  if (reply.size() != 1 + sealed::kModelKeySize + kKeyIdSize || reply[0] != kReplyOk) {
    return make_error(ErrorCode::kCorrupt, "malformed reply ({} bytes)", reply.size());
  }
  out.key = SecretBytes(reply.subspan(1, sealed::kModelKeySize));
  std::copy(reply.begin() + 1 + sealed::kModelKeySize, reply.end(), out.key_id.begin());
  if (!ct_equal(sealed::key_id_for(out.key.view()), out.key_id)) {
    return make_error(ErrorCode::kSecurity, "the released key does not match its key id");
  }
  return out;
}

namespace {

// One request and its reply over a fresh mutually attested channel.
Result<Release> exchange(const std::string& kbs_address, const nlohmann::json& request, bool range,
                         channel::Attester attester, channel::EvidenceVerifier broker_verifier,
                         const FetchOptions& options, const std::string& where) {
  if (!attester || !broker_verifier) {
    return make_error(ErrorCode::kInvalidArgument, "{}: an attester and a broker verifier are required", where);
  }
  auto ep = endpoint_of(kbs_address);
  if (!ep.ok()) return std::move(ep).error().wrap(where);
  channel::ChannelOptions co;
  co.mode = channel::Mode::kMutual;
  co.attester = std::move(attester);
  co.verifier = std::move(broker_verifier);
  co.handshake_timeout = options.timeout;
  co.max_message = 64u << 10;
  auto transport = channel::connect(*ep, channel::deadline_in(options.timeout));
  if (!transport.ok()) return std::move(transport).error().wrap(where);
  auto ch = channel::client_handshake(std::move(*transport), co);
  if (!ch.ok()) return std::move(ch).error().wrap(where);
  auto deadline = channel::deadline_in(options.timeout);
  std::string text = request.dump();
  Status st = (*ch)->send(as_bytes(text), deadline);
  if (!st.ok()) return std::move(st).error().wrap(where);
  Bytes raw;
  Status rs = (*ch)->recv_into(raw, deadline);
  SecretBytes reply{ByteView(raw)};
  secure_zero(raw.data(), raw.size());
  if (!rs.ok()) return std::move(rs).error().wrap(where);
  (void)(*ch)->close(deadline);
  auto rel = parse_key_reply(reply.view(), range);
  if (!rel.ok()) return std::move(rel).error().wrap(where);
  return rel;
}

}  // namespace

Result<SecretBytes> fetch_model_key(const std::string& kbs_address, const std::string& model_id, uint64_t version,
                                    channel::Attester attester, channel::EvidenceVerifier broker_verifier,
                                    const FetchOptions& options) {
  nlohmann::json req;
  req["type"] = kWholeKeyType;
  req["model_id"] = model_id;
  req["version"] = version;
  std::string where = fmt::format("kbs {} (model '{}' version {})", kbs_address, model_id, version);
  VEIL_ASSIGN_OR_RETURN(Release rel, exchange(kbs_address, req, false, std::move(attester),
                                              std::move(broker_verifier), options, where));
  return std::move(rel.key);
}

Result<sealed::RangeKeySet> fetch_range_keys(const std::string& kbs_address, const std::string& model_id,
                                             uint64_t version, const RangeRequest& range, channel::Attester attester,
                                             channel::EvidenceVerifier broker_verifier, const FetchOptions& options) {
  std::string where = range.metadata_only
                          ? fmt::format("kbs {} (model '{}' version {}, metadata only)", kbs_address, model_id, version)
                          : fmt::format("kbs {} (model '{}' version {}, layers {}..{})", kbs_address, model_id, version,
                                        range.first_layer, range.last_layer);
  nlohmann::json req;
  req["type"] = kRangeKeyType;
  req["model_id"] = model_id;
  req["version"] = version;
  sealed::RangeSpec spec = sealed::metadata_only_spec();
  if (range.metadata_only) {
    req["metadata_only"] = true;
  } else {
    auto s = sealed::range_spec_for({range.first_layer, range.last_layer}, range.layer_count, range.tied_embeddings);
    if (!s.ok()) return std::move(s).error().wrap(where);
    spec = *s;
    req["first_layer"] = range.first_layer;
    req["last_layer"] = range.last_layer;
    req["layer_count"] = range.layer_count;
    req["tied_embeddings"] = range.tied_embeddings;
  }
  VEIL_ASSIGN_OR_RETURN(Release rel, exchange(kbs_address, req, true, std::move(attester), std::move(broker_verifier),
                                              options, where));
  if (!rel.range_keys) return make_error(ErrorCode::kInternal, "{}: no range key set in the reply", where);
  sealed::RangeKeySet set = std::move(*rel.range_keys);
  const sealed::RangeSpec& got = set.spec();
  if (set.model_id() != model_id || set.model_version() != version || got.metadata_only != spec.metadata_only ||
      got.layers.first != spec.layers.first || got.layers.last != spec.layers.last || got.input != spec.input ||
      got.output != spec.output) {
    return make_error(ErrorCode::kSecurity, "{}: the broker released another range's keys ({} of '{}' version {})",
                      where, set.describe(), set.model_id(), set.model_version());
  }
  return set;
}

}  // namespace veil::kbs
