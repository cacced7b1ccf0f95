// The record layer (docs/protocol.md "Records"): one AEAD per direction, nonces from sequence numbers,
// KeyUpdate before the per-key limits, authenticated Close.
#include <spdlog/spdlog.h>

#include "channel/session.h"

namespace veil::channel {

using wire::FrameType;

Status DirectionState::install(crypto::AeadSuite suite) {
  auto key = crypto::hkdf_expand(crypto::HashAlg::kSha256, secret.view(), as_bytes(kLabelKey), crypto::kAeadKeySize);
  auto iv_bytes = crypto::hkdf_expand(crypto::HashAlg::kSha256, secret.view(), as_bytes(kLabelIv),
                                      crypto::kAeadNonceSize);
  std::copy(iv_bytes.data(), iv_bytes.data() + crypto::kAeadNonceSize, iv.begin());
  VEIL_ASSIGN_OR_RETURN(auto a, crypto::Aead::create(suite, key.view()));
  aead.emplace(std::move(a));
  seq = 0;
  bytes = 0;
  return ok_status();
}

Status DirectionState::rekey(crypto::AeadSuite suite) {
  secret = crypto::hkdf_expand(crypto::HashAlg::kSha256, secret.view(), as_bytes(kLabelNext), 32);
  VEIL_TRY(install(suite));
  epoch.fetch_add(1, std::memory_order_relaxed);
  return ok_status();
}

std::array<uint8_t, crypto::kAeadNonceSize> DirectionState::nonce() const {
  auto n = iv;
  for (int i = 0; i < 8; ++i) n[4 + i] ^= static_cast<uint8_t>(seq >> (56 - 8 * i));
  return n;
}

Error Channel::Impl::fail(Error e) {
  {
    std::lock_guard<std::mutex> lock(error_mu);
    if (!error) error = e;
  }
  failed.store(true, std::memory_order_release);
  transport->shutdown();
  if (e.code() != ErrorCode::kCancelled) spdlog::warn("channel with {} closed: {}", peer, e.message());
  return e;
}

Error Channel::Impl::closed_error() {
  std::lock_guard<std::mutex> lock(error_mu);
  if (error && error->code() == ErrorCode::kCancelled) return *error;
  return make_error(ErrorCode::kUnavailable, "channel with {} is closed{}{}", peer, error ? ": " : "",
                    error ? error->message() : "");
}

Result<std::unique_ptr<Channel>> make_channel(std::unique_ptr<Transport> transport, HandshakeResult result,
                                              const ChannelOptions& options) {
  auto impl = std::make_unique<Channel::Impl>();
  impl->peer = transport->peer();
  impl->transport = std::move(transport);
  impl->mode = result.mode;
  impl->suite = result.suite;
  impl->peer_claims = std::move(result.peer_claims);
  impl->transcript_hash = result.transcript_hash;
  impl->max_message = options.max_message;
  impl->rekey_after_records = options.rekey_after_records;
  impl->rekey_after_bytes = options.rekey_after_bytes;
  impl->send.secret = std::move(result.send_secret);
  impl->recv.secret = std::move(result.recv_secret);
  VEIL_TRY(impl->send.install(impl->suite));
  VEIL_TRY(impl->recv.install(impl->suite));
  return std::make_unique<Channel>(std::move(impl));
}

Channel::Channel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Channel::~Channel() {
  if (impl_ && impl_->transport) impl_->transport->shutdown();
}

namespace {

// Seals one record of `type` into impl.send_buf and writes it. Caller holds send_mu.
Status write_record(Channel::Impl& impl, FrameType type, ByteView payload, Deadline deadline) {
  DirectionState& d = impl.send;
  size_t body = payload.size() + crypto::kAeadTagSize;
  size_t total = kFrameHeaderSize + body;
  if (impl.send_buf.size() < total) impl.send_buf.resize(total);
  uint8_t* buf = impl.send_buf.data();
  wire::encode_frame_header({static_cast<uint32_t>(body), uint8_t(type)}, buf);
  auto nonce = d.nonce();
  VEIL_TRY(d.aead->seal_into(nonce, ByteView(buf, kFrameHeaderSize), payload, buf + kFrameHeaderSize));
  ++d.seq;
  d.bytes += payload.size();
  ByteView part(buf, total);
  return impl.transport->write_all(std::span<const ByteView>(&part, 1), deadline);
}

}  // namespace

Status Channel::send(ByteView message, Deadline deadline) {
  Impl& impl = *impl_;
  if (message.size() > impl.max_message) {
    return make_error(ErrorCode::kInvalidArgument, "channel send to {}: message of {} bytes exceeds the limit of {}",
                      impl.peer, message.size(), impl.max_message);
  }
  std::lock_guard<std::mutex> lock(impl.send_mu);
  if (impl.failed.load(std::memory_order_acquire)) return impl.closed_error();
  if (impl.send.seq + 1 >= impl.rekey_after_records || impl.send.bytes + message.size() > impl.rekey_after_bytes) {
    auto st = write_record(impl, FrameType::kKeyUpdate, {}, deadline);
    if (st.ok()) st = impl.send.rekey(impl.suite);
    if (!st.ok()) return impl.fail(std::move(st).error().wrap(fmt::format("channel send to {}: key update", impl.peer)));
  }
  auto st = write_record(impl, FrameType::kData, message, deadline);
  if (!st.ok()) return impl.fail(std::move(st).error().wrap(fmt::format("channel send to {}", impl.peer)));
  return ok_status();
}

Status Channel::recv_into(Bytes& out, Deadline deadline) {
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> lock(impl.recv_mu);
  DirectionState& d = impl.recv;
  while (true) {
    if (impl.failed.load(std::memory_order_acquire)) return impl.closed_error();
    uint8_t header[kFrameHeaderSize];
    auto st = impl.transport->read_exact(header, deadline);
    if (!st.ok()) {
      // A local abort()/close() from another thread shut the transport: report that, not the peer.
      if (impl.failed.load(std::memory_order_acquire)) return impl.closed_error();
      if (st.error().code() == ErrorCode::kUnavailable) {
        return impl.fail(make_error(ErrorCode::kSecurity,
                                    "channel recv from {}: record {}: stream ended without an authenticated close "
                                    "(truncation)", impl.peer, d.seq));
      }
      return impl.fail(std::move(st).error().wrap(fmt::format("channel recv from {}", impl.peer)));
    }
    auto h = wire::parse_frame_header(ByteView(header, kFrameHeaderSize), impl.max_message + crypto::kAeadTagSize,
                                      {FrameType::kData, FrameType::kKeyUpdate, FrameType::kClose});
    if (!h.ok()) {
      return impl.fail(std::move(h).error().wrap(fmt::format("channel recv from {}: record {}", impl.peer, d.seq)));
    }
    if (h->length < crypto::kAeadTagSize) {
      return impl.fail(make_error(ErrorCode::kCorrupt, "channel recv from {}: record {}: body of {} bytes is shorter "
                                  "than the AEAD tag", impl.peer, d.seq, h->length));
    }
    if (d.seq >= kMaxRecordsPerKey || d.bytes + (h->length - crypto::kAeadTagSize) > kMaxBytesPerKey) {
      return impl.fail(make_error(ErrorCode::kSecurity, "channel recv from {}: record {}: peer exceeded the per-key "
                                  "limit without a key update", impl.peer, d.seq));
    }
    out.resize(h->length);
    st = impl.transport->read_exact(out, deadline);
    if (!st.ok()) {
      if (impl.failed.load(std::memory_order_acquire)) return impl.closed_error();
      return impl.fail(std::move(st).error().wrap(
          fmt::format("channel recv from {}: record {}: body of {} bytes", impl.peer, d.seq, h->length)));
    }
    auto nonce = d.nonce();
    st = d.aead->open_into(nonce, ByteView(header, kFrameHeaderSize), out, out.data());
    if (!st.ok()) {
      out.clear();
      return impl.fail(make_error(ErrorCode::kSecurity, "channel recv from {}: record {}: authentication failed "
                                  "(tampered, replayed, reordered or wrong key)", impl.peer, d.seq));
    }
    size_t n = h->length - crypto::kAeadTagSize;
    out.resize(n);
    ++d.seq;
    d.bytes += n;
    switch (static_cast<FrameType>(h->type)) {
      case FrameType::kData:
        return ok_status();
      case FrameType::kKeyUpdate:
        if (n != 0) {
          return impl.fail(make_error(ErrorCode::kCorrupt, "channel recv from {}: KeyUpdate carries {} bytes, must "
                                      "be empty", impl.peer, n));
        }
        st = d.rekey(impl.suite);
        if (!st.ok()) return impl.fail(std::move(st).error());
        continue;
      case FrameType::kClose:
        if (n != 0) {
          return impl.fail(make_error(ErrorCode::kCorrupt, "channel recv from {}: Close carries {} bytes, must be "
                                      "empty", impl.peer, n));
        }
        return impl.fail(make_error(ErrorCode::kCancelled, "channel with {} closed by peer", impl.peer));
      default:
        return impl.fail(make_error(ErrorCode::kInternal, "channel recv: unexpected frame type"));
    }
  }
}

Result<Bytes> Channel::recv(Deadline deadline) {
  Bytes out;
  VEIL_TRY(recv_into(out, deadline));
  return out;
}

Status Channel::close(Deadline deadline) {
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> lock(impl.send_mu);
  if (impl.failed.load(std::memory_order_acquire)) return impl.closed_error();
  auto st = write_record(impl, FrameType::kClose, {}, deadline);
  if (!st.ok()) return impl.fail(std::move(st).error().wrap(fmt::format("channel close to {}", impl.peer)));
  impl.fail(make_error(ErrorCode::kCancelled, "channel with {} closed locally", impl.peer));
  return ok_status();
}

void Channel::abort() { impl_->fail(make_error(ErrorCode::kCancelled, "channel with {} aborted locally", impl_->peer)); }

Mode Channel::mode() const { return impl_->mode; }
crypto::AeadSuite Channel::suite() const { return impl_->suite; }
const attest::Claims* Channel::peer_claims() const { return impl_->peer_claims ? &*impl_->peer_claims : nullptr; }
const crypto::Sha256Digest& Channel::transcript_hash() const { return impl_->transcript_hash; }
std::string Channel::peer() const { return impl_->peer; }
uint64_t Channel::send_epoch() const { return impl_->send.epoch.load(std::memory_order_relaxed); }
uint64_t Channel::recv_epoch() const { return impl_->recv.epoch.load(std::memory_order_relaxed); }

}  // namespace veil::channel
