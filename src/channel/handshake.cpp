// The handshake (docs/protocol.md "Handshake"). Every state transition is in Handshake::step(); the drivers
// below only move frames between step() and the transport.
#include <spdlog/spdlog.h>

#include "channel/session.h"

namespace veil::channel {
namespace {

using wire::FrameType;

struct Frame {
  FrameType type;
  Bytes body;
};

Bytes concat(std::string_view label, ByteView tail) {
  Bytes b(label.begin(), label.end());
  b.insert(b.end(), tail.begin(), tail.end());
  return b;
}

// report_data = SHA-512(label || transcript_hash).
attest::ReportData report_data_for(std::string_view label, const crypto::Sha256Digest& th) {
  auto digest = crypto::sha512(concat(label, th));
  attest::ReportData rd{};
  std::copy(digest.begin(), digest.end(), rd.begin());
  return rd;
}

class Handshake {
 public:
  // The server's flight is three frames sent back to back (docs/protocol.md "Handshake"): its hello first, so the
  // client computes the shared secret while the server produces its evidence; the evidence, which the client verifies
  // while the server computes the shared secret; and the finished MAC.
  enum class State {
    kClientStart,
    kClientWaitServerHello,
    kClientWaitServerEvidence,
    kClientWaitServerFinished,
    kServerWaitClientHello,
    kServerSendEvidence,
    kServerSendFinished,
    kServerWaitClientFinish,
    kDone
  };

  Handshake(bool client, const ChannelOptions& options)
      : options_(options), state_(client ? State::kClientStart : State::kServerWaitClientHello) {}

  bool done() const { return state_ == State::kDone; }
  bool wants_input() const {
    return state_ != State::kClientStart && state_ != State::kServerSendEvidence &&
           state_ != State::kServerSendFinished && state_ != State::kDone;
  }
  // The frame type the next incoming frame must have.
  FrameType expected() const {
    switch (state_) {
      case State::kClientWaitServerHello: return FrameType::kServerHello;
      case State::kClientWaitServerEvidence: return FrameType::kServerEvidence;
      case State::kClientWaitServerFinished: return FrameType::kServerFinished;
      case State::kServerWaitClientHello: return FrameType::kClientHello;
      default: return FrameType::kClientFinish;
    }
  }
  HandshakeResult take_result() { return std::move(result_); }

