// Api: the request handlers of the OpenAI-compatible server, independent of the HTTP transport.
// http_server.cpp parses HTTP with Beast and calls Api::handle(); a generation comes back as a
// Generation object whose events the transport turns into bytes with Generation::on_event().
//
// Order of checks for a generation request: route -> API key (401) -> rate limit (429) -> JSON and
// parameters (400) -> model exists and the key may use it (404) -> prompt fits the context (413) ->
// queue admission (503). Body-size limits (413) are enforced by the transport before any parsing.
//
// Thread-safety: Api::handle may be called from several threads. A Generation belongs to one connection:
// on_event() is called on that connection's thread, in event order.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "attest/attest.h"
#include "server/backend.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/signing.h"
#include "server/store.h"

namespace veil::server {

struct HttpRequestData {
  std::string method;
  std::string target;         // path and query
  std::string authorization;  // the Authorization header, or empty
  std::string body;
};

struct HttpResponseData {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

struct ApiOptions {
  bool require_auth = true;  // false only with `veil serve --no-auth` (development)
};

class Api;

class Generation {
 public:
  Generation(Api& api, Endpoint endpoint, ParsedRequest request, std::vector<int32_t> prompt,
             crypto::Sha256Digest request_sha256, std::string route);
  ~Generation();
  bool streaming() const { return request_.stream; }
  const std::string& completion_id() const { return text_.id; }

  // Submits to the backend; `sink` receives events on the backend's thread (it must post them to the
  // connection). Returns an error response when the backend refuses (503 queue full or shutting down).
  std::optional<HttpResponseData> start(EventSink sink);
  void cancel();
  void pause(bool paused);  // backpressure from the connection

  struct Output {
    std::string bytes;   // streaming: SSE bytes to send now; otherwise the whole body once done
    bool done = false;
    int status = 200;    // non-streaming: the response status
  };
  Output on_event(GenerationEvent&& event);

 private:
  Status sign_and_store(const crypto::Sha256Digest& response_sha256, const char* kind);
  void record(int status);

  Api& api_;
  Endpoint endpoint_;
  ParsedRequest request_;
  std::vector<int32_t> prompt_;
  crypto::Sha256Digest request_sha256_;
  std::string route_;
  CompletionText text_;
  SseChain chain_;
  bool first_delta_ = true;
  bool first_token_seen_ = false;
  bool recorded_ = false;
  std::chrono::steady_clock::time_point started_;
  std::shared_ptr<GenerationHandle> handle_;
};

class Api {
 public:
  Api(GenerationBackend& backend, Store& store, const SigningKeys& keys, attest::Provider& provider,
      crypto::Sha256Digest tls_spki_sha256, Metrics& metrics, ApiOptions options);

  struct Outcome {
    std::string route;  // fixed route name for metrics
    std::optional<HttpResponseData> response;
    std::unique_ptr<Generation> generation;
  };
  Outcome handle(HttpRequestData&& request);

  // An error response in OpenAI's shape (also used by the transport for 413 body limits and overload).
  static HttpResponseData error(int status, std::string_view message, std::string_view param = {},
                                std::string_view code = {});
  void set_draining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }

  GenerationBackend& backend() { return backend_; }
  Store& store() { return store_; }
  const SigningKeys& keys() const { return keys_; }
  Metrics& metrics() { return metrics_; }

 private:
  HttpResponseData models(const std::optional<ApiKeyInfo>& key);
  HttpResponseData attestation(std::string_view query);
  HttpResponseData signature(std::string_view id);
  HttpResponseData metrics_page();
  bool take_rate_token(const ApiKeyInfo& key);

  GenerationBackend& backend_;
  Store& store_;
  const SigningKeys& keys_;
  attest::Provider& provider_;
  std::mutex provider_mu_;
  crypto::Sha256Digest tls_spki_sha256_;
  Metrics& metrics_;
  ApiOptions options_;
  std::atomic<bool> draining_{false};

  struct Bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point last;
  };
  std::mutex buckets_mu_;
  std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace veil::server
