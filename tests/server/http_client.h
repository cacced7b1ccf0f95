// TEST ONLY: a small blocking HTTP/1.1 client over POSIX sockets and OpenSSL, so the tests talk to the server
// over real TLS without a second HTTP stack. Every socket has 20 s send/receive timeouts: tests stay bounded.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <csignal>
#include <cctype>
#include <map>
#include <string>
#include <vector>

namespace veil::server::testing {

struct HttpResult {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  std::string error;                           // transport failure, empty on success
};

class HttpConnection {
 public:
  HttpConnection(uint16_t port, bool tls) : port_(port), tls_(tls) {}
  ~HttpConnection() { close(); }
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  bool connect() {
    ::signal(SIGPIPE, SIG_IGN);  // a server closing early must fail a write, not kill the test
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return false;
    timeval tv{20, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
    if (!tls_) return true;
    ctx_ = SSL_CTX_new(TLS_client_method());
    // The certificate is self-signed; tests check it explicitly (RA-TLS), so chain verification is off here.
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    SSL_set_tlsext_host_name(ssl_, "localhost");
    if (SSL_connect(ssl_) != 1) {
      ERR_clear_error();
      return false;
    }
    return true;
  }

  bool send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      long n = tls_ ? SSL_write(ssl_, data.data() + off, static_cast<int>(data.size() - off))
                    : ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Appends whatever arrives next to `buf_`; false at EOF or error.
  bool fill() {
    char tmp[16384];
    long n = tls_ ? SSL_read(ssl_, tmp, sizeof tmp) : ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) {
      ERR_clear_error();
      return false;
    }
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  // Reads one complete response (Content-Length, chunked, or until close).
  HttpResult read_response() {
    HttpResult r;
    size_t hdr_end;
    while ((hdr_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) {
        r.error = "connection closed before the headers";
        return r;
      }
    }
    std::string head = buf_.substr(0, hdr_end);
    buf_.erase(0, hdr_end + 4);
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    if (status_line.size() < 12) {
      r.error = "bad status line";
      return r;
    }
    r.status = std::stoi(status_line.substr(9, 3));
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        r.headers[name] = value;
      }
      pos = e + 2;
    }
    if (r.headers.count("transfer-encoding") && r.headers["transfer-encoding"] == "chunked") {
      for (;;) {
        size_t le;
        while ((le = buf_.find("\r\n")) == std::string::npos) {
          if (!fill()) {
            r.error = "connection closed inside a chunk header";
            return r;
          }
        }
        size_t len = std::stoul(buf_.substr(0, le), nullptr, 16);
        while (buf_.size() < le + 2 + len + 2) {
          if (!fill()) {
            r.error = "connection closed inside a chunk";
            return r;
          }
        }
        r.body += buf_.substr(le + 2, len);
        buf_.erase(0, le + 2 + len + 2);
        if (len == 0) return r;
      }
    }
    if (r.headers.count("content-length")) {
      size_t len = std::stoul(r.headers["content-length"]);
      while (buf_.size() < len) {
        if (!fill()) {
          r.error = "connection closed inside the body";
          return r;
        }
      }
      r.body = buf_.substr(0, len);
      buf_.erase(0, len);
      return r;
    }
    while (fill()) {
    }
    r.body = std::move(buf_);
    buf_.clear();
    return r;
  }

  std::string& buffer() { return buf_; }

  std::vector<uint8_t> peer_certificate_der() {
    std::vector<uint8_t> out;
    if (!ssl_) return out;
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (!cert) return out;
    unsigned char* der = nullptr;
    int n = i2d_X509(cert, &der);
    if (n > 0) out.assign(der, der + n);
    OPENSSL_free(der);
    X509_free(cert);
    return out;
  }

  void close() {
    if (ssl_) {
      SSL_free(ssl_);
      ssl_ = nullptr;
    }
    if (ctx_) {
      SSL_CTX_free(ctx_);
      ctx_ = nullptr;
    }
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

 private:
  uint16_t port_;
  bool tls_;
  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string buf_;
};

inline std::string make_request(const std::string& method, const std::string& target, const std::string& body,
                                const std::string& api_key, bool keep_alive = false) {
  std::string r = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n";
  if (!api_key.empty()) r += "Authorization: Bearer " + api_key + "\r\n";
  if (!body.empty() || method == "POST") {
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  r += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  return r + "\r\n" + body;
}

inline HttpResult http_request(uint16_t port, bool tls, const std::string& method, const std::string& target,
                               const std::string& body = {}, const std::string& api_key = {}) {
  HttpConnection c(port, tls);
  HttpResult r;
  if (!c.connect()) {
    r.error = "connect failed";
    return r;
  }
  if (!c.send(make_request(method, target, body, api_key))) {
    r.error = "send failed";
    return r;
  }
  return c.read_response();
}

// The "data: " payloads of an SSE body, in order.
inline std::vector<std::string> sse_events(const std::string& body, std::vector<std::string>* raw = nullptr) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t e = body.find("\n\n", pos);
    if (e == std::string::npos) break;
    std::string ev = body.substr(pos, e - pos);
    if (raw) raw->push_back(body.substr(pos, e + 2 - pos));
    if (ev.rfind("data: ", 0) == 0) out.push_back(ev.substr(6));
    pos = e + 2;
  }
  return out;
}

}  // namespace veil::server::testing
