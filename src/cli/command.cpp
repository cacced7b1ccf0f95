#include "cli/command.h"

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

int exit_code_for(const Error& error) {
  switch (error.code()) {
    case ErrorCode::kUsage: return kExitUsage;
    case ErrorCode::kSecurity: return kExitRefused;
    default: return kExitFailure;
  }
}

}  // namespace veil::cli
