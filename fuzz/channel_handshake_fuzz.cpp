// Fuzzes each handshake message parser and the handshake state machine (docs/protocol.md "Handshake").
// The first input byte picks the target; the rest is the message body or the peer's byte stream.
#include <cstddef>
#include <cstdint>
#include <algorithm>

#include "channel/channel.h"
#include "channel/wire.h"
#include "channel_fuzz_support.h"

using namespace veil;
using namespace veil::channel;
using veil::channel::fuzz::echo_attester;
using veil::channel::fuzz::echo_verifier;

namespace {

// The peer: serves the fuzz input as its byte stream, then end of stream; swallows whatever we write.
class ScriptedPeer final : public Transport {
 public:
  explicit ScriptedPeer(ByteView stream) : stream_(stream) {}
  Status write_all(std::span<const ByteView>, Deadline) override { return ok_status(); }
  Status read_exact(std::span<uint8_t> out, Deadline) override {
    if (stream_.empty()) return make_error(ErrorCode::kUnavailable, "fuzz peer: end of stream");
    if (stream_.size() < out.size()) return make_error(ErrorCode::kCorrupt, "fuzz peer: truncated");
    std::copy(stream_.begin(), stream_.begin() + static_cast<std::ptrdiff_t>(out.size()), out.begin());
    stream_ = stream_.subspan(out.size());
    return ok_status();
  }
  void shutdown() override {}
  std::string peer() const override { return "fuzz"; }

 private:
  ByteView stream_;
};

// Runs one side of the handshake against a peer whose whole byte stream is `stream`. The fuzzer cannot forge
// finished MACs or evidence bound to fresh keys, so the handshake must fail.
void drive(bool as_server, Mode mode, ByteView stream) {
  ChannelOptions o;
  o.mode = mode;
  o.attester = echo_attester();
  o.verifier = echo_verifier();
  o.max_handshake_message = 4096;
  auto t = std::make_unique<ScriptedPeer>(stream);
  auto r = as_server ? server_handshake(std::move(t), o) : client_handshake(std::move(t), o);
  if (r.ok()) __builtin_trap();
}

}  // namespace

// Seeds: fuzz/make_channel_handshake_seeds.py (its target numbers match the cases below).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  ByteView body(data + 1, size - 1);
  switch (data[0] % 8) {
    case 0: (void)wire::parse_client_hello(body); break;
    case 1: (void)wire::parse_server_hello(body); break;
    case 2: (void)wire::parse_client_finish(body, Mode::kServerAttested); break;
    case 3: (void)wire::parse_client_finish(body, Mode::kMutual); break;
    case 4: {
      size_t offset = 0;
      (void)wire::parse_evidence(body, offset, "fuzz");
      break;
    }
    case 5: (void)wire::parse_server_evidence(body); break;
    case 6: (void)wire::parse_server_finished(body); break;
    case 7: {
      if (size < 2) return 0;
      drive(data[1] & 1, (data[1] & 2) ? Mode::kMutual : Mode::kServerAttested, body.subspan(1));
      break;
    }
  }
  return 0;
}