  // The one place where the handshake changes state. `in` is the received frame body (nullptr exactly when
  // !wants_input()). Returns the frame to send, if any. Any error is final: the caller abandons the handshake.
  Result<std::optional<Frame>> step(const Bytes* in) {
    if (wants_input() != (in != nullptr)) return make_error(ErrorCode::kInternal, "handshake: step input mismatch");
    switch (state_) {
      case State::kClientStart: {
        Bytes body;
        start_hello(body);
        transcript_ = concat(wire::kLabel, body);
        state_ = State::kClientWaitServerHello;
        return send(FrameType::kClientHello, std::move(body));
      }
      case State::kClientWaitServerHello: {
        VEIL_ASSIGN_OR_RETURN(auto hello, wire::parse_server_hello(*in));
        if (hello.suite != uint16_t(options_.suite)) {
          return make_error(ErrorCode::kSecurity, "ServerHello: byte 2: suite {} differs from the requested {}",
                            hello.suite, uint16_t(options_.suite));
        }
        if (hello.mode != uint8_t(options_.mode)) {
          return make_error(ErrorCode::kSecurity, "ServerHello: byte 4: mode {} differs from the requested {}",
                            hello.mode, uint8_t(options_.mode));
        }
        append(*in);
        th_hello_ = th();
        VEIL_TRY(derive_handshake_keys(hello.ephemeral));
        state_ = State::kClientWaitServerEvidence;
        return nothing();
      }
      case State::kClientWaitServerEvidence: {
        VEIL_ASSIGN_OR_RETURN(auto evidence, wire::parse_server_evidence(*in));
        auto claims = options_.verifier(evidence, report_data_for(kLabelServerEvidence, th_hello_));
        if (!claims.ok()) return std::move(claims).error().wrap("ServerEvidence: server evidence refused");
        result_.peer_claims = std::move(*claims);
        append(*in);
        state_ = State::kClientWaitServerFinished;
        return nothing();
      }
      case State::kClientWaitServerFinished: {
        VEIL_ASSIGN_OR_RETURN(auto finished, wire::parse_server_finished(*in));
        auto mac = crypto::hmac(crypto::HashAlg::kSha256, server_fin_.view(), th());
        if (!ct_equal(mac, finished)) {
          return make_error(ErrorCode::kSecurity, "ServerFinished: server_finished does not match (the server lacks "
                                                  "the session key, or the hello or evidence was altered)");
        }
        append(finished);
        Bytes body;
        if (options_.mode == Mode::kMutual) {
          auto ev = options_.attester(report_data_for(kLabelClientEvidence, th()));
          if (!ev.ok()) return std::move(ev).error().wrap("ClientFinish: producing client evidence");
          wire::encode_evidence(*ev, body);
        }
        append(body);
        auto cmac = crypto::hmac(crypto::HashAlg::kSha256, client_fin_.view(), th());
        body.insert(body.end(), cmac.begin(), cmac.end());
        append(cmac);
        VEIL_TRY(derive_traffic_keys(/*client=*/true));
        state_ = State::kDone;
        return send(FrameType::kClientFinish, std::move(body));
      }
      case State::kServerWaitClientHello: {
        VEIL_ASSIGN_OR_RETURN(auto hello, wire::parse_client_hello(*in));
        if (hello.mode != uint8_t(options_.mode)) {
          return make_error(ErrorCode::kSecurity, "ClientHello: byte 4: client asks for mode {}, this server requires {}",
                            hello.mode, uint8_t(options_.mode));
        }
        auto suite = *crypto::aead_suite_from_id(hello.suite);  // parse_hello checked the id
        if (!options_.accepted_suites.count(suite)) {
          return make_error(ErrorCode::kSecurity, "ClientHello: byte 2: suite {} is not accepted by this server",
                            crypto::aead_suite_name(suite));
        }
        options_.suite = suite;
        peer_ephemeral_ = hello.ephemeral;
        transcript_ = concat(wire::kLabel, *in);
        Bytes body;
        start_hello(body);
        append(body);
        th_hello_ = th();
        state_ = State::kServerSendEvidence;
        return send(FrameType::kServerHello, std::move(body));
      }
      case State::kServerSendEvidence: {
        auto ev = options_.attester(report_data_for(kLabelServerEvidence, th_hello_));
        if (!ev.ok()) return std::move(ev).error().wrap("ServerEvidence: producing server evidence");
        Bytes body;
        wire::encode_evidence(*ev, body);
        append(body);
        state_ = State::kServerSendFinished;
        return send(FrameType::kServerEvidence, std::move(body));
      }
      case State::kServerSendFinished: {
        VEIL_TRY(derive_handshake_keys(peer_ephemeral_));
        auto mac = crypto::hmac(crypto::HashAlg::kSha256, server_fin_.view(), th());
        Bytes body(mac.begin(), mac.end());
        append(body);
        state_ = State::kServerWaitClientFinish;
        return send(FrameType::kServerFinished, std::move(body));
      }
      case State::kServerWaitClientFinish: {
        VEIL_ASSIGN_OR_RETURN(auto cf, wire::parse_client_finish(*in, options_.mode));
        auto client_rd = report_data_for(kLabelClientEvidence, th());
        append(ByteView(*in).first(cf.evidence_end));
        auto mac = crypto::hmac(crypto::HashAlg::kSha256, client_fin_.view(), th());
        if (!ct_equal(mac, cf.finished)) {
          return make_error(ErrorCode::kSecurity,
                            "ClientFinish: byte {}: client_finished does not match (peer lacks the session key)",
                            cf.evidence_end);
        }
        if (options_.mode == Mode::kMutual) {
          auto claims = options_.verifier(*cf.evidence, client_rd);
          if (!claims.ok()) return std::move(claims).error().wrap("ClientFinish: client evidence refused");
          result_.peer_claims = std::move(*claims);
        }
        append(cf.finished);
        VEIL_TRY(derive_traffic_keys(/*client=*/false));
        state_ = State::kDone;
        return nothing();
      }
      case State::kDone:
        break;
    }
    return make_error(ErrorCode::kInternal, "handshake: step called after completion");
  }

