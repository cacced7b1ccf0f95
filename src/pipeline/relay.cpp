// Relay: a TCP forwarder for host-forwarded channel ciphertext (runtime.h, docs/pipeline.md "Relay mode").
// One io_context on one thread; every connection is a Connection with two Pipes (client -> target, target ->
// client), each a bounded buffer that is read into, handed to the test hook, written out, and read into again.
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <thread>

#include "pipeline/runtime.h"

namespace veil::pipeline {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;

namespace {

constexpr size_t kMinBuffer = 4u << 10;
constexpr size_t kMaxBuffer = 16u << 20;

std::string endpoint_text(const tcp::endpoint& ep) {
  return fmt::format("tcp:{}:{}", ep.address().to_string(), ep.port());
}

std::string peer_text(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  return ec ? std::string("an unknown peer") : endpoint_text(ep);
}

// "HOST:PORT" or "tcp:HOST:PORT" (an IPv6 host may be bracketed).
Result<channel::Endpoint> tcp_endpoint(std::string_view what, std::string_view text) {
  auto ep = stage_endpoint(text);
  if (!ep.ok()) return make_error(ErrorCode::kInvalidArgument, "relay: {} '{}': expected HOST:PORT", what, text);
  if (ep->kind != channel::Endpoint::Kind::kTcp) {
    return make_error(ErrorCode::kInvalidArgument, "relay: {} '{}': only TCP endpoints can be relayed", what, text);
  }
  if (ep->host.size() > 2 && ep->host.front() == '[' && ep->host.back() == ']') {
    ep->host = ep->host.substr(1, ep->host.size() - 2);
  }
  return ep;
}

// One direction of a connection.
struct Pipe {
  RelayDirection dir;
  tcp::socket* from;
  tcp::socket* to;
  std::vector<uint8_t> buf;
  uint64_t bytes = 0;
  bool ended = false;  // `from` finished sending and the FIN was passed on to `to`
};

class Connection;

}  // namespace

struct Relay::Impl {
  RelayOptions options;
  channel::Endpoint target;
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  asio::steady_timer accept_retry{ioc};
  std::string address;
  std::thread thread;
  std::map<uint64_t, std::weak_ptr<Connection>> live;  // I/O thread only
  uint64_t next_id = 1;                                 // I/O thread only
  std::atomic<uint64_t> accepted{0}, refused{0}, failed_connects{0}, active{0}, to_target{0}, to_client{0};
  std::mutex stop_mu;
  bool stopped = false;

  void do_accept();
  void admit(tcp::socket socket);
  void close_all();
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Relay::Impl& relay, uint64_t id, tcp::socket client)
      : relay_(relay),
        id_(id),
        peer_(peer_text(client)),
        client_(std::move(client)),
        target_(relay.ioc),
        resolver_(relay.ioc),
        timer_(relay.ioc),
        up_{RelayDirection::kToTarget, &client_, &target_, std::vector<uint8_t>(relay.options.buffer_bytes)},
        down_{RelayDirection::kToClient, &target_, &client_, std::vector<uint8_t>(relay.options.buffer_bytes)} {}

  // Resolves and connects to the target within the connect timeout, then pumps both directions.
  void start() {
    auto self = shared_from_this();
    timer_.expires_after(relay_.options.connect_timeout);
    timer_.async_wait([self](error_code ec) {
      if (!ec && !self->connected_ && !self->closed_) {
        self->connect_failed(fmt::format("no connection within {} ms", self->relay_.options.connect_timeout.count()));
      }
    });
    const channel::Endpoint& t = relay_.target;
    resolver_.async_resolve(t.host, std::to_string(t.port), [self](error_code ec, tcp::resolver::results_type found) {
      if (self->closed_) return;
      if (ec) return self->connect_failed(ec.message());
      asio::async_connect(self->target_, found, [self](error_code ec, const tcp::endpoint&) {
        if (self->closed_) return;
        if (ec) return self->connect_failed(ec.message());
        self->connected_ = true;
        self->timer_.cancel();
        error_code ignored;
        self->client_.set_option(tcp::no_delay(true), ignored);
        self->target_.set_option(tcp::no_delay(true), ignored);
        spdlog::info("relay: connection {} from {} to {} open", self->id_, self->peer_, self->relay_.target.to_string());
        self->pump(self->up_);
        self->pump(self->down_);
      });
    });
  }

  // Closes both sockets (pending operations complete as aborted and see closed_). Idempotent.
  void close(std::string_view why) {
    if (closed_) return;
    closed_ = true;
    error_code ignored;
    timer_.cancel();
    resolver_.cancel();
    client_.close(ignored);
    target_.close(ignored);
    relay_.live.erase(id_);
    relay_.active.fetch_sub(1, std::memory_order_relaxed);
    spdlog::info("relay: connection {} from {} closed ({}): {} bytes to the target, {} bytes to the client", id_, peer_,
                 why, up_.bytes, down_.bytes);
  }

 private:
  void connect_failed(const std::string& why) {
    relay_.failed_connects.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("relay: connection {} from {}: cannot reach {}: {}", id_, peer_, relay_.target.to_string(), why);
    close("target unreachable");
  }

  static const char* side(const Pipe& p, bool reading) {
    return (p.dir == RelayDirection::kToTarget) == reading ? "client" : "target";
  }

