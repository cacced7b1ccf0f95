// The server over the real engine, tokenizer and sampler on stories260K (../shared): greedy completions equal
// llama2.c's golden output and a straightforward single-sequence greedy loop, also under concurrent batching;
// and the official `openai` npm package, as a client over RA-TLS, gets exactly the same text.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "crypto/crypto.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "server/engine_backend.h"
#include "server/http_client.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

namespace veil::server {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const char* kModel = VEIL_SHARED_DIR "/models/stories260K/stories260K.gguf";

std::shared_ptr<const gguf::File> open_model() {
  auto f = gguf::File::open(kModel);
  if (!f.ok()) return nullptr;
  return std::make_shared<const gguf::File>(std::move(f).value());
}

// The reference: one sequence, prompt then one token at a time, argmax (ties to the lowest id), streamed decode,
// exactly as `veil generate --temp 0` runs.
std::string reference_greedy(const std::shared_ptr<const gguf::File>& file, const std::vector<int32_t>& ids, int n) {
  auto model = engine::Model::load(file);
  auto tok = tokenizer::Tokenizer::from_gguf(*file);
  if (!model.ok() || !tok.ok()) return "<load failed>";
  engine::Context ctx((*model)->hparams(), {.threads = 1});
  engine::KvCache cache = (*model)->new_cache(0);
  engine::ForwardRequest r{&cache, ids, engine::LogitsMode::kLast};
  if (!(*model)->forward({&r, 1}, ctx).ok()) return "<forward failed>";
  bool bos_only = ids.size() == 1 && ids[0] == tok->bos();
  tokenizer::StreamDecoder dec(*tok, bos_only && tok->add_space_prefix());
  std::string text;
  for (int i = 0; i < n; ++i) {
    auto logits = ctx.logits();
    int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (tok->is_eog(next)) break;
    text += dec.push(next);
    if (i + 1 == n) break;
    engine::ForwardRequest step{&cache, {&next, 1}, engine::LogitsMode::kLast};
    if (!(*model)->forward({&step, 1}, ctx).ok()) return "<forward failed>";
  }
  return text + dec.flush();
}

class EngineServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = open_model();
    if (!file_) GTEST_SKIP() << "stories260K is not available at " << kModel;
    dir_ = fs::temp_directory_path() / ("veil_engine_server_" + to_hex(crypto::random_bytes(6)));
    fs::create_directories(dir_);
    EngineBackendOptions eo;
    eo.threads = 1;
    eo.batching.max_slots = 8;
    auto b = make_engine_backend(file_, eo);
    ASSERT_TRUE(b.ok()) << b.error().message();
    backend_ = std::move(b).value();
    attest::ProviderOptions po;
    po.sim_platform_key = dir_ / "platform.key";
    po.sim_create_key = true;
    auto p = attest::make_provider("sim", po);
    ASSERT_TRUE(p.ok()) << p.error().message();
    provider_ = std::move(p).value();
    auto st = Store::open(dir_ / "server.db");
    ASSERT_TRUE(st.ok());
    store_ = std::move(st).value();
    auto k = store_->add_key("engine", {"*"}, 6000, 1000);
    ASSERT_TRUE(k.ok());
    key_ = *k;
    auto root = provider_->sealing_root();
    ASSERT_TRUE(root.ok());
    ServerOptions so;
    so.port = 0;
    auto s = Server::start(so, *backend_, *store_, *provider_, derive_signing_keys(root->view()));
    ASSERT_TRUE(s.ok()) << s.error().message();
    server_ = std::move(s).value();
  }
  void TearDown() override {
    if (server_) server_->stop(std::chrono::seconds(5));
    server_.reset();
    backend_.reset();
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  std::string complete(const std::string& prompt, int n, bool stream = false) {
    std::string body = json{{"model", backend_->model_id()}, {"prompt", prompt}, {"max_tokens", n},
                            {"temperature", 0}, {"stream", stream}}.dump();
    auto r = testing::http_request(server_->port(), true, "POST", "/v1/completions", body, key_);
    if (r.status != 200) return "<status " + std::to_string(r.status) + ": " + r.body + ">";
    if (!stream) return json::parse(r.body)["choices"][0]["text"];
    std::string text;
    for (const auto& e : testing::sse_events(r.body)) {
      if (e == "[DONE]") break;
      auto j = json::parse(e);
      if (j["choices"].empty()) continue;
      text += j["choices"][0]["text"].get<std::string>();
    }
    return text;
  }

  fs::path dir_;
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<BatchingBackend> backend_;
  std::unique_ptr<attest::Provider> provider_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Server> server_;
  std::string key_;
};

