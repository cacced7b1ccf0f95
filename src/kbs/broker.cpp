// The broker core: SQLite store, policy decision, rollback protection and the audit chain.
#include <sqlite3.h>

#include <algorithm>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "kbs/kbs.h"
#include "sealed/sealed.h"

namespace veil::kbs {
namespace {

constexpr char kWrapAad[] = "veil-kbs-key-v1";
constexpr char kAuditDomain[] = "veil-kbs-audit-v1";
constexpr char kRollbackDomain[] = "veil-kbs-rollback-v1";
constexpr size_t kMacSize = 32;
constexpr size_t kMaxStages = 1024;

void put_u64(Bytes& b, uint64_t v) { for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i))); }
void put_str(Bytes& b, std::string_view s) {
  put_u64(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) s_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return s_ != nullptr; }
  Stmt& bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, ByteView v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind_int(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return s_ ? sqlite3_step(s_) : SQLITE_ERROR; }
  int64_t int_col(int i) { return sqlite3_column_int64(s_, i); }
  bool is_null(int i) { return sqlite3_column_type(s_, i) == SQLITE_NULL; }
  std::string text_col(int i) {
    const unsigned char* t = sqlite3_column_text(s_, i);
    return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(sqlite3_column_bytes(s_, i))) : "";
  }
  Bytes blob_col(int i) {
    const uint8_t* p = static_cast<const uint8_t*>(sqlite3_column_blob(s_, i));
    return p ? Bytes(p, p + sqlite3_column_bytes(s_, i)) : Bytes{};
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// The stored form of a stage table: compact JSON, each policy kept as its exact text (bound into the wrapped record).
std::string stage_table_text(const StageTable& t) {
  nlohmann::ordered_json stages = nlohmann::ordered_json::array();
  for (const StageBinding& s : t.stages) {
    stages.push_back({{"first_layer", s.first_layer}, {"last_layer", s.last_layer}, {"policy", s.policy_json}});
  }
  nlohmann::ordered_json j;
  j["stages"] = std::move(stages);
  if (!t.front_policy_json.empty()) j["front_policy"] = t.front_policy_json;
  return j.dump();
}

// Reads a stored stage table back (only ever after the wrapped record it is bound to has authenticated).
Result<StageTable> parse_stage_table(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [] { return make_error(ErrorCode::kCorrupt, "the stored stage table is malformed"); };
  if (j.is_discarded() || !j.is_object()) return bad();
  auto stages = j.find("stages");
  if (stages == j.end() || !stages->is_array()) return bad();
  StageTable t;
  for (const auto& s : *stages) {
    if (!s.is_object() || !s.contains("first_layer") || !s.contains("last_layer") || !s.contains("policy")) return bad();
    const auto &first = s["first_layer"], &last = s["last_layer"], &policy = s["policy"];
    if (!first.is_number_unsigned() || !last.is_number_unsigned() || !policy.is_string()) return bad();
    if (first.get<uint64_t>() > UINT32_MAX || last.get<uint64_t>() > UINT32_MAX) return bad();
    t.stages.push_back({first.get<uint32_t>(), last.get<uint32_t>(), policy.get<std::string>()});
  }
  if (auto fp = j.find("front_policy"); fp != j.end()) {
    if (!fp->is_string()) return bad();
    t.front_policy_json = fp->get<std::string>();
  }
  return t;
}

// The checks on a stage table before it is recorded (`who`: the operation, for the error): a layer count to check
// it against, ranges contiguous from layer 0 to the last layer, every policy valid.
Status check_stage_table(const StageTable& t, std::optional<uint32_t> layer_count, std::string_view who) {
  auto bad = [who](std::string why) {
    return make_error(ErrorCode::kInvalidArgument, "{}: stage table: {}", who, why);
  };
  if (!layer_count) return bad("needs the model's layer count (give the sealed model)");
  if (t.stages.empty() || t.stages.size() > kMaxStages) return bad(fmt::format("expected 1..{} stages", kMaxStages));
  uint32_t next = 0;
  for (size_t i = 0; i < t.stages.size(); ++i) {
    const StageBinding& s = t.stages[i];
    if (s.first_layer != next || s.last_layer < s.first_layer || s.last_layer >= *layer_count) {
      return bad(fmt::format("stages[{}]: layers {}..{} do not continue from layer {} within the model's {} layers", i,
                             s.first_layer, s.last_layer, next, *layer_count));
    }
    auto policy = attest::parse_policy(s.policy_json);
    if (!policy.ok()) return bad(fmt::format("stages[{}].policy: {}", i, policy.error().message()));
    next = s.last_layer + 1;
  }
  if (next != *layer_count) return bad(fmt::format("layers {}..{} belong to no stage", next, *layer_count - 1));
  if (!t.front_policy_json.empty()) {
    auto policy = attest::parse_policy(t.front_policy_json);
    if (!policy.ok()) return bad(fmt::format("front_policy: {}", policy.error().message()));
  }
  return ok_status();
}

// The audit fields for a recorded stage table (never its policies, which the table's hash covers).
void describe_stage_table(nlohmann::ordered_json& e, const StageTable& t, std::string_view text) {
  e["stages"] = t.stages.size();
  e["stage_table_sha256"] = to_hex(crypto::sha256(as_bytes(text)));
}

}  // namespace

