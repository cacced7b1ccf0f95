// veil stage + veil serve --manifest: a two-stage pipeline of real processes on 127.0.0.1 (sim attestation),
// the same greedy text as single-node serving, a stage refused for its measurement, and kill -9 of a stage
// during a request.
#include <future>

#include "cli/pipeline_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

TEST_F(PipelineCliTest, TwoStageProcessesServeGreedyTextAndSurviveKillNine) {
  std::string meas = measurement();
  ASSERT_FALSE(meas.empty());
  // The last stage first: stage 0 reads stage 1's endpoint (where it opens its data channel) from the manifest.
  write_text(path("stages.json"), manifest(meas, {"127.0.0.1:1", "127.0.0.1:2"}));
  std::string ep1 = start_stage(1, "tcp:127.0.0.1:0");
  ASSERT_FALSE(ep1.empty());
  write_text(path("stages.json"), manifest(meas, {"127.0.0.1:1", ep1}));
  std::string ep0 = start_stage(0, "tcp:127.0.0.1:0");
  ASSERT_FALSE(ep0.empty());
  write_text(path("front.json"), manifest(meas, {ep0, ep1}));

  // A front whose manifest expects another measurement refuses the stage: exit 3, the stage named.
  write_text(path("bad.json"), manifest(std::string(96, '0'), {ep0, ep1}));
  RunResult refused = veil({"serve", "--manifest", path("bad.json").string(), "-m",
                            (kStories / "stories260K.gguf").string(), "--insecure-http", "--no-auth", "--listen",
                            "127.0.0.1:0", "-t", "1"});
  expect_one_line_error(refused, 3, /*logs_before=*/true);
  EXPECT_NE(refused.err.find("pipeline stage 1"), std::string::npos) << refused.describe();  // the last is reached first

  Front started = start_front("front.json");
  auto& front = started.process;
  const uint16_t port = started.port;
  ASSERT_NE(port, 0);

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

// `veil relay`: the front and stage 0 reach stage 1 only through a host relay process; malformed addresses are usage errors,
// an address in use a runtime failure, each on one line.
TEST_F(PipelineCliTest, StageBehindVeilRelayServesTheSameText) {
  std::string meas = measurement();
  ASSERT_FALSE(meas.empty());
  write_text(path("stages.json"), manifest(meas, {"127.0.0.1:1", "127.0.0.1:2"}));
  std::string ep1 = start_stage(1, "tcp:127.0.0.1:0");
  ASSERT_FALSE(ep1.empty());
  auto relay = start({"relay", "--listen", "127.0.0.1:0", "--to", ep1, "--connect-timeout", "2"});
  auto relay_line = relay->wait_for_stdout_line("veil relay: forwarding ", 20s);
  ASSERT_TRUE(relay_line.has_value()) << relay->finish(1s).describe();
  std::string relay_ep = relay_line->substr(std::string("veil relay: forwarding ").size());
  relay_ep = relay_ep.substr(0, relay_ep.find(' '));
  EXPECT_EQ(*relay_line, "veil relay: forwarding " + relay_ep + " to " + ep1);

  expect_one_line_error(veil({"relay", "--listen", "nonsense", "--to", ep1}), 2);
  expect_one_line_error(veil({"relay", "--listen", "127.0.0.1:0"}), 2);
  RunResult in_use = veil({"relay", "--listen", relay_ep.substr(4), "--to", ep1});
  expect_one_line_error(in_use, 1);
  EXPECT_NE(in_use.err.find("relay: listening on"), std::string::npos) << in_use.describe();

  // Stage 0 reaches stage 1 through the relay too: its data channel and the front's control channel both cross it.
  write_text(path("stages.json"), manifest(meas, {"127.0.0.1:1", relay_ep}));
  std::string ep0 = start_stage(0, "tcp:127.0.0.1:0");
  ASSERT_FALSE(ep0.empty());
  write_text(path("front.json"), manifest(meas, {ep0, relay_ep}));
  Front started = start_front("front.json");
  auto& front = started.process;
  const uint16_t port = started.port;
  ASSERT_NE(port, 0);
  std::string text = completion_text(complete(port, 8));
  EXPECT_EQ(text.rfind(", there was a little girl", 0), 0u) << text;

  front->signal(SIGTERM);
  EXPECT_EQ(front->finish(30s).exit_code, 0);
  relay->signal(SIGTERM);
  RunResult r = relay->finish(10s);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
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
  // The last first, each started with a manifest naming its successor's real endpoint; the data channels between
  // stages are mutual too.
  for (int i = 2; i >= 0; --i) {
    write_text(path("sealed.json"), m.dump(2));
    std::string ep = start_stage(i, "tcp:127.0.0.1:0", "sealed.json", sealed_model);
    ASSERT_FALSE(ep.empty());
    m["stages"][i]["endpoint"] = ep;
  }
  write_text(path("front.json"), m.dump(2));
  // Two lanes for three stages (--lanes: stages sharing fewer cores than there are stages).
  std::vector<std::string> args = {"serve", "--manifest", path("front.json").string(), "--insecure-http", "--no-auth",
                                   "--listen", "127.0.0.1:0", "-t", "1", "--grace", "1", "--lanes", "2"};
  args.insert(args.end(), sealed_model.begin(), sealed_model.end());
  auto front = start(args);
  auto line = front->wait_for_stdout_line("veil serve: model stories260K", 60s);  // the manifest's model id
  ASSERT_TRUE(line.has_value()) << front->finish(1s).describe();
  HttpResponse ok = complete(port_of(*line), 8);
  ASSERT_EQ(ok.status, 200) << ok.raw;
  json j = json::parse(ok.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ok.raw;
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>().rfind(", there was a little girl", 0), 0u) << ok.body;
  HttpResponse metrics = http_request(port_of(*line), "GET", "/metrics", "");
  EXPECT_NE(metrics.body.find("veil_forward_lanes 2\n"), std::string::npos) << metrics.raw;
  front->signal(SIGTERM);
  EXPECT_EQ(front->finish(30s).exit_code, 0);
}

}  // namespace
}  // namespace veil::clitest
