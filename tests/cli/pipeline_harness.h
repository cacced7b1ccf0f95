// Shared by the pipeline CLI tests (pipeline_test.cpp, netns_test.cpp): the sim measurement of the veil executable,
// manifests for stories260K, starting `veil stage` processes and asking a front for a greedy completion.
#pragma once

#include <nlohmann/json.hpp>

#include "cli/cli_harness.h"

namespace veil::clitest {

class PipelineCliTest : public CliTest {
 protected:
  using json = nlohmann::json;

  // The sim measurement of the veil executable (every stage runs it), learned from one quote.
  std::string measurement() {
    RunResult q = veil({"attest", "quote", "--provider", "sim", "--create-key", "--report-data", "00", "--out",
                        path("ev.json").string()});
    expect_ok(q);
    RunResult show = veil({"attest", "show", path("ev.json").string(), "--json"});
    expect_ok(show);
    json j = json::parse(show.out, nullptr, false);
    if (j.is_discarded() || !j.contains("measurement")) {
      ADD_FAILURE() << show.describe();
      return "";
    }
    return j["measurement"].get<std::string>();
  }

  // A manifest for stories260K (5 layers) over 2 or 3 stages: layers [0, 2), [2, 4 or 5), [4, 5).
  std::string manifest(const std::string& measurement, const std::vector<std::string>& endpoints) {
    json policy = {{"allowed_types", {"sim"}},
                   {"allow_simulated", true},
                   {"expected_measurements", {{"sim", {{"measurement", {measurement}}}}}}};
    json stages = json::array();
    for (size_t i = 0; i < endpoints.size(); ++i) {
      stages.push_back({{"index", i},
                        {"layer_begin", 2 * i},
                        {"layer_end", i + 1 == endpoints.size() ? 5 : 2 * i + 2},
                        {"weights_sha256", std::string(64, 'b')},
                        {"endpoint", endpoints[i]},
                        {"policy", policy}});
    }
    json m = {{"format", "veil-manifest/1"}, {"model_id", "stories260K"}, {"model_version", 1},
              {"sealed_model_sha256", std::string(64, 'a')}, {"n_layers", 5}, {"stages", stages}};
    return m.dump(2);
  }

  // Starts stage `i` listening on `listen` (behind `launcher` when given); returns its bound endpoint
  // ("tcp:HOST:PORT") or "".
  std::string start_stage(int i, const std::string& listen, const std::string& manifest = "stages.json",
                          std::vector<std::string> model = {"-m", (kStories / "stories260K.gguf").string()},
                          const std::vector<std::string>& launcher = {}) {
    std::vector<std::string> args = {"stage", "--manifest", path(manifest).string(), "--index", std::to_string(i),
                                     "--listen", listen, "-t", "1", "--slots", "4"};
    args.insert(args.end(), model.begin(), model.end());
    stages_[i] = start(args, {}, launcher);
    auto line = stages_[i]->wait_for_stdout_line("veil stage: stage " + std::to_string(i), 60s);
    if (!line) {
      ADD_FAILURE() << stages_[i]->finish(1s).describe();
      return "";
    }
    return line->substr(line->rfind(" on ") + 4);
  }

  // Starts the front of a plain stories260K pipeline (`veil serve --manifest`, plain HTTP, no API keys, 5 s stage
  // timeout), behind `launcher` when given; `port` is the one it announced, 0 (with a test failure) if it did not.
  // Callers copy the fields out rather than use a structured binding: clang 14 cannot capture one in a lambda.
  struct Front {
    std::unique_ptr<Process> process;
    uint16_t port = 0;
  };
  Front start_front(const std::string& manifest_file, const std::vector<std::string>& launcher = {}) {
    Front f;
    f.process = start({"serve", "--manifest", path(manifest_file).string(), "-m", (kStories / "stories260K.gguf").string(),
                       "--model-id", "stories260K", "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0", "-t", "1",
                       "--stage-timeout", "5", "--grace", "1"},
                      {}, launcher);
    auto line = f.process->wait_for_stdout_line("veil serve: model ", 60s);
    if (!line) {
      ADD_FAILURE() << f.process->finish(1s).describe();
    } else {
      f.port = port_of(*line);
    }
    return f;
  }

  static HttpResponse complete(uint16_t port, int max_tokens) {
    return http_request(port, "POST", "/v1/completions",
                        R"({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": )" +
                            std::to_string(max_tokens) + R"(, "temperature": 0})");
  }

  // The text of a completion response, or "" (with a test failure) when it is not one.
  static std::string completion_text(const HttpResponse& r) {
    json j = json::parse(r.body, nullptr, false);
    if (r.status != 200 || j.is_discarded() || !j.contains("choices")) {
      ADD_FAILURE() << "not a completion: " << r.raw;
      return "";
    }
    return j["choices"][0]["text"].get<std::string>();
  }

  std::unique_ptr<Process> stages_[3];
};

}  // namespace veil::clitest