struct Broker::Impl {
  sqlite3* db = nullptr;
  std::string path;
  SecretBytes wrap_key, audit_key, state_key;
  std::function<TimePoint()> now;
  std::mutex mu;

  ~Impl() {
    if (db) sqlite3_close(db);
  }

  Error db_error(std::string_view what) const {
    return make_error(ErrorCode::kIo, "kbs database {}: {}: {}", path, what, sqlite3_errmsg(db));
  }
  Status exec(const char* sql, std::string_view what) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string m = err ? err : "unknown";
      sqlite3_free(err);
      return make_error(ErrorCode::kIo, "kbs database {}: {}: {}", path, what, m);
    }
    return ok_status();
  }

  // A transaction that rolls back unless committed.
  class Tx {
   public:
    explicit Tx(Impl& i) : impl_(i) { ok_ = impl_.exec("BEGIN IMMEDIATE", "begin").ok(); }
    ~Tx() {
      if (ok_ && !done_) (void)impl_.exec("ROLLBACK", "rollback");
    }
    bool ok() const { return ok_; }
    Status commit() {
      done_ = true;
      return impl_.exec("COMMIT", "commit");
    }

   private:
    Impl& impl_;
    bool ok_ = false;
    bool done_ = false;
  };

  Bytes audit_mac(uint64_t seq, ByteView prev, std::string_view event) const {
    Bytes m(kAuditDomain, kAuditDomain + sizeof(kAuditDomain) - 1);
    put_u64(m, seq);
    m.insert(m.end(), prev.begin(), prev.end());
    put_str(m, event);
    return crypto::hmac(crypto::HashAlg::kSha256, audit_key.view(), m);
  }
  Bytes head_mac(ByteView head) const {
    Bytes m = to_bytes("veil-kbs-audit-head-v1");
    m.insert(m.end(), head.begin(), head.end());
    return crypto::hmac(crypto::HashAlg::kSha256, audit_key.view(), m);
  }
  Bytes rollback_mac(std::string_view model_id, uint64_t highest) const {
    Bytes m(kRollbackDomain, kRollbackDomain + sizeof(kRollbackDomain) - 1);
    put_str(m, model_id);
    put_u64(m, highest);
    return crypto::hmac(crypto::HashAlg::kSha256, state_key.view(), m);
  }
  // A record without a layer count keeps the original AAD (records stored before the column existed still
  // open); with one, "layers" || u32 is appended, so adding, changing or removing it in the database makes
  // the record fail authentication. A stage table the same way: "stages" || SHA-256(its stored text).
  Bytes wrap_aad(std::string_view model_id, uint64_t version, ByteView key_id, std::string_view policy,
                 std::optional<uint32_t> layer_count, const std::optional<std::string>& stage_table) const {
    Bytes a(kWrapAad, kWrapAad + sizeof(kWrapAad) - 1);
    put_str(a, model_id);
    put_u64(a, version);
    a.insert(a.end(), key_id.begin(), key_id.end());
    auto ph = crypto::sha256(as_bytes(policy));
    a.insert(a.end(), ph.begin(), ph.end());
    if (layer_count) {
      a.insert(a.end(), {'l', 'a', 'y', 'e', 'r', 's'});
      put_u64(a, *layer_count);
    }
    if (stage_table) {
      a.insert(a.end(), {'s', 't', 'a', 'g', 'e', 's'});
      auto sh = crypto::sha256(as_bytes(*stage_table));
      a.insert(a.end(), sh.begin(), sh.end());
    }
    return a;
  }

  // A stored key record: the wrapped key and everything its wrapping binds.
  struct Record {
    Bytes key_id, wrapped;
    std::string policy;
    std::optional<uint32_t> layer_count;
    std::optional<std::string> stage_table;
  };

  // kNotFound naming `what` when there is no such record.
  Result<Record> read_record(const std::string& model_id, uint64_t version, std::string_view what) {
    Stmt q(db, "SELECT key_id, wrapped, policy, layer_count, stage_table FROM model_keys WHERE model_id = ? AND "
               "version = ?");
    q.bind(1, std::string_view(model_id)).bind_int(2, static_cast<int64_t>(std::min<uint64_t>(version, INT64_MAX)));
    int rc = q.step();
    if (rc == SQLITE_DONE) return make_error(ErrorCode::kNotFound, "{}: no such key", what);
    if (rc != SQLITE_ROW) return db_error("reading the key");
    Record rec{q.blob_col(0), q.blob_col(1), q.text_col(2), std::nullopt, std::nullopt};
    if (!q.is_null(3)) rec.layer_count = static_cast<uint32_t>(std::clamp<int64_t>(q.int_col(3), 0, UINT32_MAX));
    if (!q.is_null(4)) rec.stage_table = q.text_col(4);
    return rec;
  }

  // nonce || AES-256-GCM(key) under the wrap key, binding the record's identity, policy, layer count and stage table.
  Result<Bytes> wrap(std::string_view model_id, uint64_t version, const SecretBytes& key, const Record& rec) const {
    Bytes nonce = crypto::random_bytes(crypto::kAeadNonceSize);
    VEIL_ASSIGN_OR_RETURN(crypto::Aead aead, crypto::Aead::create(crypto::AeadSuite::kAes256Gcm, wrap_key.view()));
    Bytes wrapped;
    VEIL_TRY(aead.seal(nonce, wrap_aad(model_id, version, rec.key_id, rec.policy, rec.layer_count, rec.stage_table),
                       key.view(), wrapped));
    wrapped.insert(wrapped.begin(), nonce.begin(), nonce.end());
    return wrapped;
  }

  // The model key, only if the record authenticates (kSecurity) and the key matches its key id.
  Result<SecretBytes> unwrap(std::string_view model_id, uint64_t version, const Record& rec,
                             std::string_view what) const {
    if (rec.wrapped.size() < crypto::kAeadNonceSize + crypto::kAeadTagSize || rec.key_id.size() != 16) {
      return make_error(ErrorCode::kCorrupt, "{}: the stored key record is malformed", what);
    }
    VEIL_ASSIGN_OR_RETURN(crypto::Aead aead, crypto::Aead::create(crypto::AeadSuite::kAes256Gcm, wrap_key.view()));
    SecretBytes key(rec.wrapped.size() - crypto::kAeadNonceSize - crypto::kAeadTagSize);
    ByteView nonce(rec.wrapped.data(), crypto::kAeadNonceSize);
    ByteView sealed(rec.wrapped.data() + crypto::kAeadNonceSize, rec.wrapped.size() - crypto::kAeadNonceSize);
    Status st = aead.open_into(
        nonce, wrap_aad(model_id, version, rec.key_id, rec.policy, rec.layer_count, rec.stage_table), sealed,
        key.data());
    if (!st.ok() || !ct_equal(sealed::key_id_for(key.view()), rec.key_id)) {
      key.clear();
      return make_error(ErrorCode::kSecurity,
                        "{}: the stored key record fails authentication (key, policy, layer count, stage table or "
                        "identity altered in the database)",
                        what);
    }
    return key;
  }

  // Appends one entry (inside the caller's transaction) and moves the head.
  Status append_audit(nlohmann::ordered_json event) {
    nlohmann::ordered_json stamped;
    stamped["time"] = std::chrono::duration_cast<std::chrono::seconds>(now().time_since_epoch()).count();
    for (auto it = event.begin(); it != event.end(); ++it) stamped[it.key()] = it.value();
    std::string text = stamped.dump();
    uint64_t seq = 1;
    Bytes prev(kMacSize, 0);
    {
      Stmt q(db, "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1");
      int rc = q.step();
      if (rc == SQLITE_ROW) {
        seq = static_cast<uint64_t>(q.int_col(0)) + 1;
        prev = q.blob_col(1);
      } else if (rc != SQLITE_DONE) {
        return db_error("reading the audit head");
      }
    }
    Bytes mac = audit_mac(seq, prev, text);
    Stmt ins(db, "INSERT INTO audit(seq, event, prev, mac) VALUES(?, ?, ?, ?)");
    ins.bind_int(1, static_cast<int64_t>(seq)).bind(2, std::string_view(text)).bind(3, ByteView(prev)).bind(4, ByteView(mac));
    if (ins.step() != SQLITE_DONE) return db_error("appending to the audit log");
    Bytes head;
    put_u64(head, seq);
    head.insert(head.end(), mac.begin(), mac.end());
    Stmt up(db, "INSERT OR REPLACE INTO meta(name, value) VALUES('audit_head', ?), ('audit_head_mac', ?)");
    up.bind(1, ByteView(head)).bind(2, ByteView(head_mac(head)));
    if (up.step() != SQLITE_DONE) return db_error("recording the audit head");
    return ok_status();
  }

  // The audit fields that say who asked for what: model, version, the layer range if any, peer, evidence.
  static nlohmann::ordered_json request_event(std::string_view event, const ReleaseRequest& r,
                                              const attest::Claims* claims) {
    nlohmann::ordered_json e;
    e["event"] = event;
    e["model_id"] = r.model_id;
    e["version"] = r.version;
    if (r.range && r.range->metadata_only) {
      e["range"] = {{"metadata_only", true}};
    } else if (r.range) {
      e["range"] = {{"first_layer", r.range->first_layer},
                    {"last_layer", r.range->last_layer},
                    {"layer_count", r.range->layer_count},
                    {"tied_embeddings", r.range->tied_embeddings}};
    }
    e["peer"] = r.peer;
    if (claims) {
      e["tee"] = attest::tee_type_name(claims->type);
      auto& m = e["measurements"] = nlohmann::ordered_json::object();
      for (const auto& [k, v] : claims->measurements) m[k] = to_hex(v);
    }
    return e;
  }

  // The stage rules for a key stored with a stage table (Broker::add_key), on top of the model's policy: the stage
  // index this request is for (nullopt: the front's metadata-only request), or the refusal.
  Result<std::optional<uint32_t>> stage_decision(const ReleaseRequest& r, const StageTable& t,
                                                 const attest::Claims& claims, const std::string& what) {
    auto satisfies = [&](const std::string& policy_text, const std::string& whose) -> Status {
      auto policy = attest::parse_policy(policy_text);
      if (!policy.ok()) return policy.error().wrap(fmt::format("{}: stored {}", what, whose));
      Status st = attest::check_policy(*policy, claims, claims.report_data, now());
      if (!st.ok()) return make_error(ErrorCode::kSecurity, "{}: refused by {}: {}", what, whose, st.error().message());
      return ok_status();
    };
    if (!r.range) {
      return make_error(ErrorCode::kSecurity,
                        "{}: refused: the key has a recorded pipeline stage table, so only stage ranges are released",
                        what);
    }
    if (r.range->metadata_only) {
      if (!t.front_policy_json.empty()) VEIL_TRY(satisfies(t.front_policy_json, "the front policy"));
      return std::optional<uint32_t>();
    }
    for (size_t i = 0; i < t.stages.size(); ++i) {
      const StageBinding& s = t.stages[i];
      if (s.first_layer != r.range->first_layer || s.last_layer != r.range->last_layer) continue;
      VEIL_TRY(satisfies(s.policy_json, fmt::format("stage {}'s policy", i)));
      return std::optional<uint32_t>(static_cast<uint32_t>(i));
    }
    return make_error(ErrorCode::kSecurity, "{}: refused: no stage of the recorded stage table has exactly this range",
                      what);
  }

  // Appends a refusal in its own transaction; returns the refusal error (or the audit failure).
  Error refuse(const ReleaseRequest& r, const attest::Claims* claims, Error why) {
    nlohmann::ordered_json e = request_event("refuse", r, claims);
    e["reason"] = why.message();
    Tx tx(*this);
    Status st = tx.ok() ? append_audit(std::move(e)) : Status(db_error("begin"));
    if (st.ok()) st = tx.commit();
    if (!st.ok()) {
      spdlog::error("kbs: could not audit a refusal: {}", st.error().message());
      return std::move(st).error().wrap("kbs: refusing; the refusal could not be audited");
    }
    spdlog::warn("kbs: refused model {} version {} to {}: {}", r.model_id, r.version, r.peer, why.message());
    return why;
  }

  Result<uint64_t> read_highest(const std::string& model_id) {
    Stmt q(db, "SELECT highest, mac FROM rollback WHERE model_id = ?");
    q.bind(1, std::string_view(model_id));
    int rc = q.step();
    if (rc == SQLITE_DONE) return uint64_t{0};
    if (rc != SQLITE_ROW) return db_error("reading rollback state");
    uint64_t h = static_cast<uint64_t>(q.int_col(0));
    if (!ct_equal(q.blob_col(1), rollback_mac(model_id, h))) {
      return make_error(ErrorCode::kSecurity,
                        "kbs database {}: table 'rollback', model '{}': the highest-version record fails its MAC "
                        "(altered outside the broker)", path, model_id);
    }
    return h;
  }
  Status write_highest(const std::string& model_id, uint64_t v) {
    Stmt q(db, "INSERT OR REPLACE INTO rollback(model_id, highest, mac) VALUES(?, ?, ?)");
    Bytes mac = rollback_mac(model_id, v);
    q.bind(1, std::string_view(model_id)).bind_int(2, static_cast<int64_t>(v)).bind(3, ByteView(mac));
    if (q.step() != SQLITE_DONE) return db_error("writing rollback state");
    return ok_status();
  }
};

