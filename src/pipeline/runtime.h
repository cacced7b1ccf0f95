// pipeline runtime: stages that serve a layer range over attested channels, and the front that drives
// them as a server::StepModel. Read pipeline.h first; the topology and wire format are docs/pipeline.md.
//
// Topology: the front opens one attested control channel to every stage (the front is the channel client; it
// verifies each stage's evidence against that stage's manifest policy during the handshake, before it sends a byte):
// Hello/Info, pings, done notes and error sentinels travel on it. Activations do not pass through the front: it sends
// each forward pass's tokens to stage 0, stage i (not last) sends its hidden states to stage i + 1 over a data
// channel it opens itself to stage i + 1's manifest endpoint (verifying stage i + 1's evidence against the
// manifest's policy for it), and the last stage returns the logits to the front on its control channel. A stage
// learns who connected from the hello that follows the handshake and accepts a data channel only from its
// predecessor; with a manifest front_policy every channel is mutual and a predecessor's evidence must satisfy the
// manifest's policy for that stage. Stage 0 runs the token embedding and the last stage the output head (the engine
// binds them with the range); the front holds the tokenizer and sampling and never a weight. A stage only its host
// can reach sits behind a Relay (below): a TCP forwarder on the host that carries channel ciphertext and cannot read
// it, for the front's channel and the predecessor's alike.
//
// Messages (a small versioned binary format, little-endian): Hello/Info (who connects, which stage it expects; the
// stage's range and shapes), Forward (sequence segments: slot, first position, token count, whether logits are
// wanted; token ids for stage 0, f32 hidden states [tokens x n_embd] otherwise), Output (logits, to the front), Done
// (a stage passed a request on), Error (the failing stage's index, an error code and a content-free reason), Reset
// (forget a slot's KV cache; travels down the chain like a batch), Ping/Pong (health). Every message is validated
// before use: sizes against the counts and n_embd / n_vocab, slots against the stage's slots, positions against its
// caches. A message larger than one channel record travels as several records.
//
// Robustness: every forward pass has a deadline (FrontOptions::request_timeout, default 60 s); on a timeout the front
// names the first stage that has not passed the request on. A stage that cannot reach its successor sends an error
// sentinel naming the successor on its control channel; a stage whose batch fails sends one down the chain. Any
// failure ends the pipeline session: the front drops every channel (each stage then drops its data channels and
// caches) and the next forward pass or health round reconnects every stage, last first (channel::connect_channel:
// backoff with jitter). A health thread pings every stage (health_interval, default 10 s). Errors name the stage
// index and its endpoint.
//
// Thread-safety: StageServer's methods are safe from any thread. PipelineStepModel follows StepModel:
// forward/reset_slot from up to max_concurrent_forwards() threads at once, on disjoint slots (replies are matched by
// request id); health() and the health thread are safe alongside.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attest/attest.h"
#include "channel/channel.h"
#include "core/core.h"
#include "engine/engine.h"
#include "pipeline/pipeline.h"
#include "server/scheduler.h"

