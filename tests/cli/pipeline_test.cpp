// veil stage + veil serve --manifest: a two-stage pipeline of real processes on 127.0.0.1 (sim attestation),
// the same greedy text as single-node serving, a stage refused for its measurement, and kill -9 of a stage
// during a request.
#include <nlohmann/json.hpp>

#include <future>

#include "cli/cli_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

uint16_t port_of(const std::string& line) {
  size_t colon = line.rfind(':');
  return colon == std::string::npos ? 0 : static_cast<uint16_t>(std::atoi(line.c_str() + colon + 1));
}

class PipelineCliTest : public CliTest {
 protected:
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

  std::string manifest(const std::string& measurement, const std::vector<std::string>& endpoints) {
    json policy = {{"allowed_types", {"sim"}},
                   {"allow_simulated", true},
                   {"expected_measurements", {{"sim", {{"measurement", {measurement}}}}}}};
    json stages = json::array();
    const uint32_t bounds[] = {0, 2, 5};
    for (size_t i = 0; i < endpoints.size(); ++i) {
      stages.push_back({{"index", i},
                        {"layer_begin", bounds[i]},
                        {"layer_end", bounds[i + 1]},
                        {"weights_sha256", std::string(64, 'b')},
                        {"endpoint", endpoints[i]},
                        {"policy", policy}});
    }
    json m = {{"format", "veil-manifest/1"}, {"model_id", "stories260K"}, {"model_version", 1},
              {"sealed_model_sha256", std::string(64, 'a')}, {"n_layers", 5}, {"stages", stages}};
    return m.dump(2);
  }

  // Starts stage `i` listening on `listen`; returns its bound endpoint ("tcp:127.0.0.1:PORT") or "".
  std::string start_stage(int i, const std::string& listen, const std::string& manifest = "stages.json",
                          std::vector<std::string> model = {"-m", (kStories / "stories260K.gguf").string()}) {
    std::vector<std::string> args = {"stage", "--manifest", path(manifest).string(), "--index", std::to_string(i),
                                     "--listen", listen, "-t", "1", "--slots", "4"};
    args.insert(args.end(), model.begin(), model.end());
    stages_[i] = start(args);
    auto line = stages_[i]->wait_for_stdout_line("veil stage: stage " + std::to_string(i), 60s);
    if (!line) {
      ADD_FAILURE() << stages_[i]->finish(1s).describe();
      return "";
    }
    return line->substr(line->rfind(" on ") + 4);
  }

  HttpResponse complete(uint16_t port, int max_tokens) {
    return http_request(port, "POST", "/v1/completions",
                        R"({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": )" +
                            std::to_string(max_tokens) + R"(, "temperature": 0})");
  }

  std::unique_ptr<Process> stages_[3];
};

TEST_F(PipelineCliTest, TwoStageProcessesServeGreedyTextAndSurviveKillNine) {
  std::string meas = measurement();
  ASSERT_FALSE(meas.empty());
  write_text(path("stages.json"), manifest(meas, {"127.0.0.1:1", "127.0.0.1:2"}));
  std::string ep0 = start_stage(0, "tcp:127.0.0.1:0"), ep1 = start_stage(1, "tcp:127.0.0.1:0");
  ASSERT_FALSE(ep0.empty());
  ASSERT_FALSE(ep1.empty());
  write_text(path("front.json"), manifest(meas, {ep0, ep1}));

  // A front whose manifest expects another measurement refuses the stage: exit 3, the stage named.
  write_text(path("bad.json"), manifest(std::string(96, '0'), {ep0, ep1}));
  RunResult refused = veil({"serve", "--manifest", path("bad.json").string(), "-m",
                            (kStories / "stories260K.gguf").string(), "--insecure-http", "--no-auth", "--listen",
                            "127.0.0.1:0", "-t", "1"});
  expect_one_line_error(refused, 3, /*logs_before=*/true);
  EXPECT_NE(refused.err.find("pipeline stage 0"), std::string::npos) << refused.describe();

  auto front = start({"serve", "--manifest", path("front.json").string(), "-m", (kStories / "stories260K.gguf").string(),
                      "--model-id", "stories260K", "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0", "-t", "1",
                      "--stage-timeout", "5", "--grace", "1"});
  auto line = front->wait_for_stdout_line("veil serve: model ", 60s);
  ASSERT_TRUE(line.has_value()) << front->finish(1s).describe();
  uint16_t port = port_of(*line);

  HttpResponse ok = complete(port, 8);
  ASSERT_EQ(ok.status, 200) << ok.raw;
  json j = json::parse(ok.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ok.raw;
  // The same greedy story as single-node serving (tests/cli/serve_test.cpp).
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>().rfind(", there was a little girl", 0), 0u) << ok.body;

  // Stage 1 freezes, so the next request cannot finish without it; then it is killed with SIGKILL. The request
  // fails within the stage timeout, naming the stage, and nothing hangs.
  stages_[1]->signal(SIGSTOP);
  auto t0 = Clock::now();
  auto pending = std::async(std::launch::async, [&] { return complete(port, 64); });
  stages_[1]->signal(SIGKILL);
  HttpResponse failed = pending.get();
  EXPECT_LT(Clock::now() - t0, 10s);
  EXPECT_EQ(failed.status, 500) << failed.raw;
  EXPECT_NE(failed.body.find("pipeline stage 1"), std::string::npos) << failed.raw;
  RunResult killed = stages_[1]->finish(5s);
  EXPECT_EQ(killed.signal, SIGKILL);

  // The stage comes back on its endpoint: the next request reconnects and succeeds.
  ASSERT_EQ(start_stage(1, ep1), ep1);
  HttpResponse again = complete(port, 8);
  ASSERT_EQ(again.status, 200) << again.raw;
  json j2 = json::parse(again.body, nullptr, false);
  ASSERT_FALSE(j2.is_discarded()) << again.raw;
  EXPECT_EQ(j2["choices"][0]["text"], j["choices"][0]["text"]) << again.body;

  front->signal(SIGTERM);
  EXPECT_EQ(front->finish(30s).exit_code, 0);
  for (auto& s : stages_) {
    if (!s) continue;
    s->signal(SIGTERM);
    RunResult r = s->finish(30s);
    EXPECT_EQ(r.exit_code, 0) << r.describe();
  }
}

