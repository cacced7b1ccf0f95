// veil keys and veil serve (plain HTTP on 127.0.0.1, port 0; the server prints the port it bound).
#include <nlohmann/json.hpp>

#include "cli/cli_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

using ServeTest = CliTest;

TEST_F(ServeTest, KeysAddListRevoke) {
  std::vector<std::string> db = {"--db", path("server.db").string()};
  RunResult add = veil({"keys", "add", "--models", "*", "--name", "ci", "--db", path("server.db").string()});
  expect_ok(add);
  std::string key = add.out.substr(0, add.out.find('\n'));
  ASSERT_EQ(key.rfind("vk_", 0), 0u) << add.out;
  EXPECT_EQ(key.size(), 3 + 16 + 1 + 64u) << key;  // vk_<16 hex id>_<64 hex secret>
  std::string id = key.substr(3, 16);

  RunResult list = veil({"keys", "list", "--db", path("server.db").string()});
  expect_ok(list);
  EXPECT_NE(list.out.find(id), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("ci"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("active"), std::string::npos) << list.out;
  EXPECT_EQ(list.out.find(key.substr(20)), std::string::npos) << "the secret must never be listed";

  RunResult revoke = veil({"keys", "revoke", id, "--db", path("server.db").string()});
  expect_ok(revoke);
  EXPECT_EQ(revoke.out, "revoked " + id + "\n");
  RunResult after = veil({"keys", "list", "--db", path("server.db").string()});
  expect_ok(after);
  EXPECT_NE(after.out.find("revoked"), std::string::npos) << after.out;

  RunResult unknown = veil({"keys", "revoke", "0123456789abcdef", "--db", path("server.db").string()});
  EXPECT_NE(unknown.exit_code, 0) << unknown.describe();
  expect_one_line_error(unknown, unknown.exit_code);

  expect_one_line_error(veil({"keys", "add", "--db", path("server.db").string()}), 2);  // --models required
}

TEST_F(ServeTest, KeysDefaultDatabaseIsInHome) {
  expect_ok(veil({"keys", "add", "--models", "stories260K"}));
  EXPECT_TRUE(fs::exists(dir_ / ".veil" / "server.db"));
}

TEST_F(ServeTest, ServeHealthModelsAndAGreedyCompletion) {
  RunResult add = veil({"keys", "add", "--models", "*", "--db", path("server.db").string()});
  expect_ok(add);
  std::string key = add.out.substr(0, add.out.find('\n'));

  fs::create_directories(dir_ / ".veil");  // see ServeOnAFreshHomeCreatesItsDataFolder
  auto srv = start({"serve", "--insecure-http", "--listen", "127.0.0.1:0", "--db", path("server.db").string(), "--grace",
                    "1", "-t", "1"});
  auto line = srv->wait_for_stdout_line("veil serve: model ", 60s);
  ASSERT_TRUE(line.has_value()) << srv->finish(1s).describe();
  EXPECT_NE(line->find("http://127.0.0.1:"), std::string::npos) << *line;
  uint16_t port = port_of(*line);
  ASSERT_NE(port, 0) << *line;

  HttpResponse health = http_request(port, "GET", "/health");
  EXPECT_EQ(health.status, 200) << health.raw;
  json hj = json::parse(health.body, nullptr, false);
  ASSERT_FALSE(hj.is_discarded()) << health.raw;
  EXPECT_EQ(hj, json({{"status", "ok"}})) << "docs/api.md: /health is the status only\n" << health.raw;

  // The API needs a key; /health does not.
  HttpResponse anon = http_request(port, "GET", "/v1/models");
  EXPECT_EQ(anon.status, 401) << anon.raw;
  HttpResponse models = http_request(port, "GET", "/v1/models", "", {"Authorization: Bearer " + key});
  EXPECT_EQ(models.status, 200) << models.raw;
  EXPECT_NE(models.body.find("\"data\""), std::string::npos) << models.raw;

  // "veil serve: model ID on http://..."; with no --model-id, the model file's name without extension.
  std::string model_id = line->substr(18, line->find(" on ") - 18);
  EXPECT_EQ(model_id, "stories260K") << *line;
  EXPECT_NE(models.body.find("\"" + model_id + "\""), std::string::npos) << models.raw;
  HttpResponse done = http_request(port, "POST", "/v1/completions",
                                   R"({"model": ")" + model_id +
                                       R"(", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})",
                                   {"Authorization: Bearer " + key});
  EXPECT_EQ(done.status, 200) << done.raw;
  json j = json::parse(done.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << done.raw;
  ASSERT_TRUE(j.contains("choices")) << done.raw;
  EXPECT_EQ(j["object"], "text_completion");
  std::string text = j["choices"][0]["text"].get<std::string>();
  // The golden greedy story continues "Once upon a time" with ", there was a little girl named Lily."
  EXPECT_EQ(text.rfind(", there was a little girl", 0), 0u) << text;

  HttpResponse unknown = http_request(port, "GET", "/no/such/path");
  EXPECT_EQ(unknown.status, 404) << unknown.raw;

  srv->signal(SIGTERM);
  RunResult r = srv->finish(30s);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.signal, 0) << r.describe();
  // The simulated TEE and plain HTTP are called out on stderr.
  EXPECT_NE(r.err.find("SIMULATED"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("insecure-http"), std::string::npos) << r.err;
}