Broker::Broker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() = default;

Result<SecretBytes> read_master_key(const std::filesystem::path& path) {
  auto k = sealed::read_key_file(path);
  if (!k.ok()) return std::move(k).error().wrap("kbs master key");
  return k;
}

Result<std::unique_ptr<Broker>> Broker::open(const std::filesystem::path& db_path, const SecretBytes& master_key,
                                             std::function<TimePoint()> now) {
  if (master_key.size() != 32) {
    return make_error(ErrorCode::kInvalidArgument, "kbs: the master key must be 32 bytes, not {}", master_key.size());
  }
  auto impl = std::make_unique<Impl>();
  impl->path = db_path.string();
  impl->now = now ? std::move(now) : [] { return std::chrono::system_clock::now(); };
  if (sqlite3_open_v2(impl->path.c_str(), &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    return impl->db_error("cannot open");
  }
  sqlite3_busy_timeout(impl->db, 5000);
  auto derive = [&](std::string_view label) {
    return crypto::hkdf(crypto::HashAlg::kSha256, as_bytes("veil-kbs-v1"), master_key.view(), as_bytes(label), 32);
  };
  impl->wrap_key = derive("key wrap");
  impl->audit_key = derive("audit");
  impl->state_key = derive("state");
  SecretBytes check_key = derive("master check");
  Bytes check = crypto::hmac(crypto::HashAlg::kSha256, check_key.view(), as_bytes("veil-kbs master key check"));

  VEIL_TRY(impl->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", "pragmas"));
  VEIL_TRY(impl->exec(
      "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);"
      "CREATE TABLE IF NOT EXISTS model_keys(model_id TEXT NOT NULL, version INTEGER NOT NULL, key_id BLOB NOT NULL,"
      " wrapped BLOB NOT NULL, policy TEXT NOT NULL, created_at INTEGER NOT NULL, layer_count INTEGER,"
      " stage_table TEXT, PRIMARY KEY(model_id, version));"
      "CREATE TABLE IF NOT EXISTS rollback(model_id TEXT PRIMARY KEY, highest INTEGER NOT NULL, mac BLOB NOT NULL);"
      "CREATE TABLE IF NOT EXISTS audit(seq INTEGER PRIMARY KEY, event TEXT NOT NULL, prev BLOB NOT NULL,"
      " mac BLOB NOT NULL);",
      "creating the schema"));
  Impl::Tx tx(*impl);
  if (!tx.ok()) return impl->db_error("begin");
  Stmt q(impl->db, "SELECT value FROM meta WHERE name = 'master_check'");
  int rc = q.step();
  if (rc == SQLITE_ROW) {
    if (!ct_equal(q.blob_col(0), check)) {
      return make_error(ErrorCode::kSecurity, "kbs database {}: it was created under another master key", impl->path);
    }
  } else if (rc == SQLITE_DONE) {
    Stmt ins(impl->db, "INSERT INTO meta(name, value) VALUES('master_check', ?), ('schema', '1')");
    ins.bind(1, ByteView(check));
    if (ins.step() != SQLITE_DONE) return impl->db_error("initialising");
  } else {
    return impl->db_error("reading meta");
  }
  VEIL_TRY(tx.commit());
  // A database from before range keys (layer_count) or stage tables (stage_table): add the column, NULL for all.
  for (auto [column, sql] : {std::pair{"layer_count", "ALTER TABLE model_keys ADD COLUMN layer_count INTEGER"},
                             std::pair{"stage_table", "ALTER TABLE model_keys ADD COLUMN stage_table TEXT"}}) {
    if (!Stmt(impl->db, fmt::format("SELECT {} FROM model_keys LIMIT 0", column).c_str()).ok()) {
      VEIL_TRY(impl->exec(sql, fmt::format("adding model_keys.{}", column)));
    }
  }
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Status Broker::add_key(const std::string& model_id, uint64_t version, const SecretBytes& key,
                       const std::string& policy_json, std::optional<uint32_t> layer_count,
                       const std::optional<StageTable>& stages) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  if (model_id.empty() || model_id.size() > 128) {
    return make_error(ErrorCode::kInvalidArgument, "kbs add-key: model id must be 1..128 characters");
  }
  if (version > static_cast<uint64_t>(INT64_MAX)) return make_error(ErrorCode::kInvalidArgument, "kbs add-key: version too large");
  if (key.size() != sealed::kModelKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "kbs add-key: a model key is {} bytes", sealed::kModelKeySize);
  }
  if (layer_count && (*layer_count == 0 || *layer_count > sealed::kMaxModelLayers)) {
    return make_error(ErrorCode::kInvalidArgument, "kbs add-key: layer count {} is outside 1..{}", *layer_count,
                      sealed::kMaxModelLayers);
  }
  auto policy = attest::parse_policy(policy_json);
  if (!policy.ok()) return std::move(policy).error().wrap("kbs add-key: release policy");
  std::optional<std::string> stage_text;
  if (stages) {
    VEIL_TRY(check_stage_table(*stages, layer_count, "kbs add-key"));
    stage_text = stage_table_text(*stages);
  }
  auto key_id = sealed::key_id_for(key.view());
  VEIL_ASSIGN_OR_RETURN(Bytes wrapped,
                        d.wrap(model_id, version, key, {Bytes(key_id.begin(), key_id.end()), {}, policy_json,
                                                        layer_count, stage_text}));

  Impl::Tx tx(d);
  if (!tx.ok()) return d.db_error("begin");
  {
    Stmt q(d.db, "SELECT 1 FROM model_keys WHERE model_id = ? AND version = ?");
    q.bind(1, std::string_view(model_id)).bind_int(2, static_cast<int64_t>(version));
    if (q.step() == SQLITE_ROW) {
      return make_error(ErrorCode::kInvalidArgument, "kbs add-key: model '{}' version {} already has a key", model_id,
                        version);
    }
  }
  int64_t created = std::chrono::duration_cast<std::chrono::seconds>(d.now().time_since_epoch()).count();
  Stmt ins(d.db, "INSERT INTO model_keys(model_id, version, key_id, wrapped, policy, created_at, layer_count, "
                 "stage_table) VALUES(?,?,?,?,?,?,?,?)");
  ins.bind(1, std::string_view(model_id)).bind_int(2, static_cast<int64_t>(version)).bind(3, ByteView(key_id));
  ins.bind(4, ByteView(wrapped)).bind(5, std::string_view(policy_json)).bind_int(6, created);
  if (layer_count) ins.bind_int(7, *layer_count);  // else NULL: unknown
  if (stage_text) ins.bind(8, std::string_view(*stage_text));  // else NULL: no stage binding (docs/kbs.md)
  if (ins.step() != SQLITE_DONE) return d.db_error("storing the key");
  nlohmann::ordered_json e;
  e["event"] = "add-key";
  e["model_id"] = model_id;
  e["version"] = version;
  e["key_id"] = to_hex(key_id);
  e["policy_sha256"] = to_hex(crypto::sha256(as_bytes(policy_json)));
  if (layer_count) e["layer_count"] = *layer_count;
  if (stages) describe_stage_table(e, *stages, *stage_text);
  VEIL_TRY(d.append_audit(std::move(e)));
  return tx.commit();
}

Result<Release> Broker::release(const ReleaseRequest& r, const attest::Claims& claims) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  std::string what = fmt::format("kbs: release of model '{}' version {}", r.model_id, r.version);
  if (r.range) {
    what += r.range->metadata_only ? std::string(" metadata only")
                                   : fmt::format(" layers {}..{}", r.range->first_layer, r.range->last_layer);
  }
  std::optional<sealed::RangeSpec> spec;
  if (r.range && r.range->metadata_only) {
    spec = sealed::metadata_only_spec();  // the rest key alone: no layer count to check
  } else if (r.range) {
    auto s = sealed::range_spec_for({r.range->first_layer, r.range->last_layer}, r.range->layer_count,
                                    r.range->tied_embeddings);
    if (!s.ok()) return d.refuse(r, &claims, s.error().wrap(what));
    spec = *s;
  }
  auto rec = d.read_record(r.model_id, r.version, what);
  if (!rec.ok()) return d.refuse(r, &claims, std::move(rec).error());
  auto policy = attest::parse_policy(rec->policy);
  if (!policy.ok()) return d.refuse(r, &claims, policy.error().wrap(what + ": stored release policy"));
  Status pst = attest::check_policy(*policy, claims, claims.report_data, d.now());
  if (!pst.ok()) {
    return d.refuse(r, &claims, Error(ErrorCode::kSecurity, fmt::format("{}: refused by the model's release policy: {}",
                                                                        what, pst.error().message())));
  }
  auto highest = d.read_highest(r.model_id);
  if (!highest.ok()) return d.refuse(r, &claims, highest.error().wrap(what));
  if (r.version < *highest) {
    return d.refuse(r, &claims,
                    make_error(ErrorCode::kSecurity,
                               "{}: rollback refused: version {} was already released (an administrator can allow it "
                               "with 'veil kbs allow-downgrade')",
                               what, *highest));
  }
  Release out;
  std::copy(rec->key_id.begin(), rec->key_id.end(), out.key_id.begin());
  {
    auto key = d.unwrap(r.model_id, r.version, *rec, what);
    if (!key.ok()) return d.refuse(r, &claims, std::move(key).error());
    out.key = std::move(*key);
  }
  const std::optional<uint32_t>& layer_count = rec->layer_count;
  if (spec && !spec->metadata_only && layer_count && r.range->layer_count != *layer_count) {
    out.key.clear();
    return d.refuse(r, &claims,
                    make_error(ErrorCode::kInvalidArgument, "{}: the request says {} layers, the model has {}", what,
                               r.range->layer_count, *layer_count));
  }
  std::optional<uint32_t> stage;
  if (rec->stage_table) {
    auto table = parse_stage_table(*rec->stage_table);
    auto decided = table.ok() ? d.stage_decision(r, *table, claims, what)
                              : Result<std::optional<uint32_t>>(table.error().wrap(what));
    if (!decided.ok()) {
      out.key.clear();
      return d.refuse(r, &claims, std::move(decided).error());
    }
    stage = *decided;
  }
  if (spec) {
    // A range request gets only its parts' keys: the model key never leaves this function.
    auto set = sealed::RangeKeySet::derive(out.key, r.model_id, r.version, *spec);
    out.key.clear();
    if (!set.ok()) return d.refuse(r, &claims, set.error().wrap(what));
    out.range_keys = std::move(*set);
  }
  Impl::Tx tx(d);
  if (!tx.ok()) return d.db_error("begin");
  if (r.version > *highest) VEIL_TRY(d.write_highest(r.model_id, r.version));
  nlohmann::ordered_json e = Impl::request_event("release", r, &claims);
  e["key_id"] = to_hex(out.key_id);
  if (stage) e["stage"] = *stage;
  if (out.range_keys) e["released"] = out.range_keys->describe();
  VEIL_TRY(d.append_audit(std::move(e)));
  VEIL_TRY(tx.commit());
  spdlog::info("kbs: released model {} version {}{} to {}", r.model_id, r.version,
               out.range_keys ? " (" + out.range_keys->describe() + ")" : std::string(), r.peer);
  return out;
}

