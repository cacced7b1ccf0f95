// The relay on its own: bytes both ways, half-close, a target that is down or silent, the connection limit, stop.
// Plain sockets on 127.0.0.1 ephemeral ports; every wait has a deadline.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "pipeline/runtime.h"

namespace veil::pipeline {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A blocking TCP socket whose reads wait at most until a deadline (tests only).
class Sock {
 public:
  explicit Sock(int fd = -1) : fd_(fd) {}
  Sock(Sock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  ~Sock() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  static Sock connect_to(uint16_t port) {
    Sock s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a = loopback(port);
    if (::connect(s.fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return Sock();
    return s;
  }

  bool write_all(std::string_view data) {
    while (!data.empty()) {
      ssize_t w = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (w <= 0) return false;
      data.remove_prefix(static_cast<size_t>(w));
    }
    return true;
  }

  // Reads until `n` bytes arrived, the stream ended (`eof`) or failed, or the timeout passed.
  std::string read_up_to(size_t n, Clock::duration timeout, bool* eof = nullptr) {
    std::string out;
    auto deadline = Clock::now() + timeout;
    if (eof) *eof = false;
    while (out.size() < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd p{fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) break;
      char buf[65536];
      ssize_t r = ::recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
      if (r <= 0) {  // end of stream, or reset: both end the connection
        if (eof) *eof = true;
        break;
      }
      out.append(buf, static_cast<size_t>(r));
    }
    return out;
  }

  // True when the peer ended the stream (FIN or reset) within the timeout, with no data before it.
  bool closed_within(Clock::duration timeout) {
    bool eof = false;
    std::string got = read_up_to(1, timeout, &eof);
    return eof && got.empty();
  }

  static sockaddr_in loopback(uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
  }

 private:
  int fd_;
};

// A listening socket on 127.0.0.1 (the relay's target).
struct TestListener {
  Sock sock;
  uint16_t port = 0;

  explicit TestListener(int backlog = 16) : sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a = Sock::loopback(0);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(sock.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(sock.fd(), backlog), 0);
    EXPECT_EQ(::getsockname(sock.fd(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
  }

  Sock accept(Clock::duration timeout) {
    pollfd p{sock.fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count())) <= 0) {
      return Sock();
    }
    return Sock(::accept4(sock.fd(), nullptr, nullptr, SOCK_CLOEXEC));
  }
};

uint16_t port_of(const std::string& address) {
  return static_cast<uint16_t>(std::stoul(address.substr(address.rfind(':') + 1)));
}

std::unique_ptr<Relay> start_relay(uint16_t target_port, RelayOptions o = {}) {
  o.listen = "127.0.0.1:0";
  o.target = "127.0.0.1:" + std::to_string(target_port);
  auto r = Relay::start(std::move(o));
  EXPECT_TRUE(r.ok()) << r.error().message();
  return r.ok() ? std::move(*r) : nullptr;
}

std::string pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed) & 0xff);
  return s;
}

TEST(Relay, ForwardsBytesBothWaysThroughSmallBuffers) {
  TestListener target;
  RelayOptions o;
  o.buffer_bytes = 4 << 10;  // many chunks per message
  auto relay = start_relay(target.port, o);
  ASSERT_TRUE(relay);
  EXPECT_EQ(relay->target(), "tcp:127.0.0.1:" + std::to_string(target.port));
  Sock client = Sock::connect_to(port_of(relay->address()));
  ASSERT_TRUE(client.valid());
  Sock server = target.accept(2s);
  ASSERT_TRUE(server.valid());

  const std::string up = pattern(300 << 10, 1), down = pattern(200 << 10, 2);
  auto sent_up = std::async(std::launch::async, [&] { return client.write_all(up); });
  auto sent_down = std::async(std::launch::async, [&] { return server.write_all(down); });
  EXPECT_EQ(server.read_up_to(up.size(), 5s), up);
  EXPECT_EQ(client.read_up_to(down.size(), 5s), down);
  EXPECT_TRUE(sent_up.get());
  EXPECT_TRUE(sent_down.get());

  relay->stop();  // joins the I/O thread: the counts are final
  RelayStats st = relay->stats();
  EXPECT_EQ(st.accepted, 1u);
  EXPECT_EQ(st.bytes_to_target, up.size());
  EXPECT_EQ(st.bytes_to_client, down.size());
  EXPECT_EQ(st.active, 0u);
}

TEST(Relay, HalfCloseIsPassedOnAndTheOtherDirectionKeepsFlowing) {
  TestListener target;
  auto relay = start_relay(target.port);
  ASSERT_TRUE(relay);
  Sock client = Sock::connect_to(port_of(relay->address()));
  ASSERT_TRUE(client.valid());
  Sock server = target.accept(2s);
  ASSERT_TRUE(server.valid());

  ASSERT_TRUE(client.write_all("request"));
  ASSERT_EQ(::shutdown(client.fd(), SHUT_WR), 0);  // the client has nothing more to say
  bool eof = false;
  EXPECT_EQ(server.read_up_to(100, 2s, &eof), "request");
  EXPECT_TRUE(eof) << "the FIN was not passed on to the target";
  // The target still answers, and the answer reaches the client, then the target's FIN.
  ASSERT_TRUE(server.write_all("reply"));
  ASSERT_EQ(::shutdown(server.fd(), SHUT_WR), 0);
  EXPECT_EQ(client.read_up_to(100, 2s, &eof), "reply");
  EXPECT_TRUE(eof);
  relay->stop();
  EXPECT_EQ(relay->stats().bytes_to_client, 5u);
}

TEST(Relay, TargetDownClosesTheClientPromptly) {
  uint16_t free_port;
  {
    TestListener gone;  // bound, then closed: nobody listens on the port
    free_port = gone.port;
  }
  auto relay = start_relay(free_port);
  ASSERT_TRUE(relay);
  Sock client = Sock::connect_to(port_of(relay->address()));
  ASSERT_TRUE(client.valid());
  auto t0 = Clock::now();
  EXPECT_TRUE(client.closed_within(2s));
  EXPECT_LT(Clock::now() - t0, 1s);
  relay->stop();
  EXPECT_EQ(relay->stats().failed_connects, 1u);
}

TEST(Relay, SilentTargetHitsTheConnectTimeout) {
  // A listener with a full accept queue: the kernel drops further SYNs, so a connect neither succeeds nor fails.
  TestListener target(/*backlog=*/0);
  Sock filler = Sock::connect_to(target.port);
  ASSERT_TRUE(filler.valid());
  RelayOptions o;
  o.connect_timeout = 200ms;
  auto relay = start_relay(target.port, o);
  ASSERT_TRUE(relay);
  Sock client = Sock::connect_to(port_of(relay->address()));
  ASSERT_TRUE(client.valid());
  auto t0 = Clock::now();
  EXPECT_TRUE(client.closed_within(3s));
  auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 150ms);
  EXPECT_LT(elapsed, 2s);
  relay->stop();
  EXPECT_EQ(relay->stats().failed_connects, 1u);
}