TEST_F(EngineServerTest, EmptyPromptReproducesLlama2cGoldenOutput) {
  std::ifstream in(VEIL_SHARED_DIR "/models/stories260K/expected_greedy_200steps.txt");
  std::string golden((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(golden.empty());
  std::string got = complete("", 200);
  // llama2.c ends its output with a newline of its own.
  while (!golden.empty() && golden.back() == '\n') golden.pop_back();
  EXPECT_EQ(got, golden);
}

TEST_F(EngineServerTest, GreedyCompletionsMatchTheSingleSequenceReferenceUnderBatching) {
  std::vector<std::string> prompts = {"Once upon a time", "The cat", "Lily and Ben went to the park", "One day",
                                      "Tom had a big red ball", "She", "The sun was", "A little bird"};
  std::vector<std::string> expected;
  for (const auto& p : prompts) {
    auto ids = backend_->tokenize_prompt(p);
    ASSERT_TRUE(ids.ok());
    expected.push_back(reference_greedy(file_, *ids, 48));
  }
  EXPECT_EQ(complete(prompts[0], 48), expected[0]);
  EXPECT_EQ(complete(prompts[0], 48, true), expected[0]);
  std::vector<std::future<std::string>> futs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    futs.push_back(std::async(std::launch::async, [&, i] { return complete(prompts[i], 48, i % 2 == 1); }));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(futs[i].wait_for(std::chrono::seconds(120)), std::future_status::ready);
    EXPECT_EQ(futs[i].get(), expected[i]) << prompts[i];
  }
}

TEST_F(EngineServerTest, OfficialOpenAiNpmClientGetsTheGreedyText) {
  fs::path js = fs::path(VEIL_SOURCE_DIR) / "tests" / "js";
  if (!fs::exists(js / "node_modules" / "openai" / "package.json")) {
    GTEST_SKIP() << "tests/js/node_modules is absent: run tests/js/setup.sh (npm install) to enable the openai npm "
                    "client test";
  }
  const int n = 40;
  std::string prompt = "Once upon a time";
  auto ids = backend_->tokenize_prompt(prompt);
  ASSERT_TRUE(ids.ok());
  std::vector<ChatMessage> messages = {{"user", "Tell me a story about a cat."}};
  auto chat_ids = backend_->tokenize_chat(messages);
  ASSERT_TRUE(chat_ids.ok()) << chat_ids.error().message();
  json expect = {{"model", backend_->model_id()},
                 {"prompt", prompt},
                 {"max_tokens", n},
                 {"completion", reference_greedy(file_, *ids, n)},
                 {"messages", {{{"role", "user"}, {"content", messages[0].content}}}},
                 {"chat", reference_greedy(file_, *chat_ids, n)}};
  std::ofstream(dir_ / "expect.json") << expect.dump();
  std::ofstream(dir_ / "cert.pem") << server_->tls_identity()->cert_pem;
  std::string cmd = "cd '" + js.string() + "' && VEIL_BASE_URL=https://127.0.0.1:" + std::to_string(server_->port()) +
                    "/v1 VEIL_API_KEY=" + key_ + " VEIL_EXPECT='" + (dir_ / "expect.json").string() +
                    "' NODE_EXTRA_CA_CERTS='" + (dir_ / "cert.pem").string() +
                    "' timeout 120 node openai_client.test.mjs 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
}

}  // namespace
}  // namespace veil::server
