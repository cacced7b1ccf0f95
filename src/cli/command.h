// How a `veil` subcommand is declared. Each cmd_<family>.cpp file defines a setup function and
// registers it with VEIL_COMMAND(fn, order). The setup function adds a CLI11 subcommand and binds an
// Action with Runner::on; main() parses, initialises logging, runs the chosen action, and maps its
// Status to the exit code (docs/cli.md):
//   0 ok, 1 runtime failure, 2 usage error, 3 verification or security refusal.
// Actions print results to stdout; errors are returned, never printed by the action itself.
#pragma once

#include <CLI/CLI.hpp>
#include <signal.h>

#include <functional>
#include <string>
#include <vector>

#include "core/core.h"
#include "engine/engine.h"

namespace veil::cli {

using Action = std::function<Status()>;

class Runner {
 public:
  // Run `action` if `sub` is the subcommand selected on the command line.
  void on(CLI::App* sub, Action action);
  Action& pending() { return pending_; }

 private:
  Action pending_;
};

using SetupFn = void (*)(CLI::App& app, Runner& runner);

struct CommandEntry {
  int order;  // position in `veil --help`
  SetupFn setup;
};

std::vector<CommandEntry>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(int order, SetupFn fn) { command_registry().push_back({order, fn}); }
};

// A parent command shared by several files (e.g. "model", "attest"): created on first use.
CLI::App* subcommand_group(CLI::App& app, const std::string& name, const std::string& description);

// -m/--model with the shared resolution rules (core/model_path.h). Resolve in the action with
// resolve_model_path(value).
CLI::Option* add_model_option(CLI::App* sub, std::string& value);
// --kv-type f32|f16: the KV cache's element type (engine::KvType).
CLI::Option* add_kv_type_option(CLI::App* sub, engine::KvType& value);

// For the long-running commands (serve, stage, relay, kbs serve): blocks SIGINT and SIGTERM in this thread, so
// every thread started afterwards inherits the mask and only wait() receives them, and ignores SIGPIPE (a peer that
// went away fails the write instead of killing the process). Construct before starting any thread.
class StopSignals {
 public:
  StopSignals();
  // Blocks until SIGINT or SIGTERM arrives; returns its number.
  int wait();

 private:
  sigset_t set_;
};

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitRefused = 3;
int exit_code_for(const Error& error);

}  // namespace veil::cli

#define VEIL_COMMAND(fn, order) \
  static ::veil::cli::CommandRegistrar VEIL_CONCAT_(veil_command_registrar_, __LINE__)(order, fn)