Status Broker::bind_stages(const std::string& model_id, uint64_t version, const StageTable& stages) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  std::string what = fmt::format("kbs bind-stages: model '{}' version {}", model_id, version);
  Impl::Tx tx(d);
  if (!tx.ok()) return d.db_error("begin");
  VEIL_ASSIGN_OR_RETURN(Impl::Record rec, d.read_record(model_id, version, what));
  if (rec.stage_table) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: the key already has a stage table (one is never replaced: store a new version)", what);
  }
  VEIL_TRY(check_stage_table(stages, rec.layer_count, what));
  Bytes wrapped;
  {
    VEIL_ASSIGN_OR_RETURN(SecretBytes key, d.unwrap(model_id, version, rec, what));
    rec.stage_table = stage_table_text(stages);
    VEIL_ASSIGN_OR_RETURN(wrapped, d.wrap(model_id, version, key, rec));
  }
  Stmt up(d.db, "UPDATE model_keys SET wrapped = ?, stage_table = ? WHERE model_id = ? AND version = ? AND "
                "stage_table IS NULL");
  up.bind(1, ByteView(wrapped)).bind(2, std::string_view(*rec.stage_table)).bind(3, std::string_view(model_id));
  up.bind_int(4, static_cast<int64_t>(version));
  if (up.step() != SQLITE_DONE || sqlite3_changes(d.db) != 1) return d.db_error("recording the stage table");
  nlohmann::ordered_json e;
  e["event"] = "bind-stages";
  e["model_id"] = model_id;
  e["version"] = version;
  e["key_id"] = to_hex(rec.key_id);
  describe_stage_table(e, stages, *rec.stage_table);
  VEIL_TRY(d.append_audit(std::move(e)));
  return tx.commit();
}