TEST(Relay, ConnectionsBeyondTheLimitAreClosedAndStopClosesTheRest) {
  TestListener target;
  RelayOptions o;
  o.max_connections = 1;
  auto relay = start_relay(target.port, o);
  ASSERT_TRUE(relay);
  uint16_t port = port_of(relay->address());
  Sock first = Sock::connect_to(port);
  ASSERT_TRUE(first.valid());
  Sock server = target.accept(2s);  // the relay took the first connection on
  ASSERT_TRUE(server.valid());
  Sock second = Sock::connect_to(port);
  ASSERT_TRUE(second.valid());
  EXPECT_TRUE(second.closed_within(2s));
  // The first connection still works.
  ASSERT_TRUE(first.write_all("ping"));
  EXPECT_EQ(server.read_up_to(4, 2s), "ping");
  EXPECT_EQ(relay->stats().refused, 1u);
  // Stopping the relay closes both of its sides.
  relay->stop();
  EXPECT_TRUE(first.closed_within(2s));
  EXPECT_TRUE(server.closed_within(2s));
  EXPECT_EQ(relay->stats().active, 0u);
}

TEST(Relay, RefusesMalformedOptions) {
  auto bad = [](std::string listen, std::string target) {
    RelayOptions o;
    o.listen = std::move(listen);
    o.target = std::move(target);
    auto r = Relay::start(std::move(o));
    return r.ok() ? ErrorCode::kInternal : r.error().code();
  };
  EXPECT_EQ(bad("nonsense", "127.0.0.1:1"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad("localhost:0", "127.0.0.1:1"), ErrorCode::kInvalidArgument);  // listen needs an IP address
  EXPECT_EQ(bad("127.0.0.1:0", "unix:/tmp/x.sock"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad("127.0.0.1:0", "127.0.0.1:0"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad("127.0.0.1:99999", "127.0.0.1:1"), ErrorCode::kInvalidArgument);
  RelayOptions o;
  o.listen = "127.0.0.1:0";
  o.target = "127.0.0.1:1";
  o.buffer_bytes = 1;
  EXPECT_EQ(Relay::start(o).error().code(), ErrorCode::kInvalidArgument);
  // An IPv6 literal, bracketed, is accepted.
  o.buffer_bytes = 64 << 10;
  o.target = "[::1]:7400";
  auto r = Relay::start(o);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ((*r)->target(), "tcp:::1:7400");
}

}  // namespace
}  // namespace veil::pipeline
