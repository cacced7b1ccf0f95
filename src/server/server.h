// server: Veil's OpenAI-compatible HTTP/1.1 server, with TLS terminated inside the TEE. Read this first.
//
//   Beast transport (http_server.cpp, the only file that includes Boost.Beast)
//     -> Api (api.h: routing, keys, rate limits, validation, signatures, attestation)
//       -> GenerationBackend (backend.h) = BatchingBackend (scheduler.h: continuous batching)
//         -> StepModel + TextCodec + samplers (engine_backend.h wires the real engine, tokenizer, sampler)
//
// Invariants:
//  - TLS is on unless ServerOptions::tls is false (`veil serve --insecure-http`). The TLS key is generated in
//    memory at start; its certificate carries the TEE evidence (ratls.h).
//  - Logs carry request ids, routes, statuses, token counts and timings; never prompts, completions, keys.
//  - Every completion is signed and its signature stored before the response's last byte is sent.
//  - A client that disconnects mid-stream has its sequence cancelled, freeing the slot at the next step.
//  - stop(): refuses new generations (503), lets running ones finish within the grace period, then
//    cancels the rest and closes every connection.
//
// Thread-safety: Server's methods are safe from any thread. One I/O thread serves every connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attest/attest.h"
#include "core/core.h"
#include "server/api.h"
#include "server/backend.h"
#include "server/metrics.h"
#include "server/ratls.h"
#include "server/signing.h"
#include "server/store.h"

namespace veil::server {

struct ServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 8443;           // 0: any free port (see Server::port())
  bool tls = true;
  bool require_auth = true;
  size_t max_body_bytes = 1 << 20;        // larger bodies get 413
  size_t max_connections = 1024;          // further connections are closed at once
  std::chrono::seconds idle_timeout{60};  // keep-alive and request read deadline
  std::chrono::seconds write_timeout{60};
  std::vector<std::string> dns_names = {"localhost"};
};

class Server {
 public:
  // Builds the RA-TLS identity (when TLS is on), binds and starts serving. `backend`, `store` and
  // `provider` must outlive the Server.
  static Result<std::unique_ptr<Server>> start(const ServerOptions& options, GenerationBackend& backend, Store& store,
                                               attest::Provider& provider, SigningKeys keys);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const;
  const TlsIdentity* tls_identity() const;  // null without TLS
  const SigningKeys& signing_keys() const;
  Metrics& metrics();
  size_t open_connections() const;

  // Graceful shutdown (idempotent); blocks until every connection is closed.
  void stop(std::chrono::milliseconds grace);

  struct Impl;

 private:
  Server() = default;
  std::unique_ptr<Impl> impl_;
};

}  // namespace veil::server