// The quickstart's client (scripts/quickstart-client.py, the README's first command) against a TLS server: it
// reads the certificate's evidence (a CMW extension, parsed by Debian's python3-cryptography) and verifies a fresh
// attestation before sending the prompt, prints the golden story and checks both signatures.
TEST_F(ServeTest, QuickstartClientVerifiesTheNodeThenGetsTheGoldenStory) {
  const std::string key_file = path("platform.key").string();
  expect_ok(veil({"attest", "quote", "--provider", "sim", "--create-key", "--platform-key", key_file, "--report-data",
                  "00", "--out", path("ev.json").string(), "--collateral-out", path("col.json").string()}));
  RunResult add = veil({"keys", "add", "--models", "*", "--db", path("server.db").string()});
  expect_ok(add);
  write_text(path("api.key"), add.out.substr(0, add.out.find('\n')));
  auto srv = start({"serve", "--listen", "127.0.0.1:0", "--db", path("server.db").string(), "--cert-out",
                    path("cert.pem").string(), "--sim-platform-key", key_file, "--grace", "1", "-t", "1"});
  auto line = srv->wait_for_stdout_line("veil serve: model ", 60s);
  ASSERT_TRUE(line.has_value()) << srv->finish(1s).describe();
  auto client = [&](uint16_t port, const std::string& collateral) {
    return run_program("/usr/bin/python3", {std::string(VEIL_SOURCE_DIR) + "/scripts/quickstart-client.py", "--port",
                                            std::to_string(port), "--cert", path("cert.pem").string(), "--key-file",
                                            path("api.key").string(), "--model", "stories260K", "--collateral",
                                            path(collateral).string(), "--max-tokens", "30"});
  };
  RunResult good = client(port_of(*line), "col.json");
  EXPECT_EQ(good.exit_code, 0) << good.describe();
  EXPECT_NE(good.out.find("certificate: its evidence extension (CMW, id-pe-cmw)"), std::string::npos) << good.out;
  EXPECT_NE(good.out.find("attestation: sim evidence (SIMULATED TEE"), std::string::npos) << good.out;
  EXPECT_NE(good.out.find("Once upon a time, there was a little girl named Lily."), std::string::npos) << good.out;
  EXPECT_NE(good.out.find("signatures: ed25519 and ecdsa-secp256k1"), std::string::npos) << good.out;
  // Another platform key: the evidence is refused before any prompt is sent.
  write_text(path("other.json"), R"({"sim_platform_public_key": "ERERERERERERERERERERERERERERERERERERERERERE="})");
  RunResult wrong = client(port_of(*line), "other.json");
  EXPECT_EQ(wrong.exit_code, 1) << wrong.describe();
  EXPECT_NE(wrong.out.find("FAIL"), std::string::npos) << wrong.out;
  EXPECT_EQ(wrong.out.find("Once upon a time"), std::string::npos) << wrong.out;
  // Nothing listening: the certificate still checks out (it is a file), then one FAIL line, no Python traceback.
  srv->signal(SIGTERM);
  EXPECT_EQ(srv->finish(30s).exit_code, 0);
  RunResult gone = client(port_of(*line), "col.json");
  EXPECT_EQ(gone.exit_code, 1) << gone.describe();
  const size_t fail_at = gone.out.find("FAIL: ");
  ASSERT_NE(fail_at, std::string::npos) << gone.describe();
  EXPECT_TRUE(fail_at == 0 || gone.out[fail_at - 1] == '\n') << gone.describe();
  EXPECT_EQ(gone.out.find('\n', fail_at), gone.out.size() - 1) << gone.describe();  // the last line
  EXPECT_EQ(gone.err.find("Traceback"), std::string::npos) << gone.describe();
}