Status Broker::allow_downgrade(const std::string& model_id, uint64_t version, const std::string& reason) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  if (reason.empty()) return make_error(ErrorCode::kInvalidArgument, "kbs allow-downgrade: a reason is required");
  Impl::Tx tx(d);
  if (!tx.ok()) return d.db_error("begin");
  VEIL_ASSIGN_OR_RETURN(uint64_t highest, d.read_highest(model_id));
  if (version >= highest) {
    return make_error(ErrorCode::kInvalidArgument,
                      "kbs allow-downgrade: model '{}' version {} is not below the highest released version {}",
                      model_id, version, highest);
  }
  VEIL_TRY(d.write_highest(model_id, version));
  nlohmann::ordered_json e;
  e["event"] = "allow-downgrade";
  e["model_id"] = model_id;
  e["from_version"] = highest;
  e["to_version"] = version;
  e["reason"] = reason;
  VEIL_TRY(d.append_audit(std::move(e)));
  return tx.commit();
}

Result<std::vector<KeyRecord>> Broker::list_keys() {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  std::vector<KeyRecord> out;
  Stmt q(d.db, "SELECT model_id, version, key_id, policy, created_at, layer_count, stage_table FROM model_keys ORDER BY "
               "model_id, version");
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    KeyRecord k;
    k.model_id = q.text_col(0);
    k.version = static_cast<uint64_t>(q.int_col(1));
    Bytes id = q.blob_col(2);
    if (id.size() == 16) std::copy(id.begin(), id.end(), k.key_id.begin());
    k.policy_json = q.text_col(3);
    k.created_at = q.int_col(4);
    if (!q.is_null(5)) k.layer_count = static_cast<uint32_t>(std::clamp<int64_t>(q.int_col(5), 0, UINT32_MAX));
    if (!q.is_null(6)) {
      auto table = parse_stage_table(q.text_col(6));  // as stored (authenticated only when a release unwraps it)
      if (table.ok()) k.stages = std::move(*table);
    }
    out.push_back(std::move(k));
  }
  if (rc != SQLITE_DONE) return d.db_error("listing keys");
  return out;
}

