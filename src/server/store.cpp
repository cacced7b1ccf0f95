#include "server/store.h"

#include <sqlite3.h>

#include <cctype>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

#include "crypto/crypto.h"

namespace veil::server {

bool ApiKeyInfo::allows_model(std::string_view model) const {
  for (const auto& m : models) {
    if (m == "*" || m == model) return true;
  }
  return false;
}

namespace {

struct StmtDeleter { void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); } };
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  secret_sha256 BLOB NOT NULL,
  name TEXT NOT NULL,
  models TEXT NOT NULL,
  requests_per_minute REAL NOT NULL,
  burst INTEGER NOT NULL,
  created INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signatures (
  id TEXT PRIMARY KEY,
  text TEXT NOT NULL,
  signatures TEXT NOT NULL,
  created INTEGER NOT NULL
);
)sql";

}  // namespace

struct Store::Impl {
  std::mutex mu;
  sqlite3* db = nullptr;
  std::string path;

  Error sql_error(std::string_view what) const {
    return make_error(ErrorCode::kIo, "{}: {}: {}", what, path, db ? sqlite3_errmsg(db) : "no database");
  }

  Result<StmtPtr> prepare(const char* sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) return sql_error("preparing a statement");
    return StmtPtr(s);
  }
};

Result<std::unique_ptr<Store>> Store::open(const std::filesystem::path& path) {
  std::unique_ptr<Store> store(new Store());
  store->impl_ = std::make_unique<Impl>();
  auto& im = *store->impl_;
  im.path = path.string();
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (sqlite3_open_v2(im.path.c_str(), &im.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    auto err = im.sql_error("opening the server database");
    sqlite3_close(im.db);
    im.db = nullptr;
    return err;
  }
  std::filesystem::permissions(path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::replace, ec);
  sqlite3_busy_timeout(im.db, 5000);
  char* msg = nullptr;
  std::string init = std::string("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;") + kSchema;
  if (sqlite3_exec(im.db, init.c_str(), nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string m = msg ? msg : "unknown";
    sqlite3_free(msg);
    return make_error(ErrorCode::kCorrupt, "initialising the server database: {}: {}", im.path, m);
  }
  return store;
}

Store::~Store() {
  if (impl_ && impl_->db) sqlite3_close(impl_->db);
}

Result<std::string> Store::add_key(const std::string& name, const std::vector<std::string>& models,
                                   double requests_per_minute, uint32_t burst) {
  if (models.empty()) return make_error(ErrorCode::kInvalidArgument, "a key needs at least one allowed model (or \"*\")");
  if (!(requests_per_minute > 0) || burst == 0) {
    return make_error(ErrorCode::kInvalidArgument, "rate limits must be positive");
  }
  std::string id = to_hex(crypto::random_bytes(8));
  SecretBytes secret(32);
  crypto::random_bytes(secret.span());
  std::string secret_hex = to_hex(secret.view());
  auto h = crypto::sha256(as_bytes(secret_hex));
  std::string key = "vk_" + id + "_" + secret_hex;
  secure_zero(secret_hex.data(), secret_hex.size());
  std::string models_json = nlohmann::json(models).dump();
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare(
      "INSERT INTO api_keys (id, secret_sha256, name, models, requests_per_minute, burst, created) "
      "VALUES (?, ?, ?, ?, ?, ?, ?)"));
  sqlite3_bind_text(st.get(), 1, id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_blob(st.get(), 2, h.data(), static_cast<int>(h.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(st.get(), 3, name.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st.get(), 4, models_json.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_double(st.get(), 5, requests_per_minute);
  sqlite3_bind_int64(st.get(), 6, burst);
  sqlite3_bind_int64(st.get(), 7, now_seconds());
  if (sqlite3_step(st.get()) != SQLITE_DONE) return impl_->sql_error("adding an API key");
  return key;
}

namespace {
ApiKeyInfo row_to_key(sqlite3_stmt* s) {
  ApiKeyInfo k;
  k.id = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  k.name = reinterpret_cast<const char*>(sqlite3_column_text(s, 1));
  auto models = nlohmann::json::parse(reinterpret_cast<const char*>(sqlite3_column_text(s, 2)), nullptr, false);
  if (models.is_array()) {
    for (const auto& m : models) {
      if (m.is_string()) k.models.push_back(m.get<std::string>());
    }
  }
  k.requests_per_minute = sqlite3_column_double(s, 3);
  k.burst = static_cast<uint32_t>(sqlite3_column_int64(s, 4));
  k.created = sqlite3_column_int64(s, 5);
  k.revoked = sqlite3_column_int64(s, 6) != 0;
  return k;
}
}  // namespace

Result<std::vector<ApiKeyInfo>> Store::list_keys() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare(
      "SELECT id, name, models, requests_per_minute, burst, created, revoked FROM api_keys ORDER BY created, id"));
  std::vector<ApiKeyInfo> out;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) out.push_back(row_to_key(st.get()));
  if (rc != SQLITE_DONE) return impl_->sql_error("listing API keys");
  return out;
}

Status Store::revoke_key(const std::string& id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare("UPDATE api_keys SET revoked = 1 WHERE id = ?"));
  sqlite3_bind_text(st.get(), 1, id.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(st.get()) != SQLITE_DONE) return impl_->sql_error("revoking an API key");
  if (sqlite3_changes(impl_->db) == 0) return make_error(ErrorCode::kNotFound, "no API key with id {}", id);
  return ok_status();
}

Result<ApiKeyInfo> Store::authenticate(std::string_view key) {
  auto refuse = [] { return make_error(ErrorCode::kSecurity, "invalid API key"); };
  // vk_ + 16 hex + _ + 64 hex
  if (key.size() != 3 + 16 + 1 + 64 || key.substr(0, 3) != "vk_" || key[19] != '_') return refuse();
  std::string id(key.substr(3, 16));
  std::string_view secret = key.substr(20);
  for (char c : id) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return refuse();
  }
  auto h = crypto::sha256(as_bytes(secret));
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare(
      "SELECT id, name, models, requests_per_minute, burst, created, revoked, secret_sha256 FROM api_keys "
      "WHERE id = ?"));
  sqlite3_bind_text(st.get(), 1, id.c_str(), -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st.get());
  if (rc == SQLITE_DONE) return refuse();
  if (rc != SQLITE_ROW) return impl_->sql_error("looking up an API key");
  ApiKeyInfo info = row_to_key(st.get());
  const void* blob = sqlite3_column_blob(st.get(), 7);
  int n = sqlite3_column_bytes(st.get(), 7);
  ByteView stored(static_cast<const uint8_t*>(blob), blob ? static_cast<size_t>(n) : 0);
  if (!ct_equal(stored, h) || info.revoked) return refuse();
  return info;
}

