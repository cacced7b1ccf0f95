// veil keys add|list|revoke: API keys of `veil serve` (stored hashed in the server database).
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "server/store.h"

namespace veil::cli {
namespace {

struct KeysArgs {
  std::string db;
  std::string name = "default";
  std::vector<std::string> models;
  double rpm = 60;
  uint32_t burst = 10;
  std::string id;
};

std::filesystem::path db_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* d = std::getenv("VEIL_DATA_DIR"); d && *d) return std::filesystem::path(d) / "server.db";
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home && *home ? home : ".") / ".veil" / "server.db";
}

Status run_add(const KeysArgs& a) {
  if (a.models.empty()) return make_error(ErrorCode::kUsage, "keys add: --models is required (model ids, or '*')");
  VEIL_ASSIGN_OR_RETURN(auto store, server::Store::open(db_path(a.db)));
  VEIL_ASSIGN_OR_RETURN(std::string key, store->add_key(a.name, a.models, a.rpm, a.burst));
  // Printed once; only its hash is stored.
  std::printf("%s\n", key.c_str());
  std::fflush(stdout);
  secure_zero(key.data(), key.size());
  return ok_status();
}

Status run_list(const KeysArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto store, server::Store::open(db_path(a.db)));
  VEIL_ASSIGN_OR_RETURN(auto keys, store->list_keys());
  std::printf("%-16s  %-16s  %-8s  %-9s  %-6s  %-20s  %s\n", "ID", "NAME", "STATE", "REQ/MIN", "BURST", "CREATED",
              "MODELS");
  for (const auto& k : keys) {
    std::string models;
    for (const auto& m : k.models) models += (models.empty() ? "" : ",") + m;
    char created[32] = "?";
    std::time_t t = static_cast<std::time_t>(k.created);
    std::tm tm{};
    if (gmtime_r(&t, &tm)) std::strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    std::printf("%-16s  %-16s  %-8s  %-9g  %-6u  %-20s  %s\n", k.id.c_str(), k.name.c_str(),
                k.revoked ? "revoked" : "active", k.requests_per_minute, k.burst, created, models.c_str());
  }
  return ok_status();
}

Status run_revoke(const KeysArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto store, server::Store::open(db_path(a.db)));
  VEIL_TRY(store->revoke_key(a.id));
  std::printf("revoked %s\n", a.id.c_str());
  return ok_status();
}

void setup_keys(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<KeysArgs>();
  CLI::App* keys = app.add_subcommand("keys", "Manage the API keys of 'veil serve'");
  keys->require_subcommand(1);
  auto db_opt = [&](CLI::App* sub) {
    sub->add_option("--db", a->db, "Server database (default: $VEIL_DATA_DIR/server.db or ~/.veil/server.db)");
  };
  CLI::App* add = keys->add_subcommand("add", "Create a key and print it (once; only its hash is kept)");
  db_opt(add);
  add->add_option("--name", a->name, "A label for the key")->capture_default_str();
  add->add_option("--models", a->models, "Model ids the key may use ('*' for all)")->delimiter(',')->required();
  add->add_option("--rpm", a->rpm, "Requests per minute (token bucket refill)")->capture_default_str();
  add->add_option("--burst", a->burst, "Requests allowed at once (bucket size)")->capture_default_str();
  runner.on(add, [a]() { return run_add(*a); });
  CLI::App* list = keys->add_subcommand("list", "List keys (ids, limits, state; never the keys)");
  db_opt(list);
  runner.on(list, [a]() { return run_list(*a); });
  CLI::App* revoke = keys->add_subcommand("revoke", "Revoke a key by id");
  db_opt(revoke);
  revoke->add_option("id", a->id, "Key id (from 'veil keys list')")->required();
  runner.on(revoke, [a]() { return run_revoke(*a); });
}

VEIL_COMMAND(setup_keys, 61);

}  // namespace
}  // namespace veil::cli
