// The Beast transport: the only translation unit of Veil that includes Boost.Beast and Asio SSL.
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <mutex>
#include <thread>

#include "server/server.h"

namespace veil::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

class SessionBase : public std::enable_shared_from_this<SessionBase> {
 public:
  virtual ~SessionBase() = default;
  virtual void close() = 0;
};

struct Server::Impl {
  ServerOptions options;
  SigningKeys keys;
  std::optional<TlsIdentity> tls;
  Metrics metrics;
  std::unique_ptr<Api> api;
  GenerationBackend* backend = nullptr;
  // Declared before ioc: sessions destroyed with ioc's pending handlers still report to these.
  std::mutex mu;
  std::condition_variable cv;
  size_t connections = 0;     // guarded by mu
  size_t generations = 0;     // generations not yet fully written, guarded by mu
  bool stopped = false;
  std::list<std::weak_ptr<SessionBase>> sessions;  // io thread only
  asio::io_context ioc{1};
  std::unique_ptr<ssl::context> ssl_ctx;
  tcp::acceptor acceptor{ioc};
  uint16_t port = 0;
  std::thread io_thread;


  void connection_opened() {
    std::lock_guard<std::mutex> lock(mu);
    ++connections;
  }
  void connection_closed() {
    std::lock_guard<std::mutex> lock(mu);
    --connections;
    cv.notify_all();
  }
  void generation_started() {
    std::lock_guard<std::mutex> lock(mu);
    ++generations;
  }
  void generation_finished() {
    std::lock_guard<std::mutex> lock(mu);
    --generations;
    cv.notify_all();
  }

  void do_accept();
  template <class Stream>
  void launch(tcp::socket socket);
};

namespace {

template <class Stream>
class Session final : public SessionBase {
 public:
  template <class... Args>
  Session(Server::Impl& srv, Args&&... args) : srv_(srv), stream_(std::forward<Args>(args)...) {
    srv_.connection_opened();
    srv_.metrics.connection_opened();
  }
  ~Session() override {
    if (gen_active_) srv_.generation_finished();
    srv_.metrics.connection_closed();
    srv_.connection_closed();
  }

  void run() {
    lowest().expires_after(srv_.options.idle_timeout);
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      do_read();
    } else {
      auto self = shared();
      stream_.async_handshake(ssl::stream_base::server, [self](beast::error_code ec) {
        if (ec) return self->close();
        self->do_read();
      });
    }
  }

  void close() override {
    if (closed_) return;
    closed_ = true;
    idle_timer_.cancel();
    if (gen_ && !gen_done_) gen_->cancel();
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close();
  }

 private:
  std::shared_ptr<Session> shared() { return std::static_pointer_cast<Session>(shared_from_this()); }
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  void do_read() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(srv_.options.max_body_bytes);
    parser_->header_limit(16 * 1024);
    lowest().expires_after(srv_.options.idle_timeout);
    auto self = shared();
    http::async_read(stream_, buffer_, *parser_, [self](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::body_limit || ec == http::error::header_limit) {
      auto r = Api::error(413, "the request is larger than the server accepts", {}, "request_too_large");
      srv_.metrics.request_done("too_large", 413, 0);
      return send(std::move(r), false);
    }
    if (ec) {
      bool benign = ec == http::error::end_of_stream || ec == asio::error::eof || ec == beast::error::timeout ||
                    ec == asio::error::operation_aborted || ec == asio::ssl::error::stream_truncated ||
                    ec == asio::error::connection_reset;
      if (!benign && !closed_) {
        srv_.metrics.request_done("bad_request", 400, 0);
        return send(Api::error(400, "malformed HTTP request"), false);
      }
      return close();
    }
    auto& msg = parser_->get();
    keep_alive_ = msg.keep_alive();
    HttpRequestData req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.authorization = std::string(msg[http::field::authorization]);
    req.body = std::move(msg.body());
    auto start = std::chrono::steady_clock::now();
    Api::Outcome outcome = srv_.api->handle(std::move(req));
    if (outcome.response) {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      srv_.metrics.request_done(outcome.route, outcome.response->status, secs);
      return send(std::move(*outcome.response), keep_alive_);
    }
    start_generation(std::move(outcome.generation));
  }

