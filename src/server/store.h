// Store: the server's persistent state in one SQLite file — API keys (hashed) with their allowed models
// and rate limits, and completion signatures. Survives restarts; written with WAL journaling.
//
// API keys look like "vk_<16 hex id>_<64 hex secret>". Only SHA-256(secret) is stored; the key is shown
// once by `veil keys add`. Verification looks the id up and compares hashes with ct_equal.
//
// Thread-safety: all methods are safe from any thread (one connection behind a mutex).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"

namespace veil::server {

struct ApiKeyInfo {
  std::string id;
  std::string name;
  std::vector<std::string> models;  // allowed model ids; "*" allows every model
  double requests_per_minute = 60;  // token bucket refill rate
  uint32_t burst = 10;              // bucket size
  int64_t created = 0;
  bool revoked = false;

  bool allows_model(std::string_view model) const;
};

struct StoredSignature {
  std::string id;
  std::string text;
  std::string signatures_json;  // [{"algorithm","public_key","signature"}, ...]
  int64_t created = 0;
};

class Store {
 public:
  static Result<std::unique_ptr<Store>> open(const std::filesystem::path& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Creates a key; returns the full key string (the only time it exists outside the caller).
  Result<std::string> add_key(const std::string& name, const std::vector<std::string>& models,
                              double requests_per_minute, uint32_t burst);
  Result<std::vector<ApiKeyInfo>> list_keys();
  Status revoke_key(const std::string& id);
  // kSecurity for an unknown, malformed, wrong or revoked key (one message for all: no oracle).
  Result<ApiKeyInfo> authenticate(std::string_view presented_key);
  size_t active_key_count();

  Status put_signature(const StoredSignature& sig);
  Result<StoredSignature> get_signature(const std::string& id);

 private:
  Store() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace veil::server
