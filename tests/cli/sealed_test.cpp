// veil seal, manifest create, kbs and serve of a sealed model: the whole key-release flow on one machine with
// the simulated TEE, and a tampered sealed model refused with exit 3.
#include <nlohmann/json.hpp>

#include "cli/cli_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

void flip_byte(const fs::path& p, uint64_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

class SealedTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    write_text(path("policy.json"), R"({"allowed_types": ["sim"], "allow_simulated": true})");
  }

  // A model key and stories260K sealed with it (model id stories260K, version 1).
  void seal() {
    RunResult k = veil({"seal", "--generate-key", path("model.key").string()});
    expect_ok(k);
    EXPECT_NE(k.out.find("key id "), std::string::npos) << k.out;
    auto perms = fs::status(path("model.key")).permissions();
    EXPECT_EQ(perms & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
    RunResult s = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("m.vsm").string(), "--model-id",
                        "stories260K", "--version", "1", "--key-file", path("model.key").string()});
    expect_ok(s);
    EXPECT_NE(s.out.find("format 2, model stories260K version 1"), std::string::npos) << s.out;
    ASSERT_TRUE(fs::exists(path("m.vsm")));
  }

  // The add-key command for the sealed model's key, with its layer count (5) recorded.
  std::vector<std::string> add_key_args() {
    return {"kbs", "add-key", "--db", path("kbs.db").string(), "--master-key", path("master.key").string(),
            "--model-id", "stories260K", "--version", "1", "--policy", path("policy.json").string(),
            "--key-file", path("model.key").string(), "--sealed-model", path("m.vsm").string()};
  }

  // The sim measurement of `veil` started with --sim-config `config` ("": none) on the shared simulated machine
  // (its platform key created if absent), learned from one quote.
  std::string sim_measurement(const std::string& config) {
    std::vector<std::string> quote = {"attest", "quote", "--provider", "sim", "--create-key", "--platform-key",
                                      path("platform.key").string(), "--report-data", "00", "--out",
                                      path("ev.json").string()};
    if (!config.empty()) quote.insert(quote.end(), {"--config", path(config).string()});
    expect_ok(veil(quote));
    RunResult show = veil({"attest", "show", path("ev.json").string(), "--json"});
    expect_ok(show);
    json j = json::parse(show.out, nullptr, false);
    if (j.is_discarded() || !j.contains("measurement")) ADD_FAILURE() << show.describe();
    return j.is_discarded() ? "" : j.value("measurement", "");
  }

  // A broker holding the sealed model's key (its layer count, 5, recorded; `add_key_extra` appended to add-key, e.g.
  // a manifest) on one simulated machine whose platform key every process shares; returns the broker's address
  // ("" with a test failure).
  std::string start_broker(const std::vector<std::string>& add_key_extra = {}) {
    expect_ok(veil({"kbs", "gen-master-key", path("master.key").string()}));
    std::vector<std::string> add = add_key_args();
    add.insert(add.end(), add_key_extra.begin(), add_key_extra.end());
    expect_ok(veil(add));
    sim_measurement("");
    kbs_ = start({"kbs", "serve", "--db", path("kbs.db").string(), "--master-key", path("master.key").string(),
                  "--listen", "tcp:127.0.0.1:0", "--tee", "sim", "--sim-platform-key", path("platform.key").string()});
    auto listening = kbs_->wait_for_stdout_line("listening on ", 30s);
    if (!listening) {
      ADD_FAILURE() << kbs_->finish(1s).describe();
      return "";
    }
    std::string address = listening->substr(listening->find("listening on ") + 13);
    EXPECT_NE(port_of(address), 0) << *listening;
    return address;
  }

  void stop_broker() {
    kbs_->signal(SIGTERM);
    RunResult k = kbs_->finish(30s);
    EXPECT_EQ(k.exit_code, 0) << k.describe();
  }

  // The broker's audit events, oldest first.
  std::vector<json> audit_events() {
    RunResult audit = veil({"kbs", "audit", "show", "--db", path("kbs.db").string(), "--master-key",
                            path("master.key").string()});
    expect_ok(audit);
    std::vector<json> events;
    for (const std::string& line : split_lines(audit.out)) {
      events.push_back(json::parse(line.substr(line.find('\t') + 1), nullptr, false));
      EXPECT_FALSE(events.back().is_discarded()) << line;
    }
    return events;
  }

  // A stage of `manifest_file` with its range's keys from the broker at `kbs` (with `sim_config`, its measurement
  // folds in that file).
  std::vector<std::string> stage_args(int index, const std::string& model, const std::string& manifest_file,
                                      const std::string& kbs, const std::string& sim_config = "") {
    std::vector<std::string> args = {"stage", "--manifest", path(manifest_file).string(), "--index",
                                     std::to_string(index), "-m", path(model).string(), "--kbs", kbs, "--policy",
                                     path("policy.json").string(), "--tee", "sim", "--sim-platform-key",
                                     path("platform.key").string(), "--listen", "tcp:127.0.0.1:0", "-t", "1",
                                     "--slots", "1"};
    if (!sim_config.empty()) args.insert(args.end(), {"--sim-config", path(sim_config).string()});
    return args;
  }

  std::unique_ptr<Process> kbs_;
};

