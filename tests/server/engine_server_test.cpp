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
#include "support/sim_tee.h"
#include "support/temp_dir.h"
#include "support/utf8.h"
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
    EngineBackendOptions eo;
    eo.threads = 1;
    eo.batching.max_slots = 8;
    auto b = make_engine_backend(file_, eo);
    ASSERT_TRUE(b.ok()) << b.error().message();
    backend_ = std::move(b).value();
    auto tee = testsupport::make_sim_tee(dir_);
    ASSERT_TRUE(tee.ok()) << tee.error().message();
    provider_ = tee->provider;
    auto st = Store::open(dir_ / "server.db");
    ASSERT_TRUE(st.ok());
    store_ = std::move(st).value();
    auto k = store_->add_key("engine", {"*"}, 6000, 1000);
    ASSERT_TRUE(k.ok());
    key_ = *k;
    server_ = serve(*backend_);
    ASSERT_NE(server_, nullptr);
  }

  // A TLS server over `backend` with this fixture's provider and key store.
  std::unique_ptr<Server> serve(GenerationBackend& backend) {
    auto root = provider_->sealing_root();
    if (!root.ok()) return nullptr;
    ServerOptions so;
    so.port = 0;
    auto s = Server::start(so, backend, *store_, *provider_, derive_signing_keys(root->view()));
    if (!s.ok()) ADD_FAILURE() << s.error().message();
    return s.ok() ? std::move(s).value() : nullptr;
  }
  void TearDown() override {
    if (server_) server_->stop(std::chrono::seconds(5));
    server_.reset();
    backend_.reset();
  }

  // The completion's text; for a stream, the concatenated pieces (each piece also appended to `pieces`).
  std::string complete(const std::string& prompt, int n, bool stream = false, Server* server = nullptr,
                       const std::string& model = {}, std::vector<std::string>* pieces = nullptr) {
    std::string body = json{{"model", model.empty() ? backend_->model_id() : model}, {"prompt", prompt},
                            {"max_tokens", n}, {"temperature", 0}, {"stream", stream}}.dump();
    auto r = testing::http_request((server ? server : server_.get())->port(), true, "POST", "/v1/completions", body,
                                   key_);
    if (r.status != 200) return "<status " + std::to_string(r.status) + ": " + r.body + ">";
    if (!stream) return json::parse(r.body)["choices"][0]["text"];
    std::string text;
    for (const auto& e : testing::sse_events(r.body)) {
      if (e == "[DONE]") break;
      auto j = json::parse(e);
      if (j["choices"].empty()) continue;
      std::string piece = j["choices"][0]["text"].get<std::string>();
      if (pieces) pieces->push_back(piece);
      text += piece;
    }
    return text;
  }

  testsupport::TempDir tmp_{"veil-engine-server"};
  fs::path dir_ = tmp_.path();
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<BatchingBackend> backend_;
  std::shared_ptr<attest::Provider> provider_;
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

// A StepModel that "generates" a fixed token script: after a prompt of `prompt_len` tokens, all probability on
// script[i] for the i-th new token. Lets a test choose exactly which vocabulary pieces come out.
class ScriptedStepModel final : public StepModel {
 public:
  ScriptedStepModel(std::vector<int32_t> script, uint32_t prompt_len, uint32_t vocab)
      : script_(std::move(script)), prompt_len_(prompt_len), vocab_(vocab) {}
  uint32_t context_length() const override { return 512; }
  uint32_t vocab_size() const override { return vocab_; }
  uint32_t max_slots() const override { return 2; }
  void reset_slot(uint32_t) override {}
  Status forward(std::span<const StepInput> batch, std::vector<float>& logits) override {
    logits.clear();
    for (const auto& in : batch) {
      if (!in.want_logits) continue;
      size_t i = in.pos0 + in.tokens.size() - prompt_len_;  // index of the token to produce
      logits.resize(logits.size() + vocab_, 0.0f);
      logits[logits.size() - vocab_ + static_cast<size_t>(script_[i % script_.size()])] = 10.0f;
    }
    return ok_status();
  }

 private:
  std::vector<int32_t> script_;
  uint32_t prompt_len_;
  uint32_t vocab_;
};

using testsupport::valid_utf8;

// Characters that stories260K can only spell with <0xNN> byte tokens, one token per byte: over SSE every piece is
// whole UTF-8 and the pieces concatenate, byte for byte, to the non-streamed text, which is the tokenizer's own
// streaming decode of the same ids (the one implementation `veil generate` uses).
TEST_F(EngineServerTest, StreamedTextEqualsNonStreamedTextWithByteTokens) {
  auto tok = tokenizer::Tokenizer::from_gguf(*file_);
  ASSERT_TRUE(tok.ok());
  auto byte = [&](uint8_t b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    int32_t id = tok->find(name);
    EXPECT_NE(id, tokenizer::kNoToken) << name;
    EXPECT_EQ(tok->token_type(id), tokenizer::TokenType::kByte) << name;
    return id;
  };
  auto word = tok->encode("Once upon", {.add_special = false, .parse_special = false});
  ASSERT_FALSE(word.empty());
  std::vector<int32_t> script = word;
  for (uint8_t b : {0xE2, 0x82, 0xAC}) script.push_back(byte(b));               // U+20AC, 3 bytes
  script.push_back(word.back());
  for (uint8_t b : {0xC3, 0xA9}) script.push_back(byte(b));                     // U+00E9, 2 bytes
  for (uint8_t b : {0xF0, 0x9F, 0x98, 0x80}) script.push_back(byte(b));         // U+1F600, 4 bytes
  script.push_back(byte(0xFF));                                                 // never valid: U+FFFD
  script.push_back(word.front());
  for (uint8_t b : {0xE4, 0xB8}) script.push_back(byte(b));                     // cut short at the end: U+FFFD
  const int n = static_cast<int>(script.size());

  const std::string prompt = "The cat";
  auto prompt_ids = tok->encode(prompt, {.add_special = true, .parse_special = false});
  tokenizer::StreamDecoder dec(*tok);
  std::string expected;
  for (int32_t id : script) expected += dec.push(id);
  expected += dec.flush();
  ASSERT_NE(expected.find("\xE2\x82\xAC"), std::string::npos);
  ASSERT_NE(expected.find("\xF0\x9F\x98\x80"), std::string::npos);

  uint32_t vocab = static_cast<uint32_t>(tok->vocab_size());
  BatchingBackend scripted("scripted-synthetic",
                           std::make_unique<ScriptedStepModel>(script, static_cast<uint32_t>(prompt_ids.size()), vocab),
                           make_tokenizer_codec(std::move(tok).value()),
                           [](const SamplingOptions&) -> std::unique_ptr<TokenSampler> {
                             struct Argmax final : TokenSampler {
                               int32_t sample(std::span<float> l) override {
                                 return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
                               }
                             };
                             return std::make_unique<Argmax>();
                           },
                           {});
  auto server = serve(scripted);
  ASSERT_NE(server, nullptr);
  std::string whole = complete(prompt, n, false, server.get(), "scripted-synthetic");
  std::vector<std::string> pieces;
  std::string streamed = complete(prompt, n, true, server.get(), "scripted-synthetic", &pieces);
  EXPECT_EQ(whole, expected);
  EXPECT_EQ(streamed, whole);
  EXPECT_GT(pieces.size(), 5u);
  for (const auto& p : pieces) EXPECT_TRUE(valid_utf8(p)) << "a piece splits a character";
  server->stop(std::chrono::seconds(5));
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