namespace veil::pipeline {

// ---------------------------------------------------------------------------------------------------------------
// Wire format

inline constexpr uint8_t kWireVersion = 2;
inline constexpr size_t kMaxReasonBytes = 200;
inline constexpr size_t kMaxSegments = 4096;
inline constexpr size_t kMaxWireMessage = 256u << 20;  // reassembled message cap (across records)

enum class MsgType : uint8_t {
  kHello = 1,   // front or predecessor -> stage, first after the handshake: who connects, which stage it expects
  kInfo = 2,    // stage -> front or predecessor: what the stage runs
  kForward = 3, // front -> stage 0 (token ids), stage i -> stage i + 1 (hidden states): a batch
  kOutput = 4,  // last stage -> front: logits (kind kHidden is not sent in this topology)
  kError = 5,   // error sentinel: down the chain, then to the front; or stage -> front naming its successor
  kReset = 6,   // front -> stage 0 -> ... -> last stage: forget a slot (no reply)
  kPing = 7,    // front -> stage
  kPong = 8,    // stage -> front
  kDone = 9,    // stage (not last) -> front: the request was passed on to the next stage
};

// Who sent a Hello.
enum class Peer : uint8_t { kFront = 1, kPredecessor = 2 };

struct StageInfo {
  uint32_t stage_index = 0;
  uint32_t layer_begin = 0;
  uint32_t layer_end = 0;
  uint32_t n_layers = 0;
  uint32_t n_embd = 0;
  uint32_t n_vocab = 0;
  uint32_t n_ctx = 0;
  uint32_t max_slots = 0;
  bool operator==(const StageInfo&) const = default;
};

struct Segment {
  uint32_t slot = 0;
  uint32_t pos0 = 0;
  uint32_t n_tokens = 0;
  bool want_logits = false;
};

enum class OutputKind : uint8_t { kHidden = 1, kLogits = 2 };

struct Message {
  MsgType type = MsgType::kPing;
  uint64_t request_id = 0;  // echoed by the reply; pings carry their nonce here
  StageInfo info;           // kHello (stage_index, layer range, n_layers of the expected stage or, from a
                            // predecessor, of the sender itself), kInfo (all)
  Peer hello_from = Peer::kFront;  // kHello
  uint32_t timeout_ms = 0;  // kHello from the front: how long the stage may take to reach its successor
  std::vector<Segment> segments;  // kForward
  std::vector<int32_t> tokens;    // kForward to the stage holding layer 0
  std::vector<float> values;      // kForward hidden states in; kOutput hidden states or logits
  OutputKind output = OutputKind::kHidden;  // kOutput
  uint32_t rows = 0, width = 0;   // kOutput: values.size() == rows * width
  uint32_t slot = 0;              // kReset
  uint32_t error_stage = 0;       // kError
  ErrorCode error_code = ErrorCode::kInternal;
  std::string reason;             // kError: content-free, at most kMaxReasonBytes
};

Bytes encode_message(const Message& m);
// Parses and checks internal consistency (counts vs bytes, caps); kCorrupt naming the field.
Result<Message> decode_message(ByteView data);

// A message over a channel, split into records of at most the channel's maximum (first byte of each
// record: 1 = more follow, 0 = last).
Status send_message(channel::Channel& ch, const Message& m, channel::Deadline deadline);
Result<Message> recv_message(channel::Channel& ch, channel::Deadline deadline);

// "host:port" (manifest form) or a full channel endpoint ("tcp:...", "unix:...", "vsock:...").
Result<channel::Endpoint> stage_endpoint(std::string_view manifest_endpoint);

// ---------------------------------------------------------------------------------------------------------------
// Stage

struct StageOptions {
  uint32_t threads = 1;
  uint32_t n_ctx = 0;       // per-slot context; 0: the model's, at most 2048
  uint32_t max_slots = 16;  // KV caches (sequences in flight)
  engine::KvType kv_type = engine::KvType::kF32;
  std::string listen;       // endpoint to listen on; empty: the manifest's endpoint for this stage
  // Server side: attester required. Its attester also proves this stage to its successor. Leave mode and verifier
  // unset: the stage sets them from front_policy.
  channel::ChannelOptions channel;
  // Mutual attestation: the policy the front's evidence must satisfy; unset: the manifest's front_policy, if any.
  // When there is one, every channel of this stage is mutual: the front must satisfy it, a predecessor the
  // manifest's policy for the previous stage, and this stage presents its evidence to its successor.
  std::optional<attest::Policy> front_policy;
  attest::Collateral collateral;  // for verifying neighbouring stages' evidence (e.g. the sim platform public key)
  channel::RetryPolicy retry;     // reaching the successor (also bounded by the front's hello timeout)
  // Test hook, called before every forward pass (e.g. to hold a stage mid-request).
  std::function<void()> before_forward;
};

// A stage accepts one control session (the front) and, for stages after the first, one data session from its
// predecessor inside it; a new control session ends the previous one (its data channels and caches with it).
class StageServer {
 public:
  // `model` must be loaded with exactly the manifest's layer range for stage `index`.
  static Result<std::unique_ptr<StageServer>> start(const ShardManifest& manifest, uint32_t index,
                                                    std::shared_ptr<const engine::Model> model, StageOptions options);
  ~StageServer();
  StageServer(const StageServer&) = delete;
  StageServer& operator=(const StageServer&) = delete;

  std::string address() const;  // the bound endpoint (actual port)
  // Stops accepting, ends the current session, joins the threads. Idempotent.
  void stop();
  // Messages received after a successful handshake, on any channel (for tests: a refused peer sent nothing).
  uint64_t messages_received() const;
  uint64_t sessions() const;       // control sessions (fronts) accepted
  uint64_t data_sessions() const;  // data sessions (the predecessor) accepted

  struct Impl;