TEST_F(SealedTest, SealProducesAnEncryptedFile) {
  seal();
  std::string sealed = read_text(path("m.vsm"));
  EXPECT_EQ(sealed.substr(0, 8), "VEILSMDL");
  EXPECT_GT(sealed.size(), fs::file_size(kStories / "stories260K.gguf"));
  // The plaintext's GGUF magic and vocabulary strings are not readable in it.
  EXPECT_EQ(sealed.find("GGUF"), std::string::npos);
  EXPECT_EQ(sealed.find("tokenizer.ggml.tokens"), std::string::npos);
  // --generate-key never overwrites an existing key file.
  RunResult again = veil({"seal", "--generate-key", path("model.key").string()});
  expect_one_line_error(again, 1);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
}

TEST_F(SealedTest, SealUsageErrors) {
  RunResult no_key = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("x.vsm").string(), "--model-id",
                           "stories260K", "--version", "1"});
  expect_one_line_error(no_key, 2);
  EXPECT_NE(no_key.err.find("--key-file"), std::string::npos) << no_key.err;
  RunResult no_version = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("x.vsm").string(),
                               "--model-id", "stories260K", "--key-file", path("model.key").string()});
  expect_one_line_error(no_version, 2);
  EXPECT_NE(no_version.err.find("--version"), std::string::npos) << no_version.err;
  RunResult suite = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("x.vsm").string(), "--model-id",
                          "m", "--version", "1", "--key-file", path("model.key").string(), "--suite", "rot13"});
  expect_one_line_error(suite, 2);
  EXPECT_FALSE(fs::exists(path("x.vsm")));
  RunResult format = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("x.vsm").string(),
                           "--model-id", "m", "--version", "1", "--key-file", path("model.key").string(), "--format", "3"});
  expect_one_line_error(format, 2);
  EXPECT_FALSE(fs::exists(path("x.vsm")));
  // A missing key file is a runtime failure naming it.
  RunResult missing = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("x.vsm").string(),
                            "--model-id", "m", "--version", "1", "--key-file", path("absent.key").string()});
  expect_one_line_error(missing, 1);
  EXPECT_NE(missing.err.find("absent.key"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(path("x.vsm")));
}

TEST_F(SealedTest, SealedModelWithoutItsKeyIsRefusedClearly) {
  seal();
  // generate needs the key: from the broker, or (development only) --insecure-local-key.
  RunResult g = veil({"generate", "-m", path("m.vsm").string(), "-n", "5"});
  expect_one_line_error(g, 2);
  EXPECT_NE(g.err.find("--kbs"), std::string::npos) << g.err;
  EXPECT_EQ(g.out, "");
  // tokenize only reads plaintext models.
  RunResult t = veil({"tokenize", "-m", path("m.vsm").string(), "hello"});
  expect_one_line_error(t, 1);
  EXPECT_NE(t.err.find("sealed"), std::string::npos) << t.err;
  EXPECT_EQ(t.out, "");
}

