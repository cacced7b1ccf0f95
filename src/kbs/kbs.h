// kbs: the key broker. Keeps sealed-model keys and releases one only to attested evidence that
// satisfies that model's release policy. Read this first; operator guide: docs/kbs.md.
//
// Trust: evidence -> verifier -> Claims -> the model's attest::Policy -> rollback check -> key.
// A pipeline stage asks for its layer range instead: after the same checks the broker derives and releases
// only that range's sealed::RangeKeySet (format-2 sealed models), never the model key (docs/kbs.md, "Range keys").
//
// Invariants:
//  - Model keys are stored wrapped (AES-256-GCM) under a key derived from the broker's master key; the
//    wrapping binds the model id, version, key id and the release policy text, so a policy edited in
//    the database makes the key unusable instead of loosening the policy.
//  - Nothing is released by default: a model without a key, a policy that does not parse, claims the
//    policy refuses, or a version below the highest one released (rollback) are refused.
//  - Every release, refusal and administrative change is appended to a hash-chained, HMAC'ed audit log
//    in the same SQLite transaction as the state it describes. verify_audit() finds a changed, removed,
//    inserted or reordered entry. If the audit entry cannot be written, the key is not released.
//  - The highest released version per model is stored with a MAC; a row lowered behind the broker's
//    back is detected and refused. Lowering it is only possible with allow_downgrade(), which is audited.
//  - A key stored with a pipeline's stage table (from the shard manifest) releases a layer range only to evidence
//    satisfying the policy of the one stage given exactly that range; the table is bound into the wrapped record
//    like the layer count (docs/kbs.md, "Stage binding").
//  - No key, master key or evidence secret appears in a log, audit entry or error message.
//
// Thread-safety: a Broker may be shared between threads (one internal mutex).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "attest/attest.h"
#include "channel/channel.h"
#include "core/core.h"
#include "crypto/crypto.h"
#include "sealed/sealed.h"

namespace veil::kbs {

using TimePoint = std::chrono::system_clock::time_point;

// One pipeline stage as the broker knows it (from the shard manifest, docs/manifest.md): the inclusive layer range
// the manifest gives it and the attestation policy (JSON) its evidence must satisfy.
struct StageBinding {
  uint32_t first_layer = 0;
  uint32_t last_layer = 0;
  std::string policy_json;
};

// A pipeline's stage table, recorded with a model key (docs/kbs.md, "Stage binding"). The ranges must be
// contiguous and cover exactly the recorded layer count; `front_policy_json` (empty: none) gates the front's
// metadata-only request.
struct StageTable {
  std::vector<StageBinding> stages;
  std::string front_policy_json;
};

struct KeyRecord {
  std::string model_id;
  uint64_t version = 0;
  std::array<uint8_t, 16> key_id{};
  std::string policy_json;
  int64_t created_at = 0;                // unix seconds
  std::optional<uint32_t> layer_count;   // the sealed model's layers, when given at add-key
  std::optional<StageTable> stages;      // the pipeline's stage table, when given at add-key
};

struct AuditEntry {
  uint64_t seq = 0;
  std::string event_json;  // {"time":..., "event": "release"|"refuse"|"add-key"|"allow-downgrade", ...}
  Bytes prev;              // the previous entry's mac (32 zero bytes for the first)
  Bytes mac;               // HMAC-SHA256(audit key, "veil-kbs-audit-v1" || seq || prev || event)
};

struct AuditReport {
  uint64_t entries = 0;
  std::string head;  // hex of the last entry's mac: anchor it outside the broker to detect tail truncation
};

// A pipeline stage's layer range. The stage reads layer_count and tied_embeddings from the sealed model's
// header; the broker decides from them which globals the range needs (sealed::range_spec_for).
// `metadata_only` (a pipeline front): no layer at all, the rest key alone (sealed::metadata_only_spec); the
// other fields are then 0/false and not sent.
struct RangeRequest {
  uint32_t first_layer = 0;
  uint32_t last_layer = 0;
  uint32_t layer_count = 0;
  bool tied_embeddings = false;  // no output.weight: the last stage needs token_embd too
  bool metadata_only = false;
};

// Who asks, for what. `peer` is a printable address for the audit log.
struct ReleaseRequest {
  std::string model_id;
  uint64_t version = 0;
  std::string peer;
  std::optional<RangeRequest> range;  // nullopt: the whole model key
};

// Exactly one of `key` (whole-model request) and `range_keys` (range request) is set.
struct Release {
  SecretBytes key;
  std::array<uint8_t, 16> key_id{};
  std::optional<sealed::RangeKeySet> range_keys;
};

class Broker {
 public:
  // Opens (creating if absent) the broker database. A database created under another master key is
  // refused (kSecurity). `now` is injectable for tests.
  static Result<std::unique_ptr<Broker>> open(const std::filesystem::path& db_path, const SecretBytes& master_key,
                                              std::function<TimePoint()> now = {});
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Stores a model key with its release policy (attest policy JSON, validated). Refuses an existing
  // (model id, version). `layer_count` (the sealed model's, 1..sealed::kMaxModelLayers), when given, is bound
  // into the wrapped record and range requests naming another layer count are refused. `stages` (needs
  // `layer_count`; ranges contiguous from layer 0 to the last, every policy valid) is bound the same way: a range is
  // then released only to the stage given exactly that range, on evidence satisfying that stage's policy too; the
  // front's metadata-only request needs the front policy when there is one; the whole model key is refused.
  Status add_key(const std::string& model_id, uint64_t version, const SecretBytes& key, const std::string& policy_json,
                 std::optional<uint32_t> layer_count = std::nullopt,
                 const std::optional<StageTable>& stages = std::nullopt);