 private:
  void start_hello(Bytes& body) {
    ephemeral_ = crypto::x25519_take_ephemeral();  // made while waiting on an earlier handshake, if any
    wire::Hello h;
    h.suite = uint16_t(options_.suite);
    h.mode = uint8_t(options_.mode);
    h.ephemeral = ephemeral_.public_key;
    crypto::random_bytes(h.nonce);
    wire::encode_hello(h, body);
  }

  static Result<std::optional<Frame>> send(FrameType type, Bytes body) {
    return std::optional<Frame>(Frame{type, std::move(body)});
  }
  static Result<std::optional<Frame>> nothing() { return std::optional<Frame>(); }

  void append(ByteView b) { transcript_.insert(transcript_.end(), b.begin(), b.end()); }
  crypto::Sha256Digest th() const { return crypto::sha256(transcript_); }

  // After both hellos (th_hello_ set): the shared secret, prk and the finished keys.
  Status derive_handshake_keys(const std::array<uint8_t, 32>& peer_ephemeral) {
    auto shared = crypto::x25519_shared(ephemeral_, peer_ephemeral);
    ephemeral_.private_key.clear();
    if (!shared.ok()) return std::move(shared).error().wrap("hello: peer ephemeral key refused");
    prk_ = crypto::hkdf_extract(crypto::HashAlg::kSha256, th_hello_, shared->view());
    server_fin_ = crypto::hkdf_expand(crypto::HashAlg::kSha256, prk_.view(), as_bytes(kLabelServerFinished), 32);
    client_fin_ = crypto::hkdf_expand(crypto::HashAlg::kSha256, prk_.view(), as_bytes(kLabelClientFinished), 32);
    return ok_status();
  }

  Status derive_traffic_keys(bool client) {
    result_.transcript_hash = th();
    auto c2s = crypto::hkdf_expand(crypto::HashAlg::kSha256, prk_.view(),
                                   concat(kLabelC2s, result_.transcript_hash), 32);
    auto s2c = crypto::hkdf_expand(crypto::HashAlg::kSha256, prk_.view(),
                                   concat(kLabelS2c, result_.transcript_hash), 32);
    result_.send_secret = client ? std::move(c2s) : std::move(s2c);
    result_.recv_secret = client ? std::move(s2c) : std::move(c2s);
    result_.mode = options_.mode;
    result_.suite = options_.suite;
    prk_.clear();
    server_fin_.clear();
    client_fin_.clear();
    return ok_status();
  }