TEST_F(SealedTest, GenerateFromASealedModelWithALocalKeyGivesTheGoldenText) {
  seal();
  RunResult g = veil({"generate", "-m", path("m.vsm").string(), "--insecure-local-key", path("model.key").string(), "-n",
                      "200"});
  expect_ok(g);
  EXPECT_EQ(g.out, read_text(kStories / "expected_greedy_200steps.txt")) << g.describe();
  EXPECT_NE(g.err.find("development only"), std::string::npos) << g.err;  // the insecure key is called out
  // Another key: the sealed header does not authenticate, a security refusal.
  expect_ok(veil({"seal", "--generate-key", path("other.key").string()}));
  RunResult wrong = veil({"generate", "-m", path("m.vsm").string(), "--insecure-local-key", path("other.key").string(),
                          "-n", "5"});
  expect_one_line_error(wrong, 3, /*logs_before=*/true);
  EXPECT_EQ(wrong.out, "");
  // A byte flipped in the encrypted body: refused, exit 3, nothing generated.
  fs::copy_file(path("m.vsm"), path("tampered.vsm"));
  flip_byte(path("tampered.vsm"), fs::file_size(path("tampered.vsm")) / 2);
  RunResult bad = veil({"generate", "-m", path("tampered.vsm").string(), "--insecure-local-key",
                        path("model.key").string(), "-n", "5"});
  expect_one_line_error(bad, 3, /*logs_before=*/true);
  EXPECT_EQ(bad.out, "");
}

// docs/sealed-format.md: "header-only summary: `veil model info X.vsm` (sealed::describe_sealed_model)".
TEST_F(SealedTest, ModelInfoOnASealedModelPrintsTheHeader) {
  seal();
  RunResult r = veil({"model", "info", path("m.vsm").string()});
  expect_ok(r);
  EXPECT_NE(r.out.find("stories260K"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Veil sealed model v2 (one key per layer, input, output and rest)"), std::string::npos) << r.out;
  RunResult j = veil({"model", "info", "--json", path("m.vsm").string()});
  expect_ok(j);
  EXPECT_FALSE(json::parse(j.out, nullptr, false).is_discarded()) << j.out;
}

TEST_F(SealedTest, ManifestCreateForTwoStages) {
  seal();
  RunResult r = veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints",
                      "127.0.0.1:7400,127.0.0.1:7401", "--policy", path("policy.json").string()});
  expect_ok(r);
  json m = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(m.is_discarded()) << r.describe();
  EXPECT_EQ(m["format"], "veil-manifest/1");
  EXPECT_EQ(m["model_id"], "stories260K");
  EXPECT_EQ(m["model_version"], 1);
  EXPECT_EQ(m["n_layers"], 5);
  EXPECT_EQ(m["sealed_model_sha256"].get<std::string>().size(), 64u);
  ASSERT_EQ(m["stages"].size(), 2u) << m.dump(2);
  int expect_begin = 0;
  for (size_t i = 0; i < 2; ++i) {
    const json& s = m["stages"][i];
    EXPECT_EQ(s["index"], i);
    EXPECT_EQ(s["layer_begin"], expect_begin);
    EXPECT_GT(s["layer_end"].get<int>(), s["layer_begin"].get<int>()) << s.dump();
    expect_begin = s["layer_end"].get<int>();
    EXPECT_EQ(s["weights_sha256"].get<std::string>().size(), 64u);
    EXPECT_EQ(s["endpoint"], i == 0 ? "127.0.0.1:7400" : "127.0.0.1:7401");
    EXPECT_EQ(s["policy"]["allowed_types"], json::array({"sim"})) << s.dump();
  }
  EXPECT_EQ(expect_begin, 5);  // contiguous and complete
  EXPECT_NE(m["stages"][0]["weights_sha256"], m["stages"][1]["weights_sha256"]);

  // -o writes the same document.
  RunResult o = veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints",
                      "127.0.0.1:7400,127.0.0.1:7401", "--policy", path("policy.json").string(), "-o",
                      path("manifest.json").string()});
  expect_ok(o);
  EXPECT_EQ(json::parse(read_text(path("manifest.json")), nullptr, false), m);
}

