// Transports: stream sockets (TCP, Unix, AF_VSOCK) with deadlines, and an in-process pair.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
// linux/vm_sockets.h needs sockaddr from sys/socket.h first.
#include <linux/vm_sockets.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "channel/channel.h"

namespace veil::channel {
namespace {

// Socket buffers for bulk transfer: large enough to keep a 1 MiB record in flight on loopback.
constexpr int kSocketBuffer = 4 << 20;
constexpr size_t kReadAhead = 16 << 10;

std::string errno_text(int e) { return std::strerror(e); }

// Milliseconds to wait until `deadline` for poll(): -1 for no deadline, 0 when already passed.
int poll_timeout(Deadline deadline) {
  if (deadline == Deadline::max()) return -1;
  auto now = Clock::now();
  if (now >= deadline) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

// Waits for `events` on fd. kTimeout at the deadline.
Status wait_fd(int fd, short events, Deadline deadline, const std::string& peer, const char* what) {
  while (true) {
    int timeout = poll_timeout(deadline);
    if (timeout == 0) {
      return make_error(ErrorCode::kTimeout, "{} {}: deadline passed", what, peer);
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, timeout);
    if (r > 0) return ok_status();
    if (r < 0 && errno != EINTR) return make_error(ErrorCode::kIo, "{} {}: poll: {}", what, peer, errno_text(errno));
  }
}

class FdTransport final : public Transport {
 public:
  FdTransport(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)), rbuf_(kReadAhead) {}
  ~FdTransport() override { ::close(fd_); }

  Status write_all(std::span<const ByteView> parts, Deadline deadline) override {
    constexpr size_t kMaxIov = 16;
    iovec iov[kMaxIov];
    size_t n = 0;
    for (const auto& p : parts) {
      if (p.empty()) continue;
      if (n == kMaxIov) return make_error(ErrorCode::kInvalidArgument, "write to {}: more than {} parts", peer_, kMaxIov);
      iov[n++] = iovec{const_cast<uint8_t*>(p.data()), p.size()};
    }
    size_t first = 0;
    while (first < n) {
      if (shut_.load(std::memory_order_acquire)) return make_error(ErrorCode::kUnavailable, "write to {}: shut down", peer_);
      msghdr msg{};
      msg.msg_iov = iov + first;
      msg.msg_iovlen = n - first;
      ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          VEIL_TRY(wait_fd(fd_, POLLOUT, deadline, peer_, "write to"));
          continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
          return make_error(ErrorCode::kUnavailable, "write to {}: connection closed by peer", peer_);
        }
        return make_error(ErrorCode::kIo, "write to {}: {}", peer_, errno_text(errno));
      }
      size_t done = static_cast<size_t>(w);
      while (first < n && done >= iov[first].iov_len) done -= iov[first++].iov_len;
      if (first < n) {
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + done;
        iov[first].iov_len -= done;
      }
    }
    return ok_status();
  }

  Status read_exact(std::span<uint8_t> out, Deadline deadline) override {
    size_t got = 0;
    // Buffered bytes first.
    size_t take = std::min(out.size(), rend_ - rpos_);
    std::memcpy(out.data(), rbuf_.data() + rpos_, take);
    rpos_ += take;
    got += take;
    while (got < out.size()) {
      size_t want = out.size() - got;
      bool direct = want >= kReadAhead / 2;  // large reads go straight into the caller's buffer
      uint8_t* dst = direct ? out.data() + got : rbuf_.data();
      size_t cap = direct ? want : rbuf_.size();
      ssize_t r = ::recv(fd_, dst, cap, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (shut_.load(std::memory_order_acquire)) {
            return make_error(ErrorCode::kUnavailable, "read from {}: shut down", peer_);
          }
          VEIL_TRY(wait_fd(fd_, POLLIN, deadline, peer_, "read from"));
          continue;
        }
        if (errno == ECONNRESET) return make_error(ErrorCode::kUnavailable, "read from {}: connection reset", peer_);
        return make_error(ErrorCode::kIo, "read from {}: {}", peer_, errno_text(errno));
      }
      if (r == 0) {
        if (got == 0) return make_error(ErrorCode::kUnavailable, "read from {}: closed by peer", peer_);
        return make_error(ErrorCode::kCorrupt, "read from {}: stream ended after {} of {} bytes", peer_, got,
                          out.size());
      }
      if (direct) {
        got += static_cast<size_t>(r);
      } else {
        rpos_ = 0;
        rend_ = static_cast<size_t>(r);
        size_t t = std::min(want, rend_);
        std::memcpy(out.data() + got, rbuf_.data(), t);
        rpos_ = t;
        got += t;
      }
    }
    return ok_status();
  }

  void shutdown() override {
    if (!shut_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
  }
  std::string peer() const override { return peer_; }

 private:
  int fd_;
  std::string peer_;
  std::atomic<bool> shut_{false};
  Bytes rbuf_;
  size_t rpos_ = 0, rend_ = 0;
};