  void pump(Pipe& p) {
    p.from->async_read_some(asio::buffer(p.buf), [self = shared_from_this(), &p](error_code ec, size_t n) {
      if (self->closed_) return;
      if (ec == asio::error::eof) return self->finished(p);
      if (ec) return self->close(fmt::format("{}: {}", side(p, true), ec.message()));
      if (self->relay_.options.on_chunk_for_tests) {
        self->relay_.options.on_chunk_for_tests(p.dir, std::span<uint8_t>(p.buf.data(), n));
      }
      asio::async_write(*p.to, asio::buffer(p.buf.data(), n), [self, &p](error_code ec, size_t written) {
        // Counted first: a write that completed just before the connection was closed still reached its peer.
        p.bytes += written;
        auto& total = p.dir == RelayDirection::kToTarget ? self->relay_.to_target : self->relay_.to_client;
        total.fetch_add(written, std::memory_order_relaxed);
        if (self->closed_) return;
        if (ec) return self->close(fmt::format("{}: {}", side(p, false), ec.message()));
        self->pump(p);
      });
    });
  }

  // The source of `p` sent FIN: pass it on; the other direction keeps flowing until it finishes too.
  void finished(Pipe& p) {
    error_code ec;
    p.to->shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return close(fmt::format("{}: {}", side(p, false), ec.message()));
    p.ended = true;
    if (up_.ended && down_.ended) close("both sides finished");
  }

  Relay::Impl& relay_;
  uint64_t id_;
  std::string peer_;
  tcp::socket client_, target_;
  tcp::resolver resolver_;
  asio::steady_timer timer_;
  Pipe up_, down_;
  bool connected_ = false, closed_ = false;
};

}  // namespace

void Relay::Impl::do_accept() {
  acceptor.async_accept([this](error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // E.g. out of descriptors: try again shortly instead of spinning.
      spdlog::warn("relay: accept on {} failed: {}", address, ec.message());
      accept_retry.expires_after(100ms);
      accept_retry.async_wait([this](error_code e) {
        if (!e) do_accept();
      });
      return;
    }
    admit(std::move(socket));
    do_accept();
  });
}

void Relay::Impl::admit(tcp::socket socket) {
  uint64_t id = next_id++;
  if (live.size() >= options.max_connections) {
    refused.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("relay: connection {} from {} refused: the limit of {} open connections is reached", id, peer_text(socket),
                 live.size());
    error_code ignored;
    socket.close(ignored);
    return;
  }
  auto c = std::make_shared<Connection>(*this, id, std::move(socket));
  live[id] = c;
  accepted.fetch_add(1, std::memory_order_relaxed);
  active.fetch_add(1, std::memory_order_relaxed);
  c->start();
}

void Relay::Impl::close_all() {
  error_code ignored;
  acceptor.close(ignored);
  accept_retry.cancel();
  auto open = live;  // close() erases from `live`
  for (auto& [id, weak] : open) {
    if (auto c = weak.lock()) c->close("relay stopping");
  }
}

Result<std::unique_ptr<Relay>> Relay::start(RelayOptions options) {
  auto im = std::make_unique<Impl>();
  VEIL_ASSIGN_OR_RETURN(channel::Endpoint listen, tcp_endpoint("listen address", options.listen));
  VEIL_ASSIGN_OR_RETURN(im->target, tcp_endpoint("target", options.target));
  if (im->target.port == 0) return make_error(ErrorCode::kInvalidArgument, "relay: target '{}': port 0", options.target);
  if (options.connect_timeout <= 0ms) {
    return make_error(ErrorCode::kInvalidArgument, "relay: the connect timeout must be positive");
  }
  if (options.max_connections == 0) {
    return make_error(ErrorCode::kInvalidArgument, "relay: at least one connection must be allowed");
  }
  if (options.buffer_bytes < kMinBuffer || options.buffer_bytes > kMaxBuffer) {
    return make_error(ErrorCode::kInvalidArgument, "relay: buffer of {} bytes is outside [{}, {}]",
                      options.buffer_bytes, kMinBuffer, kMaxBuffer);
  }
  error_code ec;
  auto addr = asio::ip::make_address(listen.host, ec);
  if (ec) {
    return make_error(ErrorCode::kInvalidArgument, "relay: listen address '{}' is not an IP address", listen.host);
  }
  tcp::endpoint ep(addr, static_cast<uint16_t>(listen.port));
  im->acceptor.open(ep.protocol(), ec);
  if (!ec) im->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) im->acceptor.bind(ep, ec);
  if (!ec) im->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) ep = im->acceptor.local_endpoint(ec);
  if (ec) return make_error(ErrorCode::kIo, "relay: listening on {}: {}", endpoint_text(ep), ec.message());
  im->address = endpoint_text(ep);
  im->options = std::move(options);
  im->do_accept();
  Impl* raw = im.get();
  im->thread = std::thread([raw] {
    for (;;) {
      try {
        raw->ioc.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("relay: I/O handler threw: {}", e.what());
      }
    }
  });
  spdlog::info("relay: forwarding {} to {}", im->address, im->target.to_string());
  return std::unique_ptr<Relay>(new Relay(std::move(im)));
}

Relay::Relay(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Relay::~Relay() { stop(); }

void Relay::stop() {
  {
    std::lock_guard lock(impl_->stop_mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  Impl* im = impl_.get();
  asio::post(im->ioc, [im] { im->close_all(); });
  // With the acceptor and every connection closed, the I/O thread runs out of work and returns.
  if (im->thread.joinable()) im->thread.join();
}

std::string Relay::address() const { return impl_->address; }
std::string Relay::target() const { return impl_->target.to_string(); }

RelayStats Relay::stats() const {
  const Impl& im = *impl_;
  auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  return {get(im.accepted), get(im.refused), get(im.failed_connects), get(im.active), get(im.to_target),
          get(im.to_client)};
}

}  // namespace veil::pipeline