TEST_F(SealedTest, ManifestOfAPlainGgufSaysToSealIt) {
  RunResult r = veil({"manifest", "create", (kStories / "stories260K.gguf").string(), "--stages", "2", "--endpoints",
                      "127.0.0.1:7400,127.0.0.1:7401", "--policy", path("policy.json").string()});
  expect_one_line_error(r, 2);
  EXPECT_NE(r.err.find("veil seal"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(SealedTest, ManifestBadArguments) {
  seal();
  // Two stages, one endpoint.
  RunResult few = veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints", "127.0.0.1:7400",
                        "--policy", path("policy.json").string()});
  EXPECT_NE(few.exit_code, 0) << few.describe();
  expect_one_line_error(few, few.exit_code);
  // More stages than layers.
  RunResult many = veil({"manifest", "create", path("m.vsm").string(), "--stages", "6", "--endpoints",
                         "a:1,b:2,c:3,d:4,e:5,f:6", "--policy", path("policy.json").string()});
  EXPECT_NE(many.exit_code, 0) << many.describe();
  expect_one_line_error(many, many.exit_code);
  // A malformed policy is named.
  write_text(path("bad-policy.json"), R"({"allowed_types": []})");
  RunResult bad = veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints",
                        "127.0.0.1:7400,127.0.0.1:7401", "--policy", path("bad-policy.json").string()});
  EXPECT_NE(bad.exit_code, 0) << bad.describe();
  expect_one_line_error(bad, bad.exit_code);
  EXPECT_NE(bad.err.find("allowed_types"), std::string::npos) << bad.err;
  // A policy file that does not exist: usage error from the argument check.
  expect_one_line_error(veil({"manifest", "create", path("m.vsm").string(), "--endpoints", "a:1,b:2", "--policy",
                              path("absent.json").string()}),
                        2);
  // --stage-policy: a stage index out of range, given twice, malformed or with a bad policy is refused, naming it;
  // without --policy every stage needs its own.
  const std::vector<std::string> two = {"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints",
                                        "127.0.0.1:7400,127.0.0.1:7401"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = two;
    args.insert(args.end(), extra.begin(), extra.end());
    return veil(args);
  };
  const std::string policy = path("policy.json").string();
  struct Case {
    std::vector<std::string> extra;
    std::string needle;
    int exit_code;  // 2: usage; a policy that does not parse is an invalid input, like --policy's above
  };
  for (const Case& c : std::vector<Case>{
           {{"--policy", policy, "--stage-policy", "2=" + policy}, "--stage-policy 2: there are 2 stages", 2},
           {{"--policy", policy, "--stage-policy", "1=" + policy, "--stage-policy", "1=" + policy},
            "stage 1 given twice", 2},
           {{"--policy", policy, "--stage-policy", "one=" + policy}, "expected INDEX=FILE", 2},
           {{"--policy", policy, "--stage-policy", "1=" + path("bad-policy.json").string()},
            "--stage-policy 1 " + path("bad-policy.json").string() + ": policy: field 'allowed_types'", bad.exit_code},
           {{"--stage-policy", "0=" + policy}, "--policy: needed for the stages without a --stage-policy", 2}}) {
    RunResult r = with(c.extra);
    expect_one_line_error(r, c.exit_code);
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.describe();
  }
}