void tune_stream(int fd, Endpoint::Kind kind) {
  int one = 1;
  if (kind == Endpoint::Kind::kTcp) ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (kind != Endpoint::Kind::kVsock) {
    int size = kSocketBuffer;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
}

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family = AF_UNSPEC;
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
};

std::string format_sockaddr(const sockaddr* sa, Endpoint::Kind kind) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    return fmt::format("tcp:{}:{}", host, ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    return fmt::format("tcp:[{}]:{}", host, ntohs(in6->sin6_port));
  }
  if (sa->sa_family == AF_VSOCK) {
    auto* vm = reinterpret_cast<const sockaddr_vm*>(sa);
    return fmt::format("vsock:{}:{}", vm->svm_cid, vm->svm_port);
  }
  return kind == Endpoint::Kind::kUnix ? "unix:(peer)" : "(unknown)";
}

Result<SockAddr> resolve(const Endpoint& ep) {
  SockAddr a;
  switch (ep.kind) {
    case Endpoint::Kind::kTcp: {
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      std::string port = std::to_string(ep.port);
      std::string host = ep.host;
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
      int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
      if (rc != 0 || !res) {
        return make_error(ErrorCode::kUnavailable, "resolve {}: {}", ep.to_string(), ::gai_strerror(rc));
      }
      std::memcpy(&a.storage, res->ai_addr, res->ai_addrlen);
      a.len = static_cast<socklen_t>(res->ai_addrlen);
      a.family = res->ai_family;
      ::freeaddrinfo(res);
      return a;
    }
    case Endpoint::Kind::kUnix: {
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      if (ep.path.empty() || ep.path.size() >= sizeof(un.sun_path)) {
        return make_error(ErrorCode::kInvalidArgument, "unix socket path of {} bytes: must be 1..{}", ep.path.size(),
                          sizeof(un.sun_path) - 1);
      }
      std::memcpy(un.sun_path, ep.path.data(), ep.path.size());
      std::memcpy(&a.storage, &un, sizeof un);
      a.len = sizeof un;
      a.family = AF_UNIX;
      return a;
    }
    case Endpoint::Kind::kVsock: {
      sockaddr_vm vm{};
      vm.svm_family = AF_VSOCK;
      vm.svm_cid = ep.cid;
      vm.svm_port = ep.port;
      std::memcpy(&a.storage, &vm, sizeof vm);
      a.len = sizeof vm;
      a.family = AF_VSOCK;
      return a;
    }
  }
  return make_error(ErrorCode::kInternal, "unknown endpoint kind");
}

class SocketListener final : public Listener {
 public:
  SocketListener(int fd, Endpoint ep, std::string address) : fd_(fd), ep_(std::move(ep)), address_(std::move(address)) {}
  ~SocketListener() override {
    close();
    ::close(fd_);
    if (ep_.kind == Endpoint::Kind::kUnix) ::unlink(ep_.path.c_str());
  }

  Result<std::unique_ptr<Transport>> accept(Deadline deadline) override {
    while (true) {
      if (closed_.load()) return make_error(ErrorCode::kCancelled, "accept on {}: listener closed", address_);
      SockAddr peer;
      peer.len = sizeof peer.storage;
      int fd = ::accept4(fd_, peer.get(), &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        tune_stream(fd, ep_.kind);
        std::string name = ep_.kind == Endpoint::Kind::kUnix ? "unix:" + ep_.path : format_sockaddr(peer.get(), ep_.kind);
        return std::unique_ptr<Transport>(std::make_unique<FdTransport>(fd, std::move(name)));
      }
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        VEIL_TRY(wait_fd(fd_, POLLIN, deadline, address_, "accept on"));
        continue;
      }
      if (closed_.load()) return make_error(ErrorCode::kCancelled, "accept on {}: listener closed", address_);
      return make_error(ErrorCode::kIo, "accept on {}: {}", address_, errno_text(errno));
    }
  }
  std::string address() const override { return address_; }
  void close() override {
    if (!closed_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
  }

 private:
  int fd_;
  Endpoint ep_;
  std::string address_;
  std::atomic<bool> closed_{false};
};

// ---- in-process pair ----