  void send(HttpResponseData data, bool keep_alive) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(data.status));
    res->set(http::field::server, "veil");
    res->set(http::field::content_type, data.content_type);
    res->set(http::field::cache_control, "no-store");
    for (auto& [k, v] : data.headers) res->set(k, v);
    res->body() = std::move(data.body);
    res->keep_alive(keep_alive && !closed_);
    res->prepare_payload();
    lowest().expires_after(srv_.options.write_timeout);
    writing_ = true;
    auto self = shared();
    http::async_write(stream_, *res, [self, res](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec || !res->keep_alive()) return self->close();
      self->next_request();
    });
  }

  // ---- generations ----

  void start_generation(std::unique_ptr<Generation> gen) {
    gen_ = std::move(gen);
    gen_active_ = true;
    gen_done_ = false;  // a keep-alive connection may have served a generation before
    paused_ = false;
    pending_.clear();
    srv_.generation_started();
    auto self = shared();
    // Events are coalesced: the backend thread appends to the mailbox and posts one drain at a time, so a
    // fast model never floods the I/O thread's queue. The sink keeps the session alive until the last event.
    auto box = mailbox_;
    auto err = gen_->start([self, box](GenerationEvent&& ev) {
      bool post = false;
      {
        std::lock_guard<std::mutex> lock(box->mu);
        box->events.push_back(std::move(ev));
        post = !box->scheduled;
        box->scheduled = true;
      }
      if (post) asio::post(self->srv_.ioc, [self] { self->drain_mailbox(); });
    });
    if (err) {
      gen_done_ = true;
      end_generation();
      return send(std::move(*err), keep_alive_);
    }
    if (!gen_->streaming()) {
      // The response is written once the last event arrives; meanwhile a client that goes away cancels.
      watch_peer();
      return;
    }
    sse_header_.version(11);
    sse_header_.result(http::status::ok);
    sse_header_.set(http::field::server, "veil");
    sse_header_.set(http::field::content_type, "text/event-stream");
    sse_header_.set(http::field::cache_control, "no-store");
    sse_header_.set("X-Veil-Completion-Id", gen_->completion_id());
    sse_header_.keep_alive(keep_alive_);
    sse_header_.chunked(true);
    sse_sr_.emplace(sse_header_);
    writing_ = true;
    lowest().expires_after(srv_.options.write_timeout);
    http::async_write_header(stream_, *sse_sr_, [self](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->peer_gone();
      self->watch_peer();
      self->pump();
    });
  }

  // Reads while a generation runs (streaming or not): a client sends nothing more until the response ends,
  // so EOF or an error means it went away, and its sequence is cancelled at once (its slot is freed). Bytes
  // that do arrive (a pipelined next request) are kept in buffer_ for the next request. The read has no
  // deadline of its own (a generation may outlast idle_timeout); once the response is written, idle_timer_
  // bounds the wait for the next request.
  void watch_peer() {
    if (closed_) return;
    if (buffer_.size() > 64 * 1024) return close();
    watching_ = true;
    lowest().expires_never();  // applies to the read only: a write in progress keeps its deadline
    auto self = shared();
    stream_.async_read_some(buffer_.prepare(4096), [self](beast::error_code ec, size_t n) {
      self->watching_ = false;
      self->idle_timer_.cancel();
      if (ec) {
        if (self->gen_active_) return self->peer_gone();
        return self->close();
      }
      self->buffer_.commit(n);
      if (self->gen_active_ || self->writing_) return self->watch_peer();
      self->do_read();  // the response has been written: this is the next request
    });
  }

  // After a response, while watch_peer's read stays pending: close the connection if no request comes.
  void arm_idle_timer() {
    idle_timer_.expires_after(srv_.options.idle_timeout);
    auto self = shared();
    idle_timer_.async_wait([self](beast::error_code ec) {
      if (!ec && self->watching_ && !self->gen_active_) self->close();
    });
  }

  // The next request: read it, unless watch_peer's read is still pending (it becomes the next request's).
  void next_request() {
    if (!watching_) return do_read();
    lowest().expires_after(srv_.options.idle_timeout);
    arm_idle_timer();
  }

  void peer_gone() {
    if (gen_ && !gen_done_) gen_->cancel();  // frees the slot at the scheduler's next step
    close();
  }

  void drain_mailbox() {
    std::deque<GenerationEvent> events;
    {
      std::lock_guard<std::mutex> lock(mailbox_->mu);
      events.swap(mailbox_->events);
      mailbox_->scheduled = false;
    }
    for (auto& ev : events) on_event(std::move(ev));
  }

  void on_event(GenerationEvent&& ev) {
    if (gen_done_) return;
    Generation::Output out = gen_->on_event(std::move(ev));
    if (out.done) gen_done_ = true;
    if (!gen_->streaming()) {
      if (!out.done) return;
      end_generation();
      if (closed_) return;
      HttpResponseData r;
      r.status = out.status;
      r.body = std::move(out.bytes);
      r.headers.emplace_back("X-Veil-Completion-Id", gen_->completion_id());
      return send(std::move(r), keep_alive_);
    }
    if (closed_) {
      if (gen_done_) end_generation();
      return;
    }
    pending_ += out.bytes;
    if (!gen_done_ && !paused_ && pending_.size() > kPauseBytes) {
      paused_ = true;  // the client reads slower than we generate: stop decoding for it
      gen_->pause(true);
    }
    pump();
  }

  void pump() {
    if (writing_ || closed_) return;
    auto self = shared();
    if (!pending_.empty()) {
      writing_ = true;
      inflight_.swap(pending_);
      pending_.clear();
      lowest().expires_after(srv_.options.write_timeout);
      asio::async_write(stream_, http::make_chunk(asio::buffer(inflight_)), [self](beast::error_code ec, size_t) {
        self->writing_ = false;
        self->inflight_.clear();
        if (ec) return self->peer_gone();
        if (self->paused_ && !self->gen_done_ && self->pending_.size() < kPauseBytes) {
          self->paused_ = false;  // the client caught up
          self->gen_->pause(false);
        }
        self->pump();
      });
      return;
    }
    if (!gen_done_) return;
    writing_ = true;
    asio::async_write(stream_, http::make_chunk_last(), [self](beast::error_code ec, size_t) {
      self->writing_ = false;
      self->end_generation();
      if (ec || !self->keep_alive_) return self->close();
      self->next_request();
    });
  }

  void end_generation() {
    if (!gen_active_) return;
    gen_active_ = false;
    srv_.generation_finished();
  }

  Server::Impl& srv_;
  Stream stream_;
  beast::flat_buffer buffer_;
  asio::steady_timer idle_timer_{stream_.get_executor()};
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = true;
  bool closed_ = false;

  std::unique_ptr<Generation> gen_;
  bool gen_active_ = false;
  bool gen_done_ = false;
  bool writing_ = false;
  static constexpr size_t kPauseBytes = 256 * 1024;
  struct Mailbox {
    std::mutex mu;
    std::deque<GenerationEvent> events;
    bool scheduled = false;
  };
  std::shared_ptr<Mailbox> mailbox_ = std::make_shared<Mailbox>();
  std::string pending_;   // SSE bytes not yet handed to a write
  std::string inflight_;  // the write in progress
  bool paused_ = false;
  bool watching_ = false;
  http::response<http::empty_body> sse_header_;
  std::optional<http::response_serializer<http::empty_body>> sse_sr_;
};

}  // namespace