TEST_F(SealedTest, KbsKeyManagementAndAudit) {
  seal();
  RunResult mk = veil({"kbs", "gen-master-key", path("master.key").string()});
  expect_ok(mk);
  auto perms = fs::status(path("master.key")).permissions();
  EXPECT_EQ(perms & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
  std::vector<std::string> db = {"--db", path("kbs.db").string(), "--master-key", path("master.key").string()};
  auto with_db = [&](std::vector<std::string> args) {
    args.insert(args.end(), db.begin(), db.end());
    return args;
  };
  RunResult add = veil(with_db({"kbs", "add-key", "--model-id", "stories260K", "--version", "1", "--policy",
                                path("policy.json").string(), "--key-file", path("model.key").string()}));
  expect_ok(add);
  EXPECT_NE(add.out.find("stories260K version 1"), std::string::npos) << add.out;

  // A sealed model that is not this model, version and key is refused (exit 1, one line).
  RunResult mismatch = veil(with_db({"kbs", "add-key", "--model-id", "stories260K", "--version", "2", "--policy",
                                     path("policy.json").string(), "--key-file", path("model.key").string(),
                                     "--sealed-model", path("m.vsm").string()}));
  expect_one_line_error(mismatch, 1);
  EXPECT_NE(mismatch.err.find("not this model, version and key"), std::string::npos) << mismatch.err;

  RunResult list = veil(with_db({"kbs", "list"}));
  expect_ok(list);
  EXPECT_NE(list.out.find("stories260K\tversion 1\tkey id "), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("highest released 0"), std::string::npos) << list.out;
  // The key itself never appears.
  std::string key_hex = read_text(path("model.key")).substr(0, 64);
  EXPECT_EQ(list.out.find(key_hex), std::string::npos);

  RunResult verify = veil(with_db({"kbs", "audit", "verify"}));
  expect_ok(verify);
  EXPECT_NE(verify.out.find("audit log verified: 1 entries"), std::string::npos) << verify.out;
  RunResult show = veil(with_db({"kbs", "audit", "show"}));
  expect_ok(show);
  std::vector<std::string> lines = split_lines(show.out);
  ASSERT_EQ(lines.size(), 1u) << show.out;
  json event = json::parse(lines[0].substr(lines[0].find('\t') + 1), nullptr, false);
  ASSERT_FALSE(event.is_discarded()) << lines[0];
  EXPECT_EQ(event["event"], "add-key");
  EXPECT_EQ(event["model_id"], "stories260K");
  EXPECT_EQ(show.out.find(key_hex), std::string::npos);

  // Another master key cannot open the database.
  expect_ok(veil({"kbs", "gen-master-key", path("other.key").string()}));
  RunResult wrong = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key", path("other.key").string()});
  EXPECT_NE(wrong.exit_code, 0) << wrong.describe();
  expect_one_line_error(wrong, wrong.exit_code);
  EXPECT_EQ(wrong.out, "");

  // No master key at all: usage error.
  expect_one_line_error(veil({"kbs", "list", "--db", path("kbs.db").string()}), 2);
  // gen-master-key does not overwrite.
  expect_one_line_error(veil({"kbs", "gen-master-key", path("master.key").string()}), 1);
}

TEST_F(SealedTest, SealStraightIntoTheBroker) {
  expect_ok(veil({"kbs", "gen-master-key", path("master.key").string()}));
  RunResult s = veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("m.vsm").string(), "--model-id",
                      "stories260K", "--version", "3", "--kbs-db", path("kbs.db").string(), "--master-key",
                      path("master.key").string(), "--policy", path("policy.json").string()});
  expect_ok(s);
  EXPECT_NE(s.out.find("(key stored in the broker)"), std::string::npos) << s.out;
  RunResult list = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key", path("master.key").string()});
  expect_ok(list);
  EXPECT_NE(list.out.find("stories260K\tversion 3"), std::string::npos) << list.out;
  // The manifest can exist only now (it names the sealed file's hash): bind-stages records its stage table, once.
  expect_ok(veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints", "127.0.0.1:1,127.0.0.1:2",
                  "--policy", path("policy.json").string(), "-o", path("stages.json").string()}));
  std::vector<std::string> bind = {"kbs", "bind-stages", "--db", path("kbs.db").string(), "--master-key",
                                   path("master.key").string(), "--model-id", "stories260K", "--version", "3",
                                   "--manifest", path("stages.json").string(), "--sealed-model", path("m.vsm").string()};
  RunResult bound = veil(bind);
  expect_ok(bound);
  EXPECT_NE(bound.out.find("to the manifest's 2 stages"), std::string::npos) << bound.out;
  RunResult again = veil(bind);
  expect_one_line_error(again, 1);
  EXPECT_NE(again.err.find("already has a stage table"), std::string::npos) << again.err;
  list = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key", path("master.key").string()});
  expect_ok(list);
  EXPECT_NE(list.out.find("\tlayers 5\tstages 2"), std::string::npos) << list.out;
}

