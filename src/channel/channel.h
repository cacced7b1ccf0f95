// channel: the attested secure channel every Veil hop uses. Read this first; the wire format is docs/protocol.md.
//
//   Transport  — a reliable, ordered byte stream with deadlines (TCP, Unix socket, AF_VSOCK, in-process pair).
//   Handshake  — X25519 ephemeral keys, fresh nonces, evidence whose report_data commits to the transcript,
//                HKDF-SHA-256 key schedule, key confirmation MACs. Modes: server attested, or mutual.
//   Channel    — length-prefixed AEAD records (AES-256-GCM by default, or ChaCha20-Poly1305), one key and IV per
//                direction, nonces from 64-bit sequence numbers, rekeying before the AEAD limits, authenticated close.
//
// Invariants:
//  - Fail closed: any malformed, unauthenticated, replayed, reordered or oversized input ends the session with an
//    error; nothing is retried inside the channel. A failed channel refuses every later call.
//  - The channel never logs or returns key material, plaintext or evidence bytes; errors name the peer, the field
//    or byte offset, and why.
//  - Verified peer Claims are only available after a successful handshake (Channel::peer_claims()).
//
// Thread-safety: a Channel may be used by one sending thread and one receiving thread at the same time
// (send() and recv() touch disjoint state); close() and abort() may be called from any thread. Transports allow one
// reader and one writer concurrently; shutdown() may be called from any thread and unblocks both.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>

#include "attest/attest.h"
#include "core/core.h"
#include "crypto/crypto.h"

namespace veil::channel {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
inline Deadline deadline_in(std::chrono::milliseconds timeout) { return Clock::now() + timeout; }

// ---------------------------------------------------------------------------------------------------------------
// Transports

class Transport {
 public:
  virtual ~Transport() = default;
  // Writes every byte of every part, in order, or fails (kTimeout at the deadline, kIo / kUnavailable otherwise).
  virtual Status write_all(std::span<const ByteView> parts, Deadline deadline) = 0;
  // Fills `out` completely or fails. A clean end of stream before the first byte is kUnavailable
  // ("closed by peer"); in the middle of `out` it is kCorrupt (truncated).
  virtual Status read_exact(std::span<uint8_t> out, Deadline deadline) = 0;
  // Ends the stream both ways and unblocks pending reads and writes. Safe from any thread; idempotent.
  virtual void shutdown() = 0;
  // A printable peer address for logs and errors ("tcp:127.0.0.1:41234", "unix:/run/x.sock", "vsock:3:5000").
  virtual std::string peer() const = 0;
};

class Listener {
 public:
  virtual ~Listener() = default;
  virtual Result<std::unique_ptr<Transport>> accept(Deadline deadline) = 0;
  // The bound address as an endpoint string (with the actual port when port 0 was asked for).
  virtual std::string address() const = 0;
  virtual void close() = 0;  // unblocks accept(); safe from any thread
};

// Endpoints: "tcp:<host>:<port>" (host a literal IPv4/IPv6 address or name), "unix:<path>", "vsock:<cid>:<port>".
struct Endpoint {
  enum class Kind { kTcp, kUnix, kVsock } kind = Kind::kTcp;
  std::string host;  // tcp
  std::string path;  // unix
  uint32_t cid = 0;  // vsock
  uint32_t port = 0; // tcp, vsock
  std::string to_string() const;
};
Result<Endpoint> parse_endpoint(std::string_view text);

Result<std::unique_ptr<Listener>> listen(const Endpoint& endpoint);
Result<std::unique_ptr<Transport>> connect(const Endpoint& endpoint, Deadline deadline);

// Two connected in-memory transports (tests, single-process pipelines). Each direction buffers at most
// `capacity` bytes; a writer beyond that waits for the reader.
std::pair<std::unique_ptr<Transport>, std::unique_ptr<Transport>> make_in_process_pair(size_t capacity = 4u << 20);

// ---------------------------------------------------------------------------------------------------------------
// Attestation hooks: the channel does not know who produces or checks evidence.

// Produces evidence binding exactly `report_data` (inside the TEE).
using Attester = std::function<Result<attest::Evidence>(const attest::ReportData& report_data)>;
// Verifies evidence and the policy, and that the evidence binds `expected_report_data`. Returns the verified claims,
// or an error (kSecurity for a refusal). Must fail when report_data differs.
using EvidenceVerifier =
    std::function<Result<attest::Claims>(const attest::Evidence& evidence, const attest::ReportData& expected)>;

// Adapters onto the attest component.
Attester attester_from_provider(std::shared_ptr<attest::Provider> provider);
// Verifies with attest::verify_evidence(evidence, collateral, policy, expected, now()) — `now` defaults to the
// system clock and is injectable for tests.
EvidenceVerifier verifier_from_policy(attest::Policy policy, attest::Collateral collateral,
                                      std::function<std::chrono::system_clock::time_point()> now = {});

// ---------------------------------------------------------------------------------------------------------------
// Handshake and records

enum class Mode : uint8_t {
  kServerAttested = 1,  // one-way: the server proves what it runs; the client stays anonymous
  kMutual = 2,          // both sides send evidence
};

// Protocol limits (docs/protocol.md "Limits").
inline constexpr size_t kFrameHeaderSize = 5;                  // u32 body length (big-endian) + u8 type
inline constexpr size_t kDefaultMaxMessage = 1u << 20;         // 1 MiB of plaintext per record
inline constexpr size_t kDefaultMaxHandshakeMessage = 64u << 10;
inline constexpr uint64_t kMaxRecordsPerKey = 1ull << 24;      // a sender rekeys before this; receivers enforce it
inline constexpr uint64_t kMaxBytesPerKey = 1ull << 34;        // plaintext bytes per key (16 GiB)

struct ChannelOptions {
  Mode mode = Mode::kServerAttested;
  // Client: the suite it asks for. Server: ignored (see accepted_suites).
  crypto::AeadSuite suite = crypto::AeadSuite::kAes256Gcm;
  // Server: the suites it accepts from a client. A client asking for another is refused.
  std::set<crypto::AeadSuite> accepted_suites = {crypto::AeadSuite::kAes256Gcm,
                                                 crypto::AeadSuite::kChaCha20Poly1305};
  Attester attester;           // required on the server; on the client in kMutual mode
  EvidenceVerifier verifier;   // required on the client; on the server in kMutual mode
  std::chrono::milliseconds handshake_timeout{5000};  // the whole handshake, not each read
  size_t max_message = kDefaultMaxMessage;            // largest plaintext accepted or sent (configurable down)
  size_t max_handshake_message = kDefaultMaxHandshakeMessage;
  // Sender-side rekey thresholds; lowering them is allowed (tests), raising past the protocol limits is not.
  uint64_t rekey_after_records = kMaxRecordsPerKey;
  uint64_t rekey_after_bytes = kMaxBytesPerKey;
};

class Channel {
 public:
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Seals `message` (at most max_message bytes) into one frame and writes it with one write.
  Status send(ByteView message, Deadline deadline);
  // Receives the next message into `out` (resized; its capacity is reused). Errors: kCancelled when the peer closed
  // with an authenticated close; kSecurity for tampering, replay, reordering or truncation; kCorrupt for a malformed
  // or oversized frame; kTimeout at the deadline (the session is then closed too: a half-read frame cannot resume).
  Status recv_into(Bytes& out, Deadline deadline);
  Result<Bytes> recv(Deadline deadline);
  // Sends the authenticated close record and shuts the transport down. Later sends fail.
  Status close(Deadline deadline);
  // Shuts the transport down without a close record (unblocks other threads). Safe from any thread.
  void abort();

