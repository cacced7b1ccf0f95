#include "cli/command.h"

#include <pthread.h>

#include <csignal>

namespace veil::cli {

void Runner::on(CLI::App* sub, Action action) {
  sub->callback([this, action = std::move(action)]() { pending_ = action; });
}

std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> registry;
  return registry;
}

CLI::App* subcommand_group(CLI::App& app, const std::string& name, const std::string& description) {
  for (CLI::App* sub : app.get_subcommands({})) {
    if (sub->get_name() == name) return sub;
  }
  CLI::App* sub = app.add_subcommand(name, description);
  sub->require_subcommand(1);
  return sub;
}

CLI::Option* add_model_option(CLI::App* sub, std::string& value) {
  return sub->add_option("-m,--model", value,
                         "Model file (.gguf or sealed .vsm). Default: $VEIL_MODEL, then "
                         "../shared/models/stories260K/stories260K.gguf beside the repository, then "
                         "~/.cache/veil/models/");
}

CLI::Option* add_kv_type_option(CLI::App* sub, engine::KvType& value) {
  CLI::Validator kv_type(
      [](std::string& in) -> std::string {
        auto t = engine::parse_kv_type(in);
        if (!t.ok()) return t.error().message();
        in = std::to_string(static_cast<int>(*t));  // the enum's value, which CLI11 then stores
        return {};
      },
      "f32|f16", "KV type");
  return sub->add_option("--kv-type", value, "KV cache element type: f32 (exact) or f16 (half the memory and attention traffic)")
      ->transform(kv_type)
      ->default_str("f32");
}

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int StopSignals::wait() {
  int sig = 0;
  sigwait(&set_, &sig);
  return sig;
}

int exit_code_for(const Error& error) {
  switch (error.code()) {
    case ErrorCode::kUsage: return kExitUsage;
    case ErrorCode::kSecurity: return kExitRefused;
    default: return kExitFailure;
  }
}

}  // namespace veil::cli