 private:
  explicit StageServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------------------
// Front

struct FrontOptions {
  attest::Collateral collateral;  // for verifying stage evidence (e.g. the sim platform public key)
  channel::ChannelOptions channel;  // client side; the verifier is built per stage from the manifest policy
  std::chrono::milliseconds request_timeout{60000};
  std::chrono::milliseconds health_interval{10000};  // 0: no health thread
  channel::RetryPolicy retry;                        // reconnection: backoff with jitter
  // Fill-drain: a forward pass's tokens are split into this many micro-batches, sent to stage 0 one after the
  // other, so stages work on consecutive micro-batches at once (pipeline.h fill_drain_schedule). 1 (the default):
  // up to one forward pass per stage may be in flight at once (max_concurrent_forwards(): the serving
  // scheduler's lanes keep every stage busy with a different batch of sequences).
  uint32_t micro_batches = 1;
};

struct StageHealth {
  uint32_t index = 0;
  std::string endpoint;
  bool connected = false;
  uint64_t reconnects = 0;
  std::string last_error;  // content-free
};

class PipelineStepModel final : public server::StepModel {
 public:
  // Connects to every stage (each verified against its manifest policy) and checks what each runs;
  // fails naming the first stage that cannot be reached, is refused or does not match the manifest.
  static Result<std::unique_ptr<PipelineStepModel>> connect(const ShardManifest& manifest, FrontOptions options);
  ~PipelineStepModel() override;

  uint32_t context_length() const override;
  uint32_t vocab_size() const override;
  uint32_t max_slots() const override;
  Status forward(std::span<const server::StepInput> batch, std::vector<float>& logits) override;
  void reset_slot(uint32_t slot) override;
  // The number of stages with micro_batches == 1 (one forward pass per stage in flight), else 1.
  uint32_t max_concurrent_forwards() const override;

  std::vector<StageHealth> health() const;
  // Pings every stage now (what the health thread does each interval); reconnects the pipeline when it is down.
  void check_health();

  struct Impl;

 private:
  explicit PipelineStepModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------------------
// Relay: host-forwarded ciphertext (docs/pipeline.md "Relay mode")
//
// For stages that only the host can reach: a TCP forwarder on the host accepts connections on `listen` and, for
// each, opens a connection to the fixed `target` (the stage) and copies bytes both ways. The attested channel runs
// end to end between the front (or the predecessor stage) and the stage, so the relay only ever holds channel ciphertext: it cannot read an
// activation, and a byte it changes makes the channel refuse the record (kSecurity at the receiver). A manifest
// stage's endpoint simply names the relay.
//
// Per connection: one bounded buffer per direction (a read waits until the previous chunk is written, so a slow
// side slows the other instead of filling memory); a half-close (FIN) is passed on and the other direction keeps
// flowing; when either side fails, or both have finished, both sockets are closed. Connecting to the target has a
// timeout; connections beyond max_connections are closed at once. Logs name connection ids, peers and byte counts,
// never payload.
//
// Thread-safety: one I/O thread per relay; address(), stats() and stop() are safe from any thread.

enum class RelayDirection : uint8_t { kToTarget, kToClient };

struct RelayOptions {
  std::string listen;  // HOST:PORT or tcp:HOST:PORT; HOST an IP address (port 0: any free port)
  std::string target;  // HOST:PORT or tcp:HOST:PORT; HOST an IP address or a name (resolved per connection)
  std::chrono::milliseconds connect_timeout{5000};
  uint32_t max_connections = 64;   // open at the same time
  size_t buffer_bytes = 128u << 10;  // per direction per connection (4 KiB .. 16 MiB)
  // Test hook, called on the I/O thread with every chunk before it is forwarded; it may change the bytes (tests
  // flip one to check that the channel refuses it). Empty in production.
  std::function<void(RelayDirection, std::span<uint8_t>)> on_chunk_for_tests;
};

struct RelayStats {
  uint64_t accepted = 0;         // connections taken on
  uint64_t refused = 0;          // closed at once: max_connections were open
  uint64_t failed_connects = 0;  // the target could not be reached within connect_timeout
  uint64_t active = 0;           // open now
  uint64_t bytes_to_target = 0;
  uint64_t bytes_to_client = 0;
};

class Relay {
 public:
  // Binds `listen` and starts forwarding. kInvalidArgument for a malformed address or option, kIo when the
  // address cannot be bound.
  static Result<std::unique_ptr<Relay>> start(RelayOptions options);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  std::string address() const;  // the bound endpoint, "tcp:HOST:PORT" (actual port)
  std::string target() const;   // "tcp:HOST:PORT"
  RelayStats stats() const;
  // Stops accepting, closes every connection, joins the I/O thread. Idempotent.
  void stop();

  struct Impl;

 private:
  explicit Relay(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace veil::pipeline