Result<uint64_t> Broker::highest_released(const std::string& model_id) {
  std::lock_guard lock(impl_->mu);
  return impl_->read_highest(model_id);
}

Result<std::vector<AuditEntry>> Broker::audit_entries() {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  std::vector<AuditEntry> out;
  Stmt q(d.db, "SELECT seq, event, prev, mac FROM audit ORDER BY seq");
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    out.push_back({static_cast<uint64_t>(q.int_col(0)), q.text_col(1), q.blob_col(2), q.blob_col(3)});
  }
  if (rc != SQLITE_DONE) return d.db_error("reading the audit log");
  return out;
}

Result<AuditReport> Broker::verify_audit() {
  VEIL_ASSIGN_OR_RETURN(std::vector<AuditEntry> entries, audit_entries());
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  auto bad = [&](uint64_t seq, std::string_view why) {
    return make_error(ErrorCode::kSecurity, "kbs audit log {}: entry {}: {}", d.path, seq, why);
  };
  Bytes prev(kMacSize, 0);
  uint64_t expect = 1;
  for (const AuditEntry& e : entries) {
    if (e.seq != expect) {
      return bad(expect, fmt::format("missing (the next entry is {}): entries were removed or renumbered", e.seq));
    }
    if (!ct_equal(e.prev, prev)) return bad(e.seq, "does not chain to the entry before it (removed or reordered)");
    if (!ct_equal(e.mac, d.audit_mac(e.seq, e.prev, e.event_json))) return bad(e.seq, "MAC mismatch (entry changed)");
    prev = e.mac;
    ++expect;
  }
  Bytes head, head_mac;
  {
    Stmt q(d.db, "SELECT name, value FROM meta WHERE name IN ('audit_head', 'audit_head_mac')");
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) (q.text_col(0) == "audit_head" ? head : head_mac) = q.blob_col(1);
  }
  if (entries.empty() && head.empty()) return AuditReport{0, to_hex(prev)};
  Bytes expect_head;
  put_u64(expect_head, entries.size());
  expect_head.insert(expect_head.end(), prev.begin(), prev.end());
  if (!ct_equal(head_mac, d.head_mac(head))) {
    return make_error(ErrorCode::kSecurity, "kbs audit log {}: the recorded head fails its MAC", d.path);
  }
  if (!ct_equal(head, expect_head)) {
    return make_error(ErrorCode::kSecurity,
                      "kbs audit log {}: the log ends at entry {} but the recorded head is elsewhere (entries after it "
                      "were removed)",
                      d.path, entries.size());
  }
  return AuditReport{entries.size(), to_hex(prev)};
}

}  // namespace veil::kbs