  ChannelOptions options_;
  State state_;
  crypto::X25519KeyPair ephemeral_;
  std::array<uint8_t, 32> peer_ephemeral_{};  // the server's copy of the client's, until it derives
  Bytes transcript_;  // label || every message body so far (docs/protocol.md "Transcript")
  crypto::Sha256Digest th_hello_{};
  SecretBytes prk_, server_fin_, client_fin_;
  HandshakeResult result_;
};

Status write_frame(Transport& t, FrameType type, const Bytes& body, Deadline deadline) {
  uint8_t header[kFrameHeaderSize];
  wire::encode_frame_header({static_cast<uint32_t>(body.size()), uint8_t(type)}, header);
  ByteView parts[2] = {ByteView(header, kFrameHeaderSize), ByteView(body)};
  return t.write_all(parts, deadline);
}

Result<Bytes> read_frame(Transport& t, FrameType expected, size_t max_body, Deadline deadline) {
  uint8_t header[kFrameHeaderSize];
  auto st = t.read_exact(header, deadline);
  if (!st.ok()) return std::move(st).error().wrap(fmt::format("reading {} header", wire::frame_type_name(uint8_t(expected))));
  VEIL_ASSIGN_OR_RETURN(auto h, wire::parse_frame_header(ByteView(header, kFrameHeaderSize), max_body, {expected}));
  Bytes body(h.length);  // bounded by max_body above
  st = t.read_exact(body, deadline);
  if (!st.ok()) return std::move(st).error().wrap(fmt::format("reading {} body", wire::frame_type_name(h.type)));
  return body;
}

Result<std::unique_ptr<Channel>> run_handshake(bool client, std::unique_ptr<Transport> transport,
                                               const ChannelOptions& options) {
  const char* role = client ? "client" : "server";
  std::string peer = transport ? transport->peer() : "(none)";
  auto refuse = [&](Error e) -> Error {
    if (transport) transport->shutdown();
    Error out = std::move(e).wrap(fmt::format("channel {} handshake with {}", role, peer));
    spdlog::warn("{}", out.message());
    return out;
  };
  if (!transport) return refuse(make_error(ErrorCode::kInvalidArgument, "no transport"));
  bool needs_attester = !client || options.mode == Mode::kMutual;
  bool needs_verifier = client || options.mode == Mode::kMutual;
  if ((needs_attester && !options.attester) || (needs_verifier && !options.verifier)) {
    return refuse(make_error(ErrorCode::kInvalidArgument, "options lack the {} this mode needs",
                             needs_attester && !options.attester ? "attester" : "evidence verifier"));
  }
  if (options.max_message == 0 || options.max_message > kDefaultMaxMessage ||
      options.rekey_after_records < 2 || options.rekey_after_records > kMaxRecordsPerKey ||
      options.rekey_after_bytes == 0 || options.rekey_after_bytes > kMaxBytesPerKey ||
      options.max_handshake_message < wire::kHelloSize + wire::kEvidenceHeaderSize + wire::kMacSize) {
    return refuse(make_error(ErrorCode::kInvalidArgument, "options: a limit is zero or above the protocol maximum"));
  }
  const Deadline deadline = Clock::now() + options.handshake_timeout;
  Handshake hs(client, options);
  while (!hs.done()) {
    std::optional<Bytes> incoming;
    if (hs.wants_input()) {
      auto frame = read_frame(*transport, hs.expected(), options.max_handshake_message, deadline);
      if (!frame.ok()) return refuse(std::move(frame).error());
      incoming = std::move(*frame);
    }
    auto out = hs.step(incoming ? &*incoming : nullptr);
    if (!out.ok()) return refuse(std::move(out).error());
    if (Clock::now() >= deadline) {
      return refuse(make_error(ErrorCode::kTimeout, "handshake timeout of {} ms passed",
                               options.handshake_timeout.count()));
    }
    if (out->has_value()) {
      auto st = write_frame(*transport, (*out)->type, (*out)->body, deadline);
      if (!st.ok()) return refuse(std::move(st).error());
      // While the peer works on this message, make the ephemeral key of this thread's next handshake: it is then
      // off the critical path (the peer's reply takes longer than one X25519 key generation).
      if (!hs.done() && hs.wants_input()) crypto::x25519_prepare_ephemeral();
    }
  }
  auto channel = make_channel(std::move(transport), hs.take_result(), options);
  if (!channel.ok()) return refuse(std::move(channel).error());
  spdlog::debug("channel {} handshake with {} done", role, peer);
  return channel;
}

}  // namespace

Result<std::unique_ptr<Channel>> client_handshake(std::unique_ptr<Transport> transport, const ChannelOptions& options) {
  return run_handshake(true, std::move(transport), options);
}

Result<std::unique_ptr<Channel>> server_handshake(std::unique_ptr<Transport> transport, const ChannelOptions& options) {
  return run_handshake(false, std::move(transport), options);
}

}  // namespace veil::channel
