// Channel over real sockets: TCP on 127.0.0.1 port 0, Unix sockets in a temp dir, AF_VSOCK where the kernel allows.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <future>

#include "channel/channel.h"
#include "channel/fake_attest.h"
#include "support/temp_dir.h"

namespace veil::channel {
namespace {

using namespace std::chrono_literals;
using testing::FakeTee;

const Bytes kMeasurement(32, 0x11);
Deadline soon() { return deadline_in(5s); }

struct Options {
  FakeTee tee;
  ChannelOptions client, server;
  Options() {
    client.verifier = tee.verifier(kMeasurement);
    server.attester = tee.attester(kMeasurement);
    client.handshake_timeout = server.handshake_timeout = 2s;
  }
};

// Accept one connection, handshake, echo every message back until the peer closes.
void run_echo_session(Listener& listener, const ChannelOptions& options) {
  auto t = listener.accept(soon());
  ASSERT_TRUE(t.ok()) << t.error().message();
  auto ch = server_handshake(std::move(*t), options);
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  Bytes buf;
  while (true) {
    auto st = (*ch)->recv_into(buf, soon());
    if (!st.ok()) {
      EXPECT_EQ(st.error().code(), ErrorCode::kCancelled) << st.error().message();
      return;
    }
    ASSERT_TRUE((*ch)->send(buf, soon()).ok());
  }
}

void echo_over(const Endpoint& listen_at) {
  Options o;
  auto listener = listen(listen_at);
  ASSERT_TRUE(listener.ok()) << listener.error().message();
  auto ep = parse_endpoint((*listener)->address());
  ASSERT_TRUE(ep.ok()) << (*listener)->address();
  auto server = std::async(std::launch::async, [&] { run_echo_session(**listener, o.server); });
  auto t = connect(*ep, soon());
  ASSERT_TRUE(t.ok()) << t.error().message();
  auto ch = client_handshake(std::move(*t), o.client);
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  for (size_t n : {size_t(0), size_t(1), size_t(1000), size_t(128 << 10), kDefaultMaxMessage}) {
    Bytes msg(n);
    for (size_t i = 0; i < n; ++i) msg[i] = static_cast<uint8_t>(i * 7 + n);
    ASSERT_TRUE((*ch)->send(msg, soon()).ok());
    auto back = (*ch)->recv(soon());
    ASSERT_TRUE(back.ok()) << back.error().message();
    EXPECT_EQ(*back, msg);
  }
  ASSERT_TRUE((*ch)->close(soon()).ok());
  server.get();
}

TEST(ChannelTransport, TcpLoopbackEcho) {
  auto ep = parse_endpoint("tcp:127.0.0.1:0");
  ASSERT_TRUE(ep.ok());
  echo_over(*ep);
}

TEST(ChannelTransport, UnixSocketEcho) {
  Endpoint ep;
  ep.kind = Endpoint::Kind::kUnix;
  testsupport::TempDir dir{"veil-channel-test"};
  ep.path = (dir / "echo.sock").string();
  echo_over(ep);
}

TEST(ChannelTransport, VsockLoopbackEchoWhereSupported) {
  Endpoint ep;
  ep.kind = Endpoint::Kind::kVsock;
  ep.cid = 1;  // VMADDR_CID_LOCAL: needs the vsock_loopback module
  ep.port = 40000 + static_cast<uint32_t>(::getpid() % 20000);
  auto listener = listen(ep);
  if (!listener.ok()) GTEST_SKIP() << "AF_VSOCK loopback unavailable here: " << listener.error().message();
  auto probe = std::async(std::launch::async, [&] { return (*listener)->accept(deadline_in(2s)); });
  auto t = connect(ep, deadline_in(2s));
  auto accepted = probe.get();
  if (!t.ok() || !accepted.ok()) {
    GTEST_SKIP() << "AF_VSOCK loopback connect unavailable: " << (t.ok() ? accepted.error().message() : t.error().message());
  }
  Options o;
  auto server = std::async(std::launch::async, [&] { return server_handshake(std::move(*accepted), o.server); });
  auto ch = client_handshake(std::move(*t), o.client);
  auto sch = server.get();
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  ASSERT_TRUE(sch.ok()) << sch.error().message();
  Bytes msg(100000, 0x3c);
  ASSERT_TRUE((*ch)->send(msg, soon()).ok());
  auto got = (*sch)->recv(soon());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, msg);
}

TEST(ChannelTransport, ConnectRefusedIsUnavailable) {
  auto listener = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  auto ep = *parse_endpoint((*listener)->address());
  listener->reset();  // nothing listens there any more
  auto t = connect(ep, soon());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code(), ErrorCode::kUnavailable) << t.error().message();
}

TEST(ChannelTransport, AcceptTimesOutAndCloseUnblocks) {
  auto listener = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  auto r = (*listener)->accept(deadline_in(50ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  auto waiter = std::async(std::launch::async, [&] { return (*listener)->accept(deadline_in(10s)); });
  (*listener)->close();
  auto w = waiter.get();
  EXPECT_FALSE(w.ok());
}

TEST(ChannelTransport, SilentTcpClientRefusedAtHandshakeTimeout) {
  Options o;
  o.server.handshake_timeout = 200ms;
  auto listener = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  auto t = connect(*parse_endpoint((*listener)->address()), soon());  // connects, then says nothing
  ASSERT_TRUE(t.ok());
  auto accepted = (*listener)->accept(soon());
  ASSERT_TRUE(accepted.ok());
  auto start = Clock::now();
  auto r = server_handshake(std::move(*accepted), o.server);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(ChannelTransport, OversizedFrameOverTcpRefused) {
  Options o;
  auto listener = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  auto t = connect(*parse_endpoint((*listener)->address()), soon());
  ASSERT_TRUE(t.ok());
  uint8_t header[5] = {0x40, 0, 0, 0, 0x01};  // a 1 GiB ClientHello
  ByteView v(header, 5);
  ASSERT_TRUE((*t)->write_all(std::span<const ByteView>(&v, 1), soon()).ok());
  auto accepted = (*listener)->accept(soon());
  ASSERT_TRUE(accepted.ok());
  auto r = server_handshake(std::move(*accepted), o.server);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
}

TEST(ChannelEndpoint, ParsesAndPrints) {
  auto tcp = parse_endpoint("tcp:10.0.0.1:8443");
  ASSERT_TRUE(tcp.ok());
  EXPECT_EQ(tcp->host, "10.0.0.1");
  EXPECT_EQ(tcp->port, 8443u);
  EXPECT_EQ(tcp->to_string(), "tcp:10.0.0.1:8443");
  auto v6 = parse_endpoint("tcp:[::1]:9");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "[::1]");
  auto vs = parse_endpoint("vsock:3:5000");
  ASSERT_TRUE(vs.ok());
  EXPECT_EQ(vs->cid, 3u);
  EXPECT_EQ(vs->port, 5000u);
  auto ux = parse_endpoint("unix:/run/veil.sock");
  ASSERT_TRUE(ux.ok());
  EXPECT_EQ(ux->path, "/run/veil.sock");
  for (const char* bad : {"tcp:host", "tcp:host:99999", "tcp:host:x", "udp:a:1", "vsock:x:1", "unix:", "nothing"}) {
    EXPECT_FALSE(parse_endpoint(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace veil::channel