struct Pipe {
  std::mutex mu;
  std::condition_variable cv;
  Bytes buf;
  size_t start = 0;
  bool closed = false;
  size_t capacity;
  explicit Pipe(size_t cap) : capacity(cap) {}
  size_t available() const { return buf.size() - start; }
};

class InProcessTransport final : public Transport {
  // Waits for `ready`; before sleeping, wakes the other side, which may be waiting for what this side did so far
  // (a writer that filled the pipe, a reader that drained it). Other wake-ups happen once per call, after unlocking.
  template <typename Ready>
  static bool wait_for(Pipe& p, std::unique_lock<std::mutex>& lock, Deadline deadline, Ready ready) {
    if (ready()) return true;
    p.cv.notify_all();
    return p.cv.wait_until(lock, deadline, ready);
  }

 public:
  InProcessTransport(std::shared_ptr<Pipe> in, std::shared_ptr<Pipe> out, std::string name)
      : in_(std::move(in)), out_(std::move(out)), name_(std::move(name)) {}
  ~InProcessTransport() override { shutdown(); }

  Status write_all(std::span<const ByteView> parts, Deadline deadline) override {
    Pipe& p = *out_;
    std::unique_lock<std::mutex> lock(p.mu);
    for (ByteView part : parts) {
      while (!part.empty()) {
        if (!wait_for(p, lock, deadline, [&] { return p.closed || p.available() < p.capacity; })) {
          return make_error(ErrorCode::kTimeout, "write to {}: deadline passed", name_);
        }
        if (p.closed) return make_error(ErrorCode::kUnavailable, "write to {}: closed", name_);
        if (p.start > 0 && p.start == p.buf.size()) {
          p.buf.clear();
          p.start = 0;
        }
        size_t n = std::min(part.size(), p.capacity - p.available());
        p.buf.insert(p.buf.end(), part.begin(), part.begin() + static_cast<std::ptrdiff_t>(n));
        part = part.subspan(n);
      }
    }
    lock.unlock();
    p.cv.notify_all();  // once, after the whole write: the reader wakes to a complete frame and a free lock
    return ok_status();
  }

  Status read_exact(std::span<uint8_t> out, Deadline deadline) override {
    Pipe& p = *in_;
    std::unique_lock<std::mutex> lock(p.mu);
    size_t got = 0;
    while (got < out.size()) {
      if (!wait_for(p, lock, deadline, [&] { return p.closed || p.available() > 0; })) {
        return make_error(ErrorCode::kTimeout, "read from {}: deadline passed", name_);
      }
      if (p.available() == 0) {
        if (got == 0) return make_error(ErrorCode::kUnavailable, "read from {}: closed by peer", name_);
        return make_error(ErrorCode::kCorrupt, "read from {}: stream ended after {} of {} bytes", name_, got,
                          out.size());
      }
      size_t n = std::min(out.size() - got, p.available());
      std::memcpy(out.data() + got, p.buf.data() + p.start, n);
      p.start += n;
      got += n;
      if (p.start == p.buf.size()) {
        p.buf.clear();
        p.start = 0;
      } else if (p.start > p.capacity) {
        p.buf.erase(p.buf.begin(), p.buf.begin() + static_cast<std::ptrdiff_t>(p.start));
        p.start = 0;
      }
    }
    lock.unlock();
    p.cv.notify_all();  // a writer may wait for the space just freed
    return ok_status();
  }

  void shutdown() override {
    for (auto* p : {in_.get(), out_.get()}) {
      std::lock_guard<std::mutex> lock(p->mu);
      p->closed = true;
      p->cv.notify_all();
    }
  }
  std::string peer() const override { return name_; }

 private:
  std::shared_ptr<Pipe> in_, out_;
  std::string name_;
};

int socket_family(Endpoint::Kind kind, int resolved) {
  return kind == Endpoint::Kind::kTcp ? resolved : kind == Endpoint::Kind::kUnix ? AF_UNIX : AF_VSOCK;
}

}  // namespace

std::string Endpoint::to_string() const {
  switch (kind) {
    case Kind::kTcp: return fmt::format("tcp:{}:{}", host, port);
    case Kind::kUnix: return "unix:" + path;
    case Kind::kVsock: return fmt::format("vsock:{}:{}", cid, port);
  }
  return "?";
}

static Result<uint32_t> parse_u32(std::string_view s, std::string_view text, const char* field) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) {
    return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': {} '{}' is not a number", text, field, s);
  }
  return v;
}

