// `veil` as a new user first meets it: --help at every level, --version, wrong commands and options.
#include <set>

#include "cli/cli_harness.h"
#include "core/cpu.h"
#include "core/version.h"

namespace veil::clitest {
namespace {

// The names listed under "Subcommands:" in a CLI11 help text.
std::vector<std::string> subcommands_in_help(const std::string& help) {
  std::vector<std::string> names;
  bool in = false;
  for (const std::string& line : split_lines(help)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in = true;
      continue;
    }
    if (!in) continue;
    if (line.empty() || line[0] != ' ') break;
    std::istringstream words(line);
    std::string name;
    words >> name;
    if (!name.empty()) names.push_back(name);
  }
  return names;
}

using BasicsTest = CliTest;

TEST_F(BasicsTest, TopLevelHelpListsEveryCommandAndTheExitCodes) {
  RunResult r = veil({"--help"});
  expect_ok(r);
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("Usage: veil"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--log-level"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 verification or security refusal"),
            std::string::npos)
      << r.out;
  std::vector<std::string> listed = subcommands_in_help(r.out);
  std::set<std::string> got(listed.begin(), listed.end());
  EXPECT_EQ(got.size(), listed.size()) << "a command is listed twice:\n" << r.out;
  // The commands docs/cli.md and the component docs describe.
  for (const char* want : {"generate", "tokenize", "model", "convert", "quantize", "synth", "bench", "attest", "seal",
                           "manifest", "serve", "keys", "kbs"}) {
    EXPECT_TRUE(got.count(want)) << "'veil --help' does not list '" << want << "':\n" << r.out;
  }
}

// Every command and sub-command answers --help with exit 0 and its options; groups list their sub-commands.
TEST_F(BasicsTest, EveryCommandHasHelpWithOptions) {
  RunResult top = veil({"--help"});
  expect_ok(top);
  std::vector<std::vector<std::string>> todo;
  for (const auto& name : subcommands_in_help(top.out)) todo.push_back({name});
  ASSERT_GE(todo.size(), 5u) << top.out;
  size_t checked = 0;
  while (!todo.empty()) {
    std::vector<std::string> cmd = todo.back();
    todo.pop_back();
    std::vector<std::string> args = cmd;
    args.push_back("--help");
    RunResult r = veil(args);
    SCOPED_TRACE(r.cmdline);
    expect_ok(r);
    EXPECT_EQ(r.err, "") << r.describe();
    EXPECT_NE(r.out.find("Usage: veil " + cmd.front()), std::string::npos) << r.describe();
    EXPECT_NE(r.out.find("Options:"), std::string::npos) << r.describe();
    EXPECT_NE(r.out.find("-h,--help"), std::string::npos) << r.describe();
    std::vector<std::string> subs = subcommands_in_help(r.out);
    if (subs.empty()) {
      // A leaf command: it takes something besides --help (an option or a positional argument).
      size_t options = 0;
      for (const auto& line : split_lines(r.out)) {
        if ((line.rfind("  -", 0) == 0 || line.rfind("  ", 0) == 0) && line.find("--help") == std::string::npos) {
          ++options;
        }
      }
      EXPECT_GE(options, 1u) << r.describe();
    }
    for (const auto& s : subs) {
      std::vector<std::string> child = cmd;
      child.push_back(s);
      todo.push_back(child);
    }
    ++checked;
  }
  EXPECT_GE(checked, 20u);
}

TEST_F(BasicsTest, VersionPrintsVersionCommitBuildTypeAndCpuFeatures) {
  RunResult r = veil({"--version"});
  expect_ok(r);
  EXPECT_EQ(r.err, "");
  std::vector<std::string> lines = split_lines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  EXPECT_EQ(lines[0], std::string("veil ") + veil::version());
  EXPECT_EQ(lines[0].rfind("veil ", 0), 0u);
  EXPECT_GT(lines[0].size(), 5u);
  ASSERT_EQ(lines[1].rfind("commit: ", 0), 0u) << r.out;
  std::string commit = lines[1].substr(8);
  EXPECT_TRUE(commit == "unknown" ||
              (commit.size() >= 7 && commit.find_first_not_of("0123456789abcdef-dirty") == std::string::npos))
      << commit;
  ASSERT_EQ(lines[2].rfind("build: ", 0), 0u) << r.out;
  std::set<std::string> types{"Release", "Debug", "RelWithDebInfo", "MinSizeRel", "Asan", "asan"};
  EXPECT_TRUE(types.count(lines[2].substr(7))) << lines[2];
  EXPECT_EQ(lines[3], "cpu: " + veil::cpu_features_string());
  // The same build as this test binary: the whole text matches the library's.
  EXPECT_EQ(r.out, veil::version_string());
}

