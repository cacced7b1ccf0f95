// Fuzzes the channel's frame header parser and the record receive path (docs/protocol.md "Frames", "Records").
// Input: the bytes a peer sends after a completed handshake. The receiving channel must refuse garbage with an
// error — never crash, hang, or allocate beyond its limit.
#include <cstddef>
#include <cstdint>
#include <thread>

#include "channel/channel.h"
#include "channel/wire.h"
#include "channel_fuzz_support.h"

using namespace veil;
using namespace veil::channel;
using veil::channel::fuzz::echo_attester;
using veil::channel::fuzz::echo_verifier;

namespace {

// Passes the channel's own writes through and lets the fuzzer write raw bytes after the handshake.
class RawTap final : public Transport {
 public:
  explicit RawTap(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}
  Status write_all(std::span<const ByteView> parts, Deadline d) override { return inner_->write_all(parts, d); }
  Status read_exact(std::span<uint8_t> out, Deadline d) override { return inner_->read_exact(out, d); }
  void shutdown() override { inner_->shutdown(); }
  std::string peer() const override { return inner_->peer(); }
  Transport& inner() { return *inner_; }

 private:
  std::unique_ptr<Transport> inner_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView in(data, size);
  // 1. The header parser alone, with each expectation the code uses.
  if (size >= kFrameHeaderSize) {
    (void)wire::parse_frame_header(in, 1 << 20, {wire::FrameType::kClientHello});
    (void)wire::parse_frame_header(in, 64, {wire::FrameType::kData, wire::FrameType::kKeyUpdate,
                                            wire::FrameType::kClose});
    (void)wire::parse_frame_header(in, 0, {});
  }
  // 2. The record receive path of a real session.
  ChannelOptions server_opts, client_opts;
  server_opts.attester = echo_attester();
  client_opts.verifier = echo_verifier();
  server_opts.max_message = client_opts.max_message = 4096;
  auto [a, b] = make_in_process_pair(1 << 20);
  auto tap_owned = std::make_unique<RawTap>(std::move(a));
  RawTap* tap = tap_owned.get();
  Result<std::unique_ptr<Channel>> server = make_error(ErrorCode::kInternal, "not run");
  std::thread t([&, st = std::move(b)]() mutable { server = server_handshake(std::move(st), server_opts); });
  auto client = client_handshake(std::move(tap_owned), client_opts);
  t.join();
  if (!client.ok() || !server.ok()) __builtin_trap();  // the honest handshake must succeed
  ByteView part = in;
  (void)tap->inner().write_all(std::span<const ByteView>(&part, 1), deadline_in(std::chrono::seconds(5)));
  tap->inner().shutdown();  // end of stream after the input: recv must end with an error, never hang
  Bytes buf;
  for (int i = 0; i < 1000; ++i) {
    if (!(*server)->recv_into(buf, deadline_in(std::chrono::seconds(5))).ok()) return 0;
  }
  __builtin_trap();  // unauthenticated bytes can never yield 1000 messages
}