size_t Store::active_key_count() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto st = impl_->prepare("SELECT COUNT(*) FROM api_keys WHERE revoked = 0");
  if (!st.ok() || sqlite3_step(st->get()) != SQLITE_ROW) return 0;
  return static_cast<size_t>(sqlite3_column_int64(st->get(), 0));
}

Status Store::put_signature(const StoredSignature& sig) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare(
      "INSERT INTO signatures (id, text, signatures, created) VALUES (?, ?, ?, ?)"));
  sqlite3_bind_text(st.get(), 1, sig.id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st.get(), 2, sig.text.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st.get(), 3, sig.signatures_json.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st.get(), 4, sig.created);
  if (sqlite3_step(st.get()) != SQLITE_DONE) return impl_->sql_error("storing a signature");
  return ok_status();
}

Result<StoredSignature> Store::get_signature(const std::string& id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  VEIL_ASSIGN_OR_RETURN(auto st, impl_->prepare("SELECT id, text, signatures, created FROM signatures WHERE id = ?"));
  sqlite3_bind_text(st.get(), 1, id.c_str(), -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st.get());
  if (rc == SQLITE_DONE) return make_error(ErrorCode::kNotFound, "no signature for that completion id");
  if (rc != SQLITE_ROW) return impl_->sql_error("reading a signature");
  StoredSignature s;
  s.id = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 0));
  s.text = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 1));
  s.signatures_json = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 2));
  s.created = sqlite3_column_int64(st.get(), 3);
  return s;
}

}  // namespace veil::server