TEST_F(BasicsTest, UnknownCommandIsAUsageError) {
  RunResult r = veil({"frobnicate"});
  expect_one_line_error(r, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(BasicsTest, UnknownOptionIsAUsageError) {
  RunResult r = veil({"--frobnicate"});
  expect_one_line_error(r, 2);
  EXPECT_NE(r.err.find("--frobnicate"), std::string::npos) << r.err;

  RunResult g = veil({"generate", "--frobnicate"});
  expect_one_line_error(g, 2);
  EXPECT_NE(g.err.find("--frobnicate"), std::string::npos) << g.err;

  RunResult t = veil({"tokenize", "--ids", "hi", "--no-such-flag"});
  expect_one_line_error(t, 2);
}

TEST_F(BasicsTest, InvalidOrMissingValuesAreUsageErrors) {
  expect_one_line_error(veil({"generate", "-n", "many"}), 2);
  expect_one_line_error(veil({"generate", "-n"}), 2);
  expect_one_line_error(veil({"generate", "-n", "-5"}), 2);
  expect_one_line_error(veil({"tokenize"}), 2);  // TEXT is required
  RunResult lvl = veil({"--log-level", "loud", "tokenize", "--ids", "x"});
  expect_one_line_error(lvl, 2);
  EXPECT_NE(lvl.err.find("loud"), std::string::npos) << lvl.err;
  expect_one_line_error(veil({"--log-format", "xml", "tokenize", "--ids", "x"}), 2);
  RunResult q = veil({"quantize", path("in.gguf").string(), path("out.gguf").string(), "Q9_9"});
  expect_one_line_error(q, 2);
  EXPECT_NE(q.err.find("Q9_9"), std::string::npos) << q.err;
}

TEST_F(BasicsTest, CommandGroupWithoutSubcommandIsAUsageError) {
  for (const char* group : {"attest", "kbs", "keys", "model", "manifest"}) {
    RunResult r = veil({group});
    SCOPED_TRACE(group);
    expect_one_line_error(r, 2);
    // The hint points at the group's own help, which lists its subcommands.
    EXPECT_NE(r.err.find("'veil " + std::string(group) + " --help'"), std::string::npos) << r.err;
  }
  RunResult nested = veil({"kbs", "audit"});
  expect_one_line_error(nested, 2);
  EXPECT_NE(nested.err.find("'veil kbs audit --help'"), std::string::npos) << nested.err;
  RunResult top = veil({"--no-such-flag"});
  expect_one_line_error(top, 2);
  EXPECT_NE(top.err.find("'veil --help'"), std::string::npos) << top.err;
}

TEST_F(BasicsTest, NoArgumentsPrintsUsageAndAnError) {
  RunResult r = veil(std::vector<std::string>{});
  expect_one_line_error(r, 2);
  EXPECT_NE(r.err.find("no command"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("serve"), std::string::npos) << "the usage lists the commands\n" << r.out;
}

TEST_F(BasicsTest, KbsMissingSimPlatformKeyNamesItsOwnFlag) {
  RunResult r = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key-from-tee", "--tee", "sim",
                      "--sim-platform-key", path("absent.key").string()});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("--sim-create-key"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("with --create-key"), std::string::npos) << r.err;
}

TEST_F(BasicsTest, LogLevelsAreAccepted) {
  RunResult r = veil({"--log-level", "off", "--log-format", "json", "tokenize", "--ids", "Once upon a time"});
  expect_ok(r);
  EXPECT_EQ(r.out, "1 403 407 261 378\n");
  EXPECT_EQ(r.err, "");
}

}  // namespace
}  // namespace veil::clitest