// Sealed weights: `veil manifest create` proposes three ranges with their hashes; each stage checks its range's
// hash and decrypts only its chunks (a middle stage holds neither embeddings nor head); front and stages attest
// each other, as the manifest's front_policy asks.
TEST_F(PipelineCliTest, ThreeSealedStagesServeTheSameGreedyText) {
  std::string meas = measurement();
  ASSERT_FALSE(meas.empty());
  expect_ok(veil({"seal", "--generate-key", path("model.key").string()}));
  expect_ok(veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("m.vsm").string(), "--model-id",
                  "stories260K", "--version", "3", "--key-file", path("model.key").string()}));
  json policy = {{"allowed_types", {"sim"}},
                 {"allow_simulated", true},
                 {"expected_measurements", {{"sim", {{"measurement", {meas}}}}}}};
  write_text(path("policy.json"), policy.dump());
  // Placeholder endpoints: the stages listen on ephemeral ports, the front's manifest names them.
  // The manifest carries the front's policy too: every stage accepts only an attested front, and the front,
  // reading the same manifest, presents its evidence without being told.
  expect_ok(veil({"manifest", "create", path("m.vsm").string(), "--stages", "3", "--endpoints",
                  "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--policy", path("policy.json").string(), "--front-policy",
                  path("policy.json").string(), "-o", path("sealed.json").string()}));
  json m = json::parse(read_text(path("sealed.json")), nullptr, false);
  ASSERT_FALSE(m.is_discarded());
  std::vector<std::string> sealed_model = {"-m", path("m.vsm").string(), "--insecure-local-key",
                                           path("model.key").string()};
  // A stage whose range does not hash to the manifest's value refuses to start (exit 3) before any key is read.
  json tampered = m;
  tampered["stages"][1]["weights_sha256"] = std::string(64, 'c');
  write_text(path("tampered.json"), tampered.dump());
  RunResult refused = veil({"stage", "--manifest", path("tampered.json").string(), "--index", "1", "-m",
                            path("m.vsm").string(), "--insecure-local-key", path("model.key").string()});
  expect_one_line_error(refused, 3, /*logs_before=*/true);
  EXPECT_NE(refused.err.find("weights_sha256"), std::string::npos) << refused.describe();
  ASSERT_TRUE(m.contains("front_policy")) << m.dump();
  // A second front policy on the command line is ambiguous: a usage error.
  std::vector<std::string> both = {"stage", "--manifest", path("sealed.json").string(), "--index", "0",
                                   "--front-policy", path("policy.json").string()};
  both.insert(both.end(), sealed_model.begin(), sealed_model.end());
  RunResult twice = veil(both);
  expect_one_line_error(twice, 2, /*logs_before=*/true);
  EXPECT_NE(twice.err.find("front_policy"), std::string::npos) << twice.describe();
  // Mutual attestation from the manifest: the stages accept only a front running the same (measured) executable.
  for (int i = 0; i < 3; ++i) {
    std::string ep = start_stage(i, "tcp:127.0.0.1:0", "sealed.json", sealed_model);
    ASSERT_FALSE(ep.empty());
    m["stages"][i]["endpoint"] = ep;
  }
  write_text(path("front.json"), m.dump(2));
  std::vector<std::string> args = {"serve", "--manifest", path("front.json").string(), "--insecure-http", "--no-auth",
                                   "--listen", "127.0.0.1:0", "-t", "1", "--grace", "1"};
  args.insert(args.end(), sealed_model.begin(), sealed_model.end());
  auto front = start(args);
  auto line = front->wait_for_stdout_line("veil serve: model stories260K", 60s);  // the manifest's model id
  ASSERT_TRUE(line.has_value()) << front->finish(1s).describe();
  HttpResponse ok = complete(port_of(*line), 8);
  ASSERT_EQ(ok.status, 200) << ok.raw;
  json j = json::parse(ok.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ok.raw;
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>().rfind(", there was a little girl", 0), 0u) << ok.body;
  front->signal(SIGTERM);
  EXPECT_EQ(front->finish(30s).exit_code, 0);
}

}  // namespace
}  // namespace veil::clitest