Result<Endpoint> parse_endpoint(std::string_view text) {
  Endpoint ep;
  auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': expected tcp:HOST:PORT, unix:PATH or vsock:CID:PORT",
                      text);
  }
  auto scheme = text.substr(0, colon);
  auto rest = text.substr(colon + 1);
  if (scheme == "unix") {
    ep.kind = Endpoint::Kind::kUnix;
    ep.path = std::string(rest);
    if (ep.path.empty()) return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': empty unix path", text);
    return ep;
  }
  auto last = rest.rfind(':');
  if (last == std::string_view::npos || last == 0) {
    return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': expected {}:<address>:<port>", text, scheme);
  }
  VEIL_ASSIGN_OR_RETURN(ep.port, parse_u32(rest.substr(last + 1), text, "port"));
  if (scheme == "tcp") {
    ep.kind = Endpoint::Kind::kTcp;
    ep.host = std::string(rest.substr(0, last));
    if (ep.port > 65535) return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': port above 65535", text);
    return ep;
  }
  if (scheme == "vsock") {
    ep.kind = Endpoint::Kind::kVsock;
    VEIL_ASSIGN_OR_RETURN(ep.cid, parse_u32(rest.substr(0, last), text, "cid"));
    return ep;
  }
  return make_error(ErrorCode::kInvalidArgument, "endpoint '{}': unknown scheme '{}'", text, scheme);
}

Result<std::unique_ptr<Listener>> listen(const Endpoint& endpoint) {
  VEIL_ASSIGN_OR_RETURN(auto addr, resolve(endpoint));
  int fd = ::socket(socket_family(endpoint.kind, addr.family), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return make_error(endpoint.kind == Endpoint::Kind::kVsock ? ErrorCode::kUnsupported : ErrorCode::kIo,
                      "listen on {}: socket: {}", endpoint.to_string(), errno_text(errno));
  }
  int one = 1;
  if (endpoint.kind == Endpoint::Kind::kTcp) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, addr.get(), addr.len) != 0 || ::listen(fd, 128) != 0) {
    int e = errno;
    ::close(fd);
    return make_error(endpoint.kind == Endpoint::Kind::kVsock ? ErrorCode::kUnsupported : ErrorCode::kIo,
                      "listen on {}: {}", endpoint.to_string(), errno_text(e));
  }
  std::string address = endpoint.to_string();
  if (endpoint.kind != Endpoint::Kind::kUnix) {
    SockAddr bound;
    bound.len = sizeof bound.storage;
    if (::getsockname(fd, bound.get(), &bound.len) == 0) address = format_sockaddr(bound.get(), endpoint.kind);
  }
  return std::unique_ptr<Listener>(std::make_unique<SocketListener>(fd, endpoint, std::move(address)));
}

Result<std::unique_ptr<Transport>> connect(const Endpoint& endpoint, Deadline deadline) {
  VEIL_ASSIGN_OR_RETURN(auto addr, resolve(endpoint));
  std::string name = endpoint.to_string();
  int fd = ::socket(socket_family(endpoint.kind, addr.family), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return make_error(endpoint.kind == Endpoint::Kind::kVsock ? ErrorCode::kUnsupported : ErrorCode::kIo,
                      "connect to {}: socket: {}", name, errno_text(errno));
  }
  tune_stream(fd, endpoint.kind);
  auto fail = [&](ErrorCode code, std::string why) -> Error {
    ::close(fd);
    return make_error(code, "connect to {}: {}", name, why);
  };
  if (::connect(fd, addr.get(), addr.len) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      int e = errno;
      return fail(e == ECONNREFUSED || e == ENOENT ? ErrorCode::kUnavailable : ErrorCode::kIo, errno_text(e));
    }
    auto st = wait_fd(fd, POLLOUT, deadline, name, "connect to");
    if (!st.ok()) return fail(st.error().code(), "deadline passed");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return fail(err == ECONNREFUSED || err == ENOENT ? ErrorCode::kUnavailable : ErrorCode::kIo, errno_text(err));
    }
  }
  return std::unique_ptr<Transport>(std::make_unique<FdTransport>(fd, std::move(name)));
}

std::pair<std::unique_ptr<Transport>, std::unique_ptr<Transport>> make_in_process_pair(size_t capacity) {
  auto a_to_b = std::make_shared<Pipe>(std::max<size_t>(capacity, 1));
  auto b_to_a = std::make_shared<Pipe>(std::max<size_t>(capacity, 1));
  return {std::make_unique<InProcessTransport>(b_to_a, a_to_b, "inproc:b"),
          std::make_unique<InProcessTransport>(a_to_b, b_to_a, "inproc:a")};
}

}  // namespace veil::channel