template <class Stream>
void Server::Impl::launch(tcp::socket socket) {
  std::shared_ptr<Session<Stream>> s;
  if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
    s = std::make_shared<Session<Stream>>(*this, std::move(socket));
  } else {
    s = std::make_shared<Session<Stream>>(*this, std::move(socket), *ssl_ctx);
  }
  for (auto it = sessions.begin(); it != sessions.end();) it = it->expired() ? sessions.erase(it) : std::next(it);
  sessions.push_back(s);
  s->run();
}

void Server::Impl::do_accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      spdlog::warn("server: accept failed: {}", ec.message());
      return do_accept();
    }
    size_t open;
    {
      std::lock_guard<std::mutex> lock(mu);
      open = connections;
    }
    if (open >= options.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      if (ssl_ctx) {
        launch<beast::ssl_stream<beast::tcp_stream>>(std::move(socket));
      } else {
        launch<beast::tcp_stream>(std::move(socket));
      }
    }
    do_accept();
  });
}

Result<std::unique_ptr<Server>> Server::start(const ServerOptions& options, GenerationBackend& backend, Store& store,
                                              attest::Provider& provider, SigningKeys keys) {
  std::unique_ptr<Server> server(new Server());
  server->impl_ = std::make_unique<Impl>();
  Impl& im = *server->impl_;
  im.options = options;
  im.keys = std::move(keys);
  im.backend = &backend;
  crypto::Sha256Digest spki{};
  if (options.tls) {
    VEIL_ASSIGN_OR_RETURN(auto id, make_tls_identity(provider, im.keys, options.dns_names));
    im.tls = std::move(id);
    spki = im.tls->spki_sha256;
    try {
      im.ssl_ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
      im.ssl_ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                              ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
      im.ssl_ctx->use_certificate_chain(asio::buffer(im.tls->cert_pem));
      im.ssl_ctx->use_private_key(asio::buffer(im.tls->key_pem.data(), im.tls->key_pem.size()), ssl::context::pem);
    } catch (const std::exception& e) {
      return make_error(ErrorCode::kInternal, "configuring TLS: {}", e.what());
    }
  }
  ApiOptions api_options;
  api_options.require_auth = options.require_auth;
  im.api = std::make_unique<Api>(backend, store, im.keys, provider, spki, im.metrics, api_options);

  beast::error_code ec;
  auto addr = asio::ip::make_address(options.address, ec);
  if (ec) return make_error(ErrorCode::kInvalidArgument, "listen address '{}' is not an IP address", options.address);
  tcp::endpoint ep(addr, options.port);
  im.acceptor.open(ep.protocol(), ec);
  if (!ec) im.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) im.acceptor.bind(ep, ec);
  if (!ec) im.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return make_error(ErrorCode::kIo, "listening on {}:{}: {}", options.address, options.port, ec.message());
  im.port = im.acceptor.local_endpoint().port();
  im.do_accept();
  im.io_thread = std::thread([&im] {
    for (;;) {
      try {
        im.ioc.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("server: I/O handler threw: {}", e.what());
      }
    }
  });
  spdlog::info("server: listening on {}:{} ({})", options.address, im.port, options.tls ? "TLS" : "plain HTTP");
  return server;
}