  // Records `stages` (checked as by add_key, against the recorded layer count) for a key stored without a stage
  // table, e.g. by `veil seal --kbs-db`, before the manifest (which names the sealed file's hash) could exist. The
  // record is re-wrapped with the table bound in, in one audited transaction ("bind-stages"). A key that already
  // has a table is refused (kInvalidArgument): a table is never replaced or removed.
  Status bind_stages(const std::string& model_id, uint64_t version, const StageTable& stages);

  // Decides a release for verified claims (their report_data already checked by the channel). Applies
  // the model's policy with `claims.report_data` as the expected binding, then rollback protection.
  // With `request.range`, derives and releases only that range's key set. For a key with a stage table, the
  // stage rules of add_key apply on top (kSecurity naming the range and why). Every outcome is audited (with
  // the range, and the stage index that matched). kNotFound: no such key; kSecurity: refused; kInvalidArgument: a malformed range.
  Result<Release> release(const ReleaseRequest& request, const attest::Claims& claims);

  // Lets `version` (lower than the highest released) be released again: the administrator's explicit,
  // audited rollback. `reason` is recorded.
  Status allow_downgrade(const std::string& model_id, uint64_t version, const std::string& reason);

  Result<std::vector<KeyRecord>> list_keys();
  // 0 when no version was released yet.
  Result<uint64_t> highest_released(const std::string& model_id);
  Result<std::vector<AuditEntry>> audit_entries();
  // Checks the whole chain: sequence numbers contiguous from 1, each prev equal to the previous mac,
  // each mac valid, and the last entry equal to the recorded head. kSecurity naming the entry.
  Result<AuditReport> verify_audit();

  struct Impl;

 private:
  explicit Broker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Master key files: 64 hex characters, mode 0600 (as sealed-model key files).
Result<SecretBytes> read_master_key(const std::filesystem::path& path);

// ---- Transport: the broker behind the attested channel (docs/kbs.md, "Protocol") ----
//
// The channel runs in mutual mode: the node's evidence commits to the handshake transcript (so it is
// fresh and bound to this connection) and the broker proves itself to the node too. One request per
// connection: {"type": "key-request", "model_id": "...", "version": N}, or {"type": "range-key-request",
// "model_id", "version", "first_layer", "last_layer", "layer_count", "tied_embeddings"}, or (a pipeline front)
// {"type": "range-key-request", "model_id", "version", "metadata_only": true}; the reply is one
// record: 0x00 || key[32] || key_id[16], 0x02 || RangeKeySet wire form, or 0x01 || error code || message.

// Parses and validates one request record (every field; unknown fields refused). Exposed for the fuzz target.
Result<ReleaseRequest> parse_key_request(ByteView message, const std::string& peer);
// Parses a reply record: the key (checked against its key id) or range key set it carries, or the broker's
// refusal as the error. `range`: a range key set is expected. Exposed for the fuzz target.
Result<Release> parse_key_reply(ByteView reply, bool range);

struct ServerOptions {
  channel::Attester attester;       // the broker's own evidence (required by the channel)
  attest::Collateral collateral;    // what verifying a node's evidence needs (e.g. sim_platform_public_key)
  std::function<TimePoint()> now;   // evidence verification time; default: the system clock
  // Replaces the standard node-evidence check (verifier_for(type) + report_data binding). Tests use it to
  // play a TEE whose evidence reports debug mode, which the sim format cannot express.
  channel::EvidenceVerifier verifier_override;
  std::chrono::milliseconds io_timeout{10000};  // per connection, after the handshake
  std::chrono::milliseconds handshake_timeout{10000};
  uint32_t workers = 8;        // connections served at once (a slow or silent peer holds one for its timeouts)
  size_t max_pending = 256;    // accepted connections waiting for a worker; beyond that they are closed
};

// Serves key requests on `listen_address` ("tcp:127.0.0.1:0", "127.0.0.1:7000", "unix:/path"): one acceptor
// thread and `workers` threads, each serving one connection at a time (bounded by the timeouts), so a slow or
// silent peer never delays the others while a worker is free.
class Server {
 public:
  static Result<std::unique_ptr<Server>> start(Broker& broker, const std::string& listen_address,
                                               ServerOptions options);
  ~Server();  // stops
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  std::string address() const;  // the bound endpoint, e.g. "tcp:127.0.0.1:41234"
  void stop();
  uint64_t connections_served() const;

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct FetchOptions {
  std::chrono::milliseconds timeout{10000};  // handshake, and then request + reply
};

// Client side, run inside the node's TEE: connects to the broker at `kbs_address`, attests with
// `attester` (evidence binding the channel transcript), checks the broker with `broker_verifier`,
// and asks for the key of (model_id, version). The refusal's code and reason come back as the error
// (kSecurity for a policy or rollback refusal, kNotFound for an unknown key). The key is checked
// against its key id before it is returned.
Result<SecretBytes> fetch_model_key(const std::string& kbs_address, const std::string& model_id, uint64_t version,
                                    channel::Attester attester, channel::EvidenceVerifier broker_verifier,
                                    const FetchOptions& options = {});

// The same for a pipeline stage: asks only for `range`'s key set. The set that comes back is checked to
// be for this model, version and range (and the globals sealed::range_spec_for gives it). With
// range.metadata_only (a pipeline front), only the rest key, checked to be a metadata-only set.
Result<sealed::RangeKeySet> fetch_range_keys(const std::string& kbs_address, const std::string& model_id,
                                             uint64_t version, const RangeRequest& range, channel::Attester attester,
                                             channel::EvidenceVerifier broker_verifier,
                                             const FetchOptions& options = {});

}  // namespace veil::kbs