// The full flow: broker serving keys to `veil serve` (both on the simulated TEE of this machine), the server
// answering /health and a greedy completion; a tampered sealed model is refused with exit 3.
TEST_F(SealedTest, ServeASealedModelWithKeysFromTheBroker) {
  seal();
  // With --sealed-model the broker records the layer count (5) and checks stages' range requests against it.
  const std::string kbs_address = start_broker();
  ASSERT_FALSE(kbs_address.empty());

  auto serve_args = [&](const fs::path& model) {
    return std::vector<std::string>{"serve", "-m", model.string(), "--kbs", kbs_address, "--policy",
                                    path("policy.json").string(), "--tee", "sim", "--sim-platform-key",
                                    path("platform.key").string(), "--insecure-http", "--no-auth", "--listen",
                                    "127.0.0.1:0", "--db", path("server.db").string(), "--grace", "1", "-t", "1"};
  };
  {
    auto srv = start(serve_args(path("m.vsm")));
    auto line = srv->wait_for_stdout_line("veil serve: model ", 60s);
    ASSERT_TRUE(line.has_value()) << srv->finish(1s).describe();
    EXPECT_NE(line->find("http://127.0.0.1:"), std::string::npos) << *line;
    uint16_t port = port_of(*line);
    ASSERT_NE(port, 0) << *line;
    HttpResponse health = http_request(port, "GET", "/health");
    EXPECT_EQ(health.status, 200) << health.raw;
    EXPECT_NE(health.body.find("\"ok\""), std::string::npos) << health.raw;
    // "veil serve: model ID on http://..."
    std::string model_id = line->substr(18, line->find(" on ") - 18);
    EXPECT_EQ(model_id, "stories260K") << *line;  // the sealed model's own id
    HttpResponse done = http_request(port, "POST", "/v1/completions",
                                     R"({"model": ")" + model_id +
                                         R"(", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})");
    EXPECT_EQ(done.status, 200) << done.raw;
    // Greedy continuation of the golden story.
    EXPECT_NE(done.body.find(", there was a little girl"), std::string::npos) << done.raw;
    srv->signal(SIGTERM);
    RunResult r = srv->finish(30s);
    EXPECT_EQ(r.exit_code, 0) << r.describe();
  }
  // A byte flipped in the middle of the encrypted body: the authentication tag fails, exit 3.
  fs::copy_file(path("m.vsm"), path("tampered.vsm"));
  flip_byte(path("tampered.vsm"), fs::file_size(path("tampered.vsm")) / 2);
  {
    auto srv = start(serve_args(path("tampered.vsm")));
    RunResult r = srv->finish(60s);
    expect_one_line_error(r, 3, /*logs_before=*/true);
    EXPECT_NE(r.err.find("tampered.vsm"), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("veil serve: model"), std::string::npos) << r.out;
  }
  // A byte flipped in the header's random salt: the header MAC fails, exit 3.
  fs::copy_file(path("m.vsm"), path("tampered-header.vsm"));
  flip_byte(path("tampered-header.vsm"), 50);
  {
    auto srv = start(serve_args(path("tampered-header.vsm")));
    RunResult r = srv->finish(60s);
    expect_one_line_error(r, 3, /*logs_before=*/true);
  }
  // A pipeline stage (the second of two) asks the broker for its layer range only, and loads it.
  expect_ok(veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints", "127.0.0.1:1,127.0.0.1:2",
                  "--policy", path("policy.json").string(), "-o", path("stages.json").string()}));
  json manifest = json::parse(read_text(path("stages.json")), nullptr, false);
  ASSERT_FALSE(manifest.is_discarded());
  const int stage_first = manifest["stages"][1]["layer_begin"].get<int>();
  {
    auto stage = start(stage_args(1, "m.vsm", "stages.json", kbs_address));
    auto ready = stage->wait_for_stdout_line("veil stage: stage 1", 60s);
    ASSERT_TRUE(ready.has_value()) << stage->finish(1s).describe();
    stage->signal(SIGTERM);
    RunResult r = stage->finish(30s);
    EXPECT_EQ(r.exit_code, 0) << r.describe();
  }
  // A format-1 file has one key for every layer: a stage refuses it before asking the broker for anything.
  expect_ok(veil({"seal", (kStories / "stories260K.gguf").string(), "-o", path("m1.vsm").string(), "--model-id",
                  "stories260K", "--version", "1", "--key-file", path("model.key").string(), "--format", "1"}));
  expect_ok(veil({"manifest", "create", path("m1.vsm").string(), "--stages", "2", "--endpoints",
                  "127.0.0.1:1,127.0.0.1:2", "--policy", path("policy.json").string(), "-o", path("stages1.json").string()}));
  RunResult v1 = veil(stage_args(1, "m1.vsm", "stages1.json", kbs_address));
  expect_one_line_error(v1, 3, /*logs_before=*/true);
  EXPECT_NE(v1.err.find("sealed format 1"), std::string::npos) << v1.err;
  stop_broker();

  RunResult list = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key", path("master.key").string()});
  expect_ok(list);
  EXPECT_NE(list.out.find("highest released 1\tlayers 5"), std::string::npos) << list.out;
  // The audit log: the stage's release names its range and what it got (never the model key).
  std::vector<json> events = audit_events();
  ASSERT_FALSE(events.empty());
  const json& last = events.back();
  EXPECT_EQ(last["event"], "release") << last.dump();
  EXPECT_EQ(last["range"]["first_layer"], stage_first) << last.dump();
  EXPECT_EQ(last["range"]["last_layer"], 4) << last.dump();
  EXPECT_EQ(last["released"], "layers " + std::to_string(stage_first) + "..4 + rest + output") << last.dump();
}