  Mode mode() const;
  crypto::AeadSuite suite() const;
  // The verified claims of the peer, or nullptr when the peer was not attested (the client in kServerAttested mode).
  const attest::Claims* peer_claims() const;
  // SHA-256 of the full handshake transcript: a public channel binding, equal on both ends.
  const crypto::Sha256Digest& transcript_hash() const;
  std::string peer() const;
  // Rekeys performed so far per direction (for tests and metrics).
  uint64_t send_epoch() const;
  uint64_t recv_epoch() const;

  struct Impl;
  explicit Channel(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// Run the handshake over `transport` within options.handshake_timeout. On failure the transport is shut down, the
// refusal is logged (peer and reason, no secrets) and returned: kSecurity for attestation, MAC or policy refusals,
// kCorrupt for malformed messages, kTimeout for a slow or silent peer.
Result<std::unique_ptr<Channel>> client_handshake(std::unique_ptr<Transport> transport, const ChannelOptions& options);
Result<std::unique_ptr<Channel>> server_handshake(std::unique_ptr<Transport> transport, const ChannelOptions& options);

// ---------------------------------------------------------------------------------------------------------------
// Retry: exponential backoff with jitter, a maximum number of attempts and an overall deadline.

struct RetryPolicy {
  int max_attempts = 5;
  std::chrono::milliseconds initial_backoff{50};
  double multiplier = 2.0;
  std::chrono::milliseconds max_backoff{2000};
  double jitter = 0.5;  // each wait is drawn uniformly from [backoff * (1 - jitter), backoff]
  std::chrono::milliseconds overall_timeout{30000};
};

// Whether an error is worth another attempt: kUnavailable, kTimeout and kIo are; security refusals, malformed
// input and misuse never are (fail closed).
bool is_retryable(const Error& error);

// Time and sleeping are injected so tests run without waiting.
struct RetryEnv {
  std::function<Clock::time_point()> now = [] { return Clock::now(); };
  std::function<void(std::chrono::milliseconds)> sleep;  // default: std::this_thread::sleep_for
  std::function<double()> uniform01;                     // default: a per-call seeded std::mt19937_64
};

// Calls `attempt(n, attempt_deadline)` (n from 1) until it succeeds, returns a non-retryable error, the attempts
// run out or the overall deadline passes. The last error is returned, wrapped with the attempt count.
Status retry(const RetryPolicy& policy, const std::function<Status(int attempt, Deadline deadline)>& attempt,
             const RetryEnv& env = {});

// Connect + handshake as a client with retries: the usual way to open a channel to another Veil service.
Result<std::unique_ptr<Channel>> connect_channel(const Endpoint& endpoint, const ChannelOptions& options,
                                                 const RetryPolicy& policy = {}, const RetryEnv& env = {});

}  // namespace veil::channel