Server::~Server() { stop(std::chrono::milliseconds(0)); }

uint16_t Server::port() const { return impl_->port; }
const TlsIdentity* Server::tls_identity() const { return impl_->tls ? &*impl_->tls : nullptr; }
const SigningKeys& Server::signing_keys() const { return impl_->keys; }
Metrics& Server::metrics() { return impl_->metrics; }
size_t Server::open_connections() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->connections;
}

void Server::stop(std::chrono::milliseconds grace) {
  Impl& im = *impl_;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    if (im.stopped) return;
    im.stopped = true;
  }
  asio::post(im.ioc, [&im] {
    beast::error_code ec;
    im.acceptor.close(ec);
  });
  im.api->set_draining();
  im.backend->shutdown(grace);  // finishes or cancels every sequence; their last events are posted to ioc
  {
    std::unique_lock<std::mutex> lock(im.mu);
    im.cv.wait_for(lock, std::chrono::seconds(10), [&] { return im.generations == 0; });
  }
  asio::post(im.ioc, [&im] {
    for (auto& w : im.sessions) {
      if (auto s = w.lock()) s->close();
    }
  });
  {
    std::unique_lock<std::mutex> lock(im.mu);
    im.cv.wait_for(lock, std::chrono::seconds(10), [&] { return im.connections == 0; });
  }
  im.ioc.stop();
  if (im.io_thread.joinable()) im.io_thread.join();
}

}  // namespace veil::server
