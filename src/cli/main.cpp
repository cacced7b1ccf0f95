// veil: the command-line entry point. Commands live in cmd_*.cpp (see command.h).
#include <algorithm>
#include <cstdio>
#include <exception>

#include <spdlog/spdlog.h>

#include "cli/command.h"

namespace {

void print_error(const std::string& message) { std::fprintf(stderr, "error: %s\n", message.c_str()); }

// "veil kbs audit": the deepest subcommand the command line selected (even when parsing failed after it), so a
// usage error points at that command's --help.
std::string command_path(const CLI::App& app) {
  std::string path = app.get_name();
  const CLI::App* cur = &app;
  for (;;) {
    auto subs = cur->get_subcommands();
    if (subs.empty()) return path;
    cur = subs.front();
    path += " " + cur->get_name();
  }
}

int run(int argc, char** argv) {
  using namespace veil;
  CLI::App app{"Veil: confidential LLM inference inside trusted execution environments.\n"
               "Prompts, outputs and weights stay inside an attested TEE; clients verify before they trust.",
               "veil"};
  app.require_subcommand(0, 1);
  std::string log_level = "warn";
  std::string log_format = "text";
  bool show_version = false;
  app.add_flag("--version", show_version, "Print version, git commit, build type and CPU features, then exit");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  app.add_option("--log-format", log_format, "text or json")->capture_default_str();
  app.footer("Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 verification or security refusal.\n"
             "Run 'veil <command> --help' for a command's options.");

  cli::Runner runner;
  auto& registry = cli::command_registry();
  std::stable_sort(registry.begin(), registry.end(),
                   [](const cli::CommandEntry& a, const cli::CommandEntry& b) { return a.order < b.order; });
  for (const auto& entry : registry) entry.setup(app, runner);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(std::string(e.what()) + " (run '" + command_path(app) + " --help')");
    return cli::kExitUsage;
  }
  if (show_version) {
    std::fputs(version_string().c_str(), stdout);
    return cli::kExitOk;
  }
  auto fmt = parse_log_format(log_format);
  if (!fmt.ok()) {
    print_error(fmt.error().message());
    return cli::kExitUsage;
  }
  if (Status st = init_logging(log_level, *fmt); !st.ok()) {
    print_error(st.error().message());
    return cli::kExitUsage;
  }
  if (!runner.pending()) {
    std::fputs(app.help().c_str(), stdout);
    print_error("no command given (run 'veil <command>'; 'veil --help' lists them)");
    return cli::kExitUsage;
  }
  Status st = runner.pending()();
  if (!st.ok()) {
    print_error(st.error().message());
    return cli::exit_code_for(st.error());
  }
  return cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
    return veil::cli::kExitFailure;
  } catch (...) {
    print_error("internal error: unknown exception");
    return veil::cli::kExitFailure;
  }
}