// A two-stage pipeline whose stages and front all get their keys from the broker, which holds the manifest's stage
// table: each stage (its own sim config, so its own measurement) its range's keys only on evidence satisfying its
// stage's policy, the front (which only tokenizes and samples; the stages embed and compute the head) the rest key
// alone on evidence satisfying the front policy. It still answers with the golden text; a process with stage 1's
// measurement asking for stage 0's range is refused; the audit shows what each got and which stage matched.
TEST_F(SealedTest, APipelineFrontGetsOnlyTheMetadataKeyFromTheBroker) {
  seal();
  expect_ok(veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints", "127.0.0.1:1,127.0.0.1:2",
                  "--policy", path("policy.json").string(), "-o", path("stages.json").string()}));
  json manifest = json::parse(read_text(path("stages.json")), nullptr, false);
  ASSERT_FALSE(manifest.is_discarded());
  const int stage_first = manifest["stages"][1]["layer_begin"].get<int>();
  // Per-stage launch configs: each folds into that process's measurement, which its manifest policy expects
  // (--stage-policy gives each stage its own, --front-policy the front's).
  auto policy_for = [&](const std::string& config) {
    write_text(path(config), "veil launch config: " + config + "\n");
    json policy{{"allowed_types", {"sim"}},
                {"allow_simulated", true},
                {"expected_measurements", {{"sim", {{"measurement", {sim_measurement(config)}}}}}}};
    write_text(path(config + ".policy.json"), policy.dump());
    return policy;
  };
  const json stage_policies[2] = {policy_for("stage0.conf"), policy_for("stage1.conf")};
  const json front_policy = policy_for("front.conf");
  expect_ok(veil({"manifest", "create", path("m.vsm").string(), "--stages", "2", "--endpoints", "127.0.0.1:1,127.0.0.1:2",
                  "--stage-policy", "0=" + path("stage0.conf.policy.json").string(), "--stage-policy",
                  "1=" + path("stage1.conf.policy.json").string(), "--front-policy",
                  path("front.conf.policy.json").string(), "-o", path("stages.json").string()}));
  manifest = json::parse(read_text(path("stages.json")), nullptr, false);
  ASSERT_FALSE(manifest.is_discarded());
  for (int i = 0; i < 2; ++i) EXPECT_EQ(manifest["stages"][i]["policy"], stage_policies[i]) << i;
  EXPECT_EQ(manifest["front_policy"], front_policy);
  const std::string kbs_address = start_broker({"--manifest", path("stages.json").string()});
  ASSERT_FALSE(kbs_address.empty());
  // add-key checks the manifest is this model's, version's and sealed file's before recording its stage table.
  json other = manifest;
  other["sealed_model_sha256"] = std::string(64, 'a');
  write_text(path("other.json"), other.dump(2));
  std::vector<std::string> wrong = add_key_args();
  wrong.insert(wrong.end(), {"--manifest", path("other.json").string()});
  RunResult mismatch = veil(wrong);
  expect_one_line_error(mismatch, 1);
  EXPECT_NE(mismatch.err.find("its sealed_model_sha256 is not the SHA-256 of"), std::string::npos) << mismatch.err;
  // Stage 1's measurement asking for stage 0's range: refused by the broker, the range and the stage named.
  RunResult impostor = veil(stage_args(0, "m.vsm", "stages.json", kbs_address, "stage1.conf"));
  expect_one_line_error(impostor, 3, /*logs_before=*/true);
  EXPECT_NE(impostor.err.find("layers 0.." + std::to_string(stage_first - 1) + ": refused by stage 0's policy"),
            std::string::npos) << impostor.err;
  // The last stage first: stage 0's manifest names its successor's real endpoint.
  std::unique_ptr<Process> stages[2];
  for (int i = 1; i >= 0; --i) {
    write_text(path("stages.json"), manifest.dump(2));
    stages[i] = start(stage_args(i, "m.vsm", "stages.json", kbs_address, "stage" + std::to_string(i) + ".conf"));
    auto ready = stages[i]->wait_for_stdout_line("veil stage: stage " + std::to_string(i), 60s);
    ASSERT_TRUE(ready.has_value()) << stages[i]->finish(1s).describe();
    manifest["stages"][i]["endpoint"] = ready->substr(ready->rfind(" on ") + 4);
  }
  write_text(path("front.json"), manifest.dump(2));
  auto front = start({"serve", "--manifest", path("front.json").string(), "-m", path("m.vsm").string(), "--kbs",
                      kbs_address, "--policy", path("policy.json").string(), "--tee", "sim", "--sim-platform-key",
                      path("platform.key").string(), "--sim-config", path("front.conf").string(), "--insecure-http",
                      "--no-auth", "--listen", "127.0.0.1:0", "--db", path("server.db").string(), "-t", "1", "--grace",
                      "1"});
  auto line = front->wait_for_stdout_line("veil serve: model stories260K", 60s);
  ASSERT_TRUE(line.has_value()) << front->finish(1s).describe();
  HttpResponse done = http_request(port_of(*line), "POST", "/v1/completions",
                                   R"({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8, )"
                                   R"("temperature": 0})");
  EXPECT_EQ(done.status, 200) << done.raw;
  EXPECT_NE(done.body.find(", there was a little girl"), std::string::npos) << done.raw;
  front->signal(SIGTERM);
  RunResult fr = front->finish(30s);
  EXPECT_EQ(fr.exit_code, 0) << fr.describe();
  for (auto& stage : stages) {
    stage->signal(SIGTERM);
    EXPECT_EQ(stage->finish(30s).exit_code, 0);
  }
  stop_broker();
  RunResult list = veil({"kbs", "list", "--db", path("kbs.db").string(), "--master-key", path("master.key").string()});
  expect_ok(list);
  EXPECT_NE(list.out.find("\tlayers 5\tstages 2"), std::string::npos) << list.out;

  // Every release was a range's or the metadata's key set, never the model key; the front's names no layer; each
  // stage's names the stage that matched.
  std::vector<std::string> released;
  for (const json& e : audit_events()) {
    if (e["event"] != "release") continue;
    ASSERT_TRUE(e.contains("range") && e.contains("released")) << e.dump();
    released.push_back(e["released"].get<std::string>());
    if (e["released"] == "metadata only (rest)") {
      EXPECT_EQ(e["range"], json({{"metadata_only", true}})) << e.dump();
      EXPECT_FALSE(e.contains("stage")) << e.dump();
    } else {
      EXPECT_EQ(e.value("stage", -1), e["range"]["first_layer"] == 0 ? 0 : 1) << e.dump();
    }
  }
  std::vector<std::string> expected = {"layers " + std::to_string(stage_first) + "..4 + rest + output",
                                       "layers 0.." + std::to_string(stage_first - 1) + " + rest + input",
                                       "metadata only (rest)"};
  EXPECT_EQ(released, expected);
}

TEST_F(SealedTest, ServeASealedModelNeedsABroker) {
  seal();
  fs::create_directories(dir_ / ".veil");  
  RunResult r = veil({"serve", "-m", path("m.vsm").string(), "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0",
                      "--db", path("server.db").string()});
  expect_one_line_error(r, 2, /*logs_before=*/true);
  EXPECT_NE(r.err.find("--kbs"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace veil::clitest
