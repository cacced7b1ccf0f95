// pipeline runtime: stages that serve a layer range over attested channels, and the front that drives
// them as a server::StepModel. Read pipeline.h first; the topology and wire format are docs/pipeline.md.
//
// Topology (this version): the front opens one attested channel to every stage (the front is the channel
// client; it verifies each stage's evidence against that stage's manifest policy during the handshake,
// before it sends a byte) and relays the activations: tokens -> stage 0 -> hidden states -> stage 1 ...
// -> the last stage returns the logits of the rows asked for. Stage 0 runs the token embedding and the
// last stage the output head (the engine binds them with the range); the front holds the tokenizer and
// sampling and never a weight. A stage only its host can reach sits behind a Relay (below): a TCP forwarder on the
// host that carries the channel's ciphertext and cannot read it.
//
// Messages (a small versioned binary format, little-endian): Hello/Info (the front checks each stage's
// index, layer range and shapes), Forward (sequence segments: slot, first position, token count, whether
// logits are wanted; token ids for stage 0, f32 hidden states [tokens x n_embd] otherwise), Output
// (hidden states or logits), Error (the failing stage's index, an error code and a content-free reason),
// Reset (forget a slot's KV cache), Ping/Pong (health). Every message is validated before use: sizes
// against the counts and n_embd / n_vocab, slots against the stage's slots, positions against its caches.
// A message larger than one channel record travels as several records.
//
// Robustness: every exchange with a stage has a deadline (FrontOptions::request_timeout, default 60 s);
// a stage that times out or whose connection fails is dropped and reconnected (channel::connect_channel:
// backoff with jitter) before the next forward pass; a health thread pings every stage
// (health_interval, default 10 s) and reconnects stages that came back. Errors name the stage index and
// its endpoint; a new session with a stage starts with empty KV caches.
//
// Thread-safety: StageServer's methods are safe from any thread. PipelineStepModel follows StepModel:
// forward/reset_slot from up to max_concurrent_forwards() threads at once, on disjoint slots (each exchange
// holds its stage's link, so replies never cross); health() and the health thread are safe alongside.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
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

inline constexpr uint8_t kWireVersion = 1;
inline constexpr size_t kMaxReasonBytes = 200;
inline constexpr size_t kMaxSegments = 4096;
inline constexpr size_t kMaxWireMessage = 256u << 20;  // reassembled message cap (across records)

enum class MsgType : uint8_t {
  kHello = 1,   // front -> stage: which stage it expects
  kInfo = 2,    // stage -> front: what the stage runs
  kForward = 3, // front -> stage: a batch
  kOutput = 4,  // stage -> front: hidden states or logits
  kError = 5,   // stage -> front: error sentinel
  kReset = 6,   // front -> stage: forget a slot
  kPing = 7,
  kPong = 8,
};

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
  StageInfo info;           // kHello (stage_index, layer range, n_layers), kInfo (all)
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
  channel::ChannelOptions channel;  // server side: attester required
  // Test hook, called before every forward pass (e.g. to hold a stage mid-request).
  std::function<void()> before_forward;
};

class StageServer {
 public:
  // `model` must be loaded with exactly the manifest's layer range for stage `index`.
  static Result<std::unique_ptr<StageServer>> start(const ShardManifest& manifest, uint32_t index,
                                                    std::shared_ptr<const engine::Model> model, StageOptions options);
  ~StageServer();
  StageServer(const StageServer&) = delete;
  StageServer& operator=(const StageServer&) = delete;

  std::string address() const;  // the bound endpoint (actual port)
  // Stops accepting, ends the current session, joins the thread. Idempotent.
  void stop();
  // Messages received after a successful handshake (for tests: a refused front sent nothing).
  uint64_t messages_received() const;
  uint64_t sessions() const;

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
  // Fill-drain: a forward pass's tokens are split into this many micro-batches so stages work concurrently
  // (pipeline.h fill_drain_schedule). 1 (the default): each forward pass visits the stages one after the other,
  // and up to one forward pass per stage may be in flight at once (max_concurrent_forwards(): the serving
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
  // The number of stages with micro_batches == 1 (each forward pass holds one stage at a time), else 1.
  uint32_t max_concurrent_forwards() const override;

  std::vector<StageHealth> health() const;
  // Pings every stage now (what the health thread does each interval); reconnects stages that are down.
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
// end to end between the front and the stage, so the relay only ever holds channel ciphertext: it cannot read an
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