// A new user's first `veil serve` on a machine without ~/.veil: the default simulated platform key is created
// there (docs/api.md: state lives in $VEIL_DATA_DIR or ~/.veil).
TEST_F(ServeTest, ServeOnAFreshHomeCreatesItsDataFolder) {
  auto srv = start({"serve", "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0", "--grace", "1", "-t", "1"});
  auto line = srv->wait_for_stdout_line("veil serve: model ", 60s);
  ASSERT_TRUE(line.has_value()) << srv->finish(1s).describe();
  HttpResponse health = http_request(port_of(*line), "GET", "/health");
  EXPECT_EQ(health.status, 200) << health.raw;
  srv->signal(SIGTERM);
  EXPECT_EQ(srv->finish(30s).exit_code, 0);
  EXPECT_TRUE(fs::exists(dir_ / ".veil" / "sim-platform.key"));
}

TEST_F(ServeTest, ServeModelIdOverride) {
  auto srv = start({"serve", "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0", "--grace", "1", "-t", "1",
                    "--db", path("server.db").string(), "--model-id", "my-model"});
  auto line = srv->wait_for_stdout_line("veil serve: model ", 60s);
  ASSERT_TRUE(line.has_value()) << srv->finish(1s).describe();
  EXPECT_EQ(line->rfind("veil serve: model my-model on ", 0), 0u) << *line;
  HttpResponse models = http_request(port_of(*line), "GET", "/v1/models");
  EXPECT_EQ(models.status, 200) << models.raw;
  json m = json::parse(models.body, nullptr, false);
  ASSERT_FALSE(m.is_discarded()) << models.raw;
  EXPECT_EQ(m["data"][0]["id"], "my-model") << models.raw;
  HttpResponse old = http_request(port_of(*line), "POST", "/v1/completions",
                                  R"({"model": "stories260K", "prompt": "x", "max_tokens": 1})");
  EXPECT_EQ(old.status, 404) << old.raw;
  srv->signal(SIGTERM);
  EXPECT_EQ(srv->finish(30s).exit_code, 0);
}

TEST_F(ServeTest, ServeBadListenAddressIsAUsageError) {
  RunResult r = veil({"serve", "--insecure-http", "--listen", "localhost", "--db", path("server.db").string()});
  expect_one_line_error(r, 2);
  EXPECT_NE(r.err.find("--listen"), std::string::npos) << r.err;
  RunResult port = veil({"serve", "--insecure-http", "--listen", "127.0.0.1:99999", "--db", path("server.db").string()});
  expect_one_line_error(port, 2);
}

TEST_F(ServeTest, ServeMissingModel) {
  RunResult r = veil({"serve", "-m", path("absent.gguf").string(), "--insecure-http", "--listen", "127.0.0.1:0", "--db",
                      path("server.db").string()});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("absent.gguf"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace veil::clitest
