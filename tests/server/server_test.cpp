// Tests of the confidential server with the synthetic test-only model (fake_model.h): scheduler behaviour,
// every documented error status over TLS, concurrency, disconnects, signatures (checked by an independent
// Python implementation), RA-TLS evidence, and persistence across restarts.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "attest/attest.h"
#include "crypto/crypto.h"
#include "server/fake_model.h"
#include "server/http_client.h"
#include "server/server.h"
#include "support/sim_tee.h"
#include "support/temp_dir.h"

namespace veil::server {
namespace {

using json = nlohmann::json;
using namespace testing;
namespace fs = std::filesystem;

// ---- TextAssembler and scheduler -----------------------------------------------------------------------

// Pushes each byte of `bytes` as its byte token; returns what came out, one string per push.
std::vector<std::string> push_bytes(TextAssembler& t, std::string_view bytes) {
  std::vector<std::string> out;
  for (unsigned char c : bytes) out.push_back(t.push(c));
  return out;
}

TEST(TextAssembler, HoldsBackIncompleteUtf8) {
  const tokenizer::Tokenizer tok = byte_tokenizer();
  TextAssembler t(tokenizer::StreamDecoder(tok), {});
  EXPECT_EQ(push_bytes(t, "a\xE2\x82\xAC" "b"), (std::vector<std::string>{"a", "", "", "\xE2\x82\xAC", "b"}));
  EXPECT_EQ(t.push(0xFF), "\xEF\xBF\xBD");  // invalid byte -> U+FFFD
  EXPECT_EQ(t.push(0xE2), "");
  EXPECT_EQ(t.flush(), "\xEF\xBF\xBD");     // incomplete at the end -> U+FFFD
}

TEST(TextAssembler, StopStringAcrossPieces) {
  const tokenizer::Tokenizer tok = byte_tokenizer();
  TextAssembler t(tokenizer::StreamDecoder(tok), {"END", "xyz"});
  EXPECT_EQ(push_bytes(t, "hi E"), (std::vector<std::string>{"h", "i", " ", ""}));
  EXPECT_EQ(t.push('N'), "");
  EXPECT_EQ(t.push('D'), "");
  EXPECT_TRUE(t.stopped());
  EXPECT_EQ(t.push('a'), "");
  EXPECT_EQ(t.flush(), "");
  TextAssembler u(tokenizer::StreamDecoder(tok), {"END"});
  EXPECT_EQ(push_bytes(u, "EN"), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(u.push('x'), "ENx");  // ruled out
  EXPECT_FALSE(u.stopped());
  // A stop string made of a multi-byte character: held whole, never emitted in part.
  TextAssembler w(tokenizer::StreamDecoder(tok), {"\xE2\x82\xAC!"});
  EXPECT_EQ(push_bytes(w, "1\xE2\x82\xAC"), (std::vector<std::string>{"1", "", "", ""}));
  EXPECT_EQ(w.flush(), "\xE2\x82\xAC");
}

struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;
  bool done = false;
  bool wait_text() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return !text.empty() || done; });
  }
  GenerationEvent last;
  EventSink sink() {
    return [this](GenerationEvent&& ev) {
      std::lock_guard<std::mutex> lock(mu);
      text += ev.text;
      if (ev.finish != FinishReason::kNone) {
        done = true;
        last = ev;
      }
      cv.notify_all();
    };
  }
  bool wait() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return done; });
  }
};

std::vector<int32_t> prompt_ids(size_t n) {
  std::vector<int32_t> ids{kBos};
  for (size_t i = 1; i < n; ++i) ids.push_back('a');
  return ids;
}

TEST(Scheduler, BatchesSequencesAndChunksLongPrompts) {
  auto stats = std::make_shared<FakeModelStats>();
  BatchingOptions opt;
  opt.prefill_chunk = 8;
  opt.step_token_budget = 16;
  stats->hold = true;  // every request is queued before the first forward pass returns
  auto backend = make_fake_backend(4096, 8, opt, stats);
  struct Release {
    FakeModelStats& s;
    ~Release() { s.release(); }  // also when an assertion below returns early (before the backend stops)
  } release{*stats};
  std::vector<std::unique_ptr<Collected>> outs;
  std::vector<size_t> lens = {3, 5, 100, 7, 300, 2};
  for (size_t i = 0; i < lens.size(); ++i) {
    outs.push_back(std::make_unique<Collected>());
    GenerationRequest req;
    req.max_tokens = 40;
    req.client_id = "c" + std::to_string(i % 2);
    ASSERT_TRUE(backend->submit(req, prompt_ids(lens[i]), outs.back()->sink()).ok());
  }
  stats->release();  // (again at scope exit: harmless)
  for (size_t i = 0; i < lens.size(); ++i) {
    ASSERT_TRUE(outs[i]->wait());
    EXPECT_EQ(outs[i]->last.finish, FinishReason::kLength);
    EXPECT_EQ(outs[i]->text, expected_text(lens[i], 40)) << i;
    EXPECT_EQ(outs[i]->last.usage.prompt_tokens, lens[i]);
    EXPECT_EQ(outs[i]->last.usage.completion_tokens, 40u);
  }
  std::lock_guard<std::mutex> lock(stats->mu);
  EXPECT_EQ(stats->violation, "");
  EXPECT_GT(stats->max_seqs, 3u);                        // decode steps are shared
  EXPECT_LE(stats->max_tokens_one_seq, 8u);              // prompts are prefilled in chunks
  EXPECT_GT(stats->steps_mixing_prefill_and_decode, 0u); // running streams keep decoding during prefill
}

// A model that can overlap forward passes (a pipeline front) gets one lane per concurrent pass: two lanes are
// inside the model at once (the rendezvous would time out otherwise), requests spread over both, and every
// sequence still gets exactly its own greedy text.
TEST(Scheduler, LanesRunForwardPassesConcurrentlyOnDisjointSlots) {
  auto stats = std::make_shared<FakeModelStats>();
  stats->rendezvous = 2;
  auto backend = make_fake_backend(4096, 8, {}, stats, /*concurrent=*/2);
  EXPECT_EQ(backend->lanes(), 2u);
  std::vector<std::unique_ptr<Collected>> outs;
  for (size_t i = 0; i < 4; ++i) {
    outs.push_back(std::make_unique<Collected>());
    GenerationRequest req;
    req.max_tokens = 24;
    req.client_id = "c" + std::to_string(i);
    ASSERT_TRUE(backend->submit(req, prompt_ids(3 + i), outs.back()->sink()).ok());
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    ASSERT_TRUE(outs[i]->wait());
    EXPECT_EQ(outs[i]->last.finish, FinishReason::kLength);
    EXPECT_EQ(outs[i]->text, expected_text(3 + i, 24)) << i;
  }
  EXPECT_TRUE(backend->wait_idle(std::chrono::seconds(10)));
  std::lock_guard<std::mutex> lock(stats->mu);
  EXPECT_EQ(stats->violation, "");
  EXPECT_EQ(stats->max_inside, 2u);
}

TEST(Scheduler, LanesAreClampedToWhatTheModelAllows) {
  BatchingOptions opt;
  opt.lanes = 4;
  EXPECT_EQ(make_fake_backend(4096, 8, opt, std::make_shared<FakeModelStats>())->lanes(), 1u);
  EXPECT_EQ(make_fake_backend(4096, 2, opt, std::make_shared<FakeModelStats>(), 3)->lanes(), 2u);  // max_slots
  EXPECT_EQ(make_fake_backend(4096, 8, {}, std::make_shared<FakeModelStats>(), 3)->lanes(), 3u);
}

TEST(Scheduler, StopStringEndsGeneration) {
  auto backend = make_fake_backend(4096, 2, {}, std::make_shared<FakeModelStats>());
  Collected out;
  GenerationRequest req;
  req.max_tokens = 100;
  req.stop = {"time"};
  ASSERT_TRUE(backend->submit(req, {kBos}, out.sink()).ok());
  ASSERT_TRUE(out.wait());
  EXPECT_EQ(out.last.finish, FinishReason::kStop);
  EXPECT_EQ(out.text, "nce upon a ");
}

TEST(Scheduler, FullQueueRefusesAndCancelFreesTheSlot) {
  BatchingOptions opt;
  opt.max_queue = 1;
  auto backend = make_fake_backend(1u << 21, 1, opt, std::make_shared<FakeModelStats>());
  GenerationRequest longreq;
  longreq.max_tokens = 1u << 20;
  Collected a, b, c;
  auto ha = backend->submit(longreq, {kBos}, a.sink());
  ASSERT_TRUE(ha.ok());
  ASSERT_TRUE(a.wait_text());  // A holds the only slot
  GenerationRequest shortreq;
  shortreq.max_tokens = 4;
  auto hb = backend->submit(shortreq, {kBos}, b.sink());
  ASSERT_TRUE(hb.ok());
  auto hc = backend->submit(shortreq, {kBos}, c.sink());
  ASSERT_FALSE(hc.ok());
  EXPECT_EQ(hc.error().code(), ErrorCode::kResourceExhausted);
  (*ha)->cancel();
  ASSERT_TRUE(a.wait());
  EXPECT_EQ(a.last.finish, FinishReason::kCancelled);
  ASSERT_TRUE(b.wait());
  EXPECT_EQ(b.last.finish, FinishReason::kLength);
  EXPECT_EQ(b.text, expected_text(1, 4));
}

TEST(Scheduler, ShutdownDrainsThenRefuses) {
  auto backend = make_fake_backend(4096, 2, {}, std::make_shared<FakeModelStats>());
  Collected a;
  GenerationRequest req;
  req.max_tokens = 50;
  ASSERT_TRUE(backend->submit(req, {kBos}, a.sink()).ok());
  backend->shutdown(std::chrono::seconds(20));
  ASSERT_TRUE(a.wait());
  EXPECT_EQ(a.last.finish, FinishReason::kLength);
  Collected b;
  auto hb = backend->submit(req, {kBos}, b.sink());
  ASSERT_FALSE(hb.ok());
  EXPECT_EQ(hb.error().code(), ErrorCode::kUnavailable);
}

// ---- the server over TLS ---------------------------------------------------------------------------

class ServerTest : public ::testing::Test {
 protected:
  void TearDown() override { stop(); }

  void start(uint32_t slots = 16, uint32_t max_queue = 256, uint32_t ctx = 4096, bool tls = true) {
    auto tee = testsupport::make_sim_tee(dir_);
    ASSERT_TRUE(tee.ok()) << tee.error().message();
    provider_ = tee->provider;
    platform_pub_ = tee->collateral.items.at("sim_platform_public_key");
    auto store = Store::open(dir_ / "server.db");
    ASSERT_TRUE(store.ok()) << store.error().message();
    store_ = std::move(store).value();
    auto k = store_->add_key("test", {"veil-test-synthetic"}, 6000, 1000);
    ASSERT_TRUE(k.ok());
    key_ = *k;
    BatchingOptions bo;
    bo.max_queue = max_queue;
    stats_ = std::make_shared<FakeModelStats>();
    backend_ = make_fake_backend(ctx, slots, bo, stats_);
    auto root = provider_->sealing_root();
    ASSERT_TRUE(root.ok());
    ServerOptions so;
    so.port = 0;
    so.tls = tls;
    so.max_body_bytes = 64 * 1024;
    so.idle_timeout = idle_timeout_;
    tls_ = tls;
    auto s = Server::start(so, *backend_, *store_, *provider_, derive_signing_keys(root->view()));
    ASSERT_TRUE(s.ok()) << s.error().message();
    server_ = std::move(s).value();
    port_ = server_->port();
  }

  void stop() {
    if (server_) server_->stop(std::chrono::seconds(5));
    server_.reset();
    backend_.reset();
  }

  HttpResult get(const std::string& target, const std::string& key = {}) {
    return http_request(port_, tls_, "GET", target, "", key);
  }
  HttpResult post(const std::string& target, const std::string& body, const std::string& key) {
    return http_request(port_, tls_, "POST", target, body, key);
  }

  // Runs the independent Python verifier on `input`; returns its first output line.
  std::string python_verify(const json& input) {
    fs::path f = dir_ / ("verify_" + to_hex(crypto::random_bytes(4)) + ".json");
    std::ofstream(f) << input.dump();
    std::string cmd = std::string("/usr/bin/python3 ") + VEIL_SOURCE_DIR + "/tests/server/verify_signatures.py " +
                      f.string() + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return "popen failed";
    std::string out;
    char buf[512];
    while (fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  testsupport::TempDir tmp_{"veil-server-test"};
  fs::path dir_ = tmp_.path();
  std::shared_ptr<attest::Provider> provider_;
  Bytes platform_pub_;
  std::unique_ptr<Store> store_;
  std::string key_;
  std::shared_ptr<FakeModelStats> stats_;
  std::unique_ptr<BatchingBackend> backend_;
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;
  bool tls_ = true;
  std::chrono::seconds idle_timeout_{60};
};

std::string completion_req(const std::string& prompt, int max_tokens, bool stream = false,
                           const std::string& model = "veil-test-synthetic") {
  return json{{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"stream", stream},
              {"temperature", 0}}.dump();
}

TEST_F(ServerTest, HealthModelsAndMetrics) {
  start();
  auto h = get("/health");
  ASSERT_EQ(h.error, "");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(json::parse(h.body)["status"], "ok");
  auto m = get("/v1/models", key_);
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(json::parse(m.body)["data"][0]["id"], "veil-test-synthetic");
  auto r = post("/v1/completions", completion_req("Hi", 5), key_);
  EXPECT_EQ(r.status, 200);
  auto met = get("/metrics");
  EXPECT_EQ(met.status, 200);
  EXPECT_NE(met.body.find("veil_http_requests_total{route=\"completions\",status=\"200\"} 1"), std::string::npos);
  EXPECT_NE(met.body.find("veil_completion_tokens_total 5"), std::string::npos);
  EXPECT_NE(met.body.find("veil_time_to_first_token_seconds_count 1"), std::string::npos);
  // One pass for the prompt (it yields the first token), one per further token; one sequence in each.
  EXPECT_NE(met.body.find("veil_forward_passes_total 5\n"), std::string::npos) << met.body;
  EXPECT_NE(met.body.find("veil_forward_sequences_total 5\n"), std::string::npos) << met.body;
  EXPECT_EQ(met.body.find("Hi"), std::string::npos);  // no content in metrics
}

TEST_F(ServerTest, CompletionTextUsageAndIndependentSignatureCheck) {
  start();
  std::string body = completion_req("Hello", 12);
  auto r = post("/v1/completions", body, key_);
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], expected_text(6, 12));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 6);
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  std::string id = j["id"];
  auto s = get("/v1/signature/" + id);
  ASSERT_EQ(s.status, 200);
  auto sig = json::parse(s.body);
  std::string nonce = to_hex(crypto::random_bytes(32));
  auto a = get("/v1/attestation?nonce=" + nonce);
  ASSERT_EQ(a.status, 200) << a.body;
  json in = {{"signature", sig}, {"request_body", body}, {"response_body", r.body}, {"attestation", json::parse(a.body)},
             {"nonce", nonce}, {"platform_public_key", to_hex(platform_pub_)}};
  EXPECT_EQ(python_verify(in), "OK");
  // The same signature must not verify against a different response.
  json bad = in;
  bad["response_body"] = r.body + " ";
  EXPECT_EQ(python_verify(bad), "FAIL: response hash mismatch");
  bad = in;
  bad["nonce"] = to_hex(crypto::random_bytes(32));
  EXPECT_NE(python_verify(bad), "OK");
  // And our own C++ check of one signature.
  const auto& e = sig["signatures"][0];
  ASSERT_EQ(e["algorithm"], "ed25519");
  auto pk = from_hex(e["public_key"].get<std::string>());
  auto sg = from_hex(e["signature"].get<std::string>());
  ASSERT_TRUE(pk.ok() && sg.ok());
  EXPECT_TRUE(crypto::ed25519_verify(*pk, as_bytes(sig["text"].get<std::string>()), *sg));
}

TEST_F(ServerTest, ChatStreamEventsAndHashChain) {
  start();
  std::string body = json{{"model", "veil-test-synthetic"},
                          {"messages", {{{"role", "user"}, {"content", "Tell me"}}}},
                          {"max_tokens", 20},
                          {"stream", true},
                          {"stream_options", {{"include_usage", true}}}}.dump();
  auto r = post("/v1/chat/completions", body, key_);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  std::vector<std::string> raw;
  auto events = sse_events(r.body, &raw);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  raw.pop_back();
  std::string text;
  std::string id;
  bool saw_finish = false, saw_usage = false;
  size_t n_prompt = std::string("user: Tell me\nassistant: ").size() + 1;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto j = json::parse(events[i]);
    EXPECT_EQ(j["object"], "chat.completion.chunk");
    id = j["id"];
    if (j.contains("usage")) {
      saw_usage = true;
      EXPECT_EQ(j["usage"]["completion_tokens"], 20);
      EXPECT_EQ(j["usage"]["prompt_tokens"], n_prompt);
      continue;
    }
    auto& c = j["choices"][0];
    if (c["finish_reason"].is_string()) {
      saw_finish = true;
      EXPECT_EQ(c["finish_reason"], "length");
    } else {
      text += c["delta"]["content"].get<std::string>();
    }
  }
  EXPECT_TRUE(saw_finish);
  EXPECT_TRUE(saw_usage);
  EXPECT_EQ(text, expected_text(n_prompt, 20));
  auto s = get("/v1/signature/" + id);
  ASSERT_EQ(s.status, 200);
  json in = {{"signature", json::parse(s.body)}, {"request_body", body}, {"events", raw}};
  EXPECT_EQ(python_verify(in), "OK");
  std::swap(raw[0], raw[1]);  // order matters
  in["events"] = raw;
  EXPECT_EQ(python_verify(in), "FAIL: response hash mismatch");
}

TEST_F(ServerTest, EveryErrorHasItsStatusAndTheServerKeepsServing) {
  start(16, 256, 256);
  auto code_of = [](const HttpResult& r) {
    auto j = json::parse(r.body, nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"]["type"].get<std::string>() : std::string("<no error>");
  };
  auto r = post("/v1/completions", "{not json", key_);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(code_of(r), "invalid_request_error");
  r = post("/v1/completions", json{{"model", "veil-test-synthetic"}, {"prompt", "x"}, {"logprobs", 2}}.dump(), key_);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "logprobs");
  r = post("/v1/completions", json{{"model", "veil-test-synthetic"}, {"prompt", "x"}, {"temperature", 9}}.dump(), key_);
  EXPECT_EQ(r.status, 400);
  r = post("/v1/chat/completions", json{{"model", "veil-test-synthetic"}, {"messages", json::array()}}.dump(), key_);
  EXPECT_EQ(r.status, 400);
  r = post("/v1/completions", completion_req("x", 4), "");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(code_of(r), "authentication_error");
  r = post("/v1/completions", completion_req("x", 4), "vk_0000000000000000_" + std::string(64, '0'));
  EXPECT_EQ(r.status, 401);
  std::string wrong = key_;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  r = post("/v1/completions", completion_req("x", 4), wrong);
  EXPECT_EQ(r.status, 401);
  r = post("/v1/completions", completion_req("x", 4, false, "gpt-4"), key_);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(code_of(r), "not_found_error");
  r = get("/v1/nothing-here", key_);
  EXPECT_EQ(r.status, 404);
  {
    // Over the body limit: refused on the Content-Length alone, before any body byte is read.
    HttpConnection c(port_, true);
    ASSERT_TRUE(c.connect());
    ASSERT_TRUE(c.send("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + key_ +
                       "\r\nContent-Type: application/json\r\nContent-Length: 102400\r\n\r\n"));
    r = c.read_response();
    EXPECT_EQ(r.status, 413);
    EXPECT_EQ(code_of(r), "invalid_request_error");
  }
  r = post("/v1/completions", completion_req(std::string(300, 'a'), 4), key_);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "context_length_exceeded");
  r = post("/v1/completions", completion_req("abc", 254), key_);
  EXPECT_EQ(r.status, 413);
  r = get("/v1/signature/cmpl-unknown");
  EXPECT_EQ(r.status, 404);
  r = get("/v1/attestation?nonce=zz");
  EXPECT_EQ(r.status, 400);
  // Rate limit: a key with a bucket of 2 and a refill of one request per hour.
  auto limited = store_->add_key("limited", {"*"}, 1.0 / 60, 2);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(post("/v1/completions", completion_req("x", 2), *limited).status, 200);
  EXPECT_EQ(post("/v1/completions", completion_req("x", 2), *limited).status, 200);
  r = post("/v1/completions", completion_req("x", 2), *limited);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(code_of(r), "rate_limit_error");
  // A revoked key is refused.
  auto keys = store_->list_keys();
  ASSERT_TRUE(keys.ok());
  for (const auto& k : *keys) {
    if (k.name == "limited") {
      ASSERT_TRUE(store_->revoke_key(k.id).ok());
    }
  }
  EXPECT_EQ(post("/v1/completions", completion_req("x", 2), *limited).status, 401);
  // Still serving.
  r = post("/v1/completions", completion_req("ok", 3), key_);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["choices"][0]["text"], expected_text(3, 3));
}

// Starts a stream with an effectively endless max_tokens and returns the connection after the first event.
std::unique_ptr<HttpConnection> open_endless_stream(uint16_t port, const std::string& key) {
  auto c = std::make_unique<HttpConnection>(port, true);
  if (!c->connect()) return nullptr;
  if (!c->send(make_request("POST", "/v1/completions", completion_req("x", 1 << 20, true), key))) return nullptr;
  while (c->buffer().find("data: ") == std::string::npos) {
    if (!c->fill()) return nullptr;
  }
  return c;
}

TEST_F(ServerTest, FullQueueGets503AndDisconnectFreesTheSlot) {
  start(1, 1, 1u << 21);
  auto a = open_endless_stream(port_, key_);
  ASSERT_NE(a, nullptr);
  // The slot is busy: one request may wait, the next is refused.
  auto waiting = std::async(std::launch::async, [&] { return post("/v1/completions", completion_req("y", 5), key_); });
  // Poll the queue through the public stats until the waiting request is queued (bounded by its own timeout).
  while (backend_->stats().queued == 0 && waiting.wait_for(std::chrono::milliseconds(1)) != std::future_status::ready) {
  }
  auto r = post("/v1/completions", completion_req("z", 5), key_);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(json::parse(r.body)["error"]["type"], "server_overloaded");
  // The streaming client goes away: its slot must be freed, so the waiting request completes.
  a->close();
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto w = waiting.get();
  EXPECT_EQ(w.status, 200);
  EXPECT_EQ(json::parse(w.body)["choices"][0]["text"], expected_text(2, 5));
  EXPECT_EQ(backend_->stats().running, 0u);
}

TEST_F(ServerTest, ClientLeavingANonStreamingRequestCancelsItsSequence) {
  for (bool tls : {true, false}) {
    start(1, 4, 1u << 21, tls);
    HttpConnection c(port_, tls);
    ASSERT_TRUE(c.connect());
    // An effectively endless non-streaming request: nothing is written back until it ends.
    ASSERT_TRUE(c.send(make_request("POST", "/v1/completions", completion_req("x", 1 << 20), key_)));
    ASSERT_TRUE(stats_->wait_forwards(2));  // prefilled and decoding: it holds the only slot
    EXPECT_EQ(backend_->stats().running, 1u);
    c.close();
    // The server notices the closed socket while it waits and cancels: the slot count returns to zero.
    ASSERT_TRUE(backend_->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(backend_->stats().running, 0u);
    {
      // Cancelled, not run to its end: far fewer passes than the 2^20 tokens it asked for.
      std::lock_guard<std::mutex> lock(stats_->mu);
      EXPECT_LT(stats_->forwards, size_t{1} << 16);
    }
    auto r = post("/v1/completions", completion_req("y", 5), key_);  // and the slot serves the next request
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(json::parse(r.body)["choices"][0]["text"], expected_text(2, 5));
    stop();
  }
}

// After a response, the read that watched for a disconnect stays pending for the next request: a client that then
// sends nothing is still closed after idle_timeout (no connection is held forever).
TEST_F(ServerTest, IdleKeepAliveConnectionIsClosedAfterAGeneration) {
  idle_timeout_ = std::chrono::seconds(1);
  start();
  for (bool stream : {false, true}) {
    HttpConnection c(port_, true);
    ASSERT_TRUE(c.connect());
    ASSERT_TRUE(c.send(make_request("POST", "/v1/completions", completion_req("ab", 3, stream), key_, true)));
    ASSERT_EQ(c.read_response().status, 200);
    // The server closes: the next read ends (bounded by the client's 20 s receive timeout).
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(c.fill());
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  }
}

TEST_F(ServerTest, SixtyFourConcurrentStreamingClients) {
  start(16, 256);
  constexpr int kClients = 64;
  std::vector<std::future<std::string>> results;
  for (int i = 0; i < kClients; ++i) {
    results.push_back(std::async(std::launch::async, [this, i]() -> std::string {
      std::string prompt(static_cast<size_t>(i % 7 + 1), 'p');
      auto r = post("/v1/completions", completion_req(prompt, 24, true), key_);
      if (!r.error.empty()) return "transport: " + r.error;
      if (r.status != 200) return "status " + std::to_string(r.status);
      auto ev = sse_events(r.body);
      if (ev.empty() || ev.back() != "[DONE]") return "no [DONE]";
      std::string text;
      for (size_t k = 0; k + 1 < ev.size(); ++k) {
        auto j = json::parse(ev[k]);
        if (j["choices"][0]["finish_reason"].is_null()) text += j["choices"][0]["text"].get<std::string>();
      }
      if (text != expected_text(prompt.size() + 1, 24)) return "wrong text";
      return "";
    }));
  }
  for (auto& f : results) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(120)), std::future_status::ready);
    EXPECT_EQ(f.get(), "");
  }
  std::lock_guard<std::mutex> lock(stats_->mu);
  EXPECT_EQ(stats_->violation, "");
}

TEST_F(ServerTest, RaTlsCertificateCarriesVerifiableEvidence) {
  start();
  HttpConnection c(port_, true);
  ASSERT_TRUE(c.connect());
  auto der = c.peer_certificate_der();
  ASSERT_FALSE(der.empty());
  auto info = read_ratls_certificate(der);
  ASSERT_TRUE(info.ok()) << info.error().message();
  auto ext = json::parse(info->extension_json);
  EXPECT_EQ(ext["tls_spki_sha256"], to_hex(info->spki_sha256));
  auto ev = attest::evidence_from_json(ext["evidence"].dump());
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  auto policy = attest::parse_policy(R"({"allowed_types": ["sim"], "allow_simulated": true})");
  ASSERT_TRUE(policy.ok()) << policy.error().message();
  attest::Collateral col;
  col.items["sim_platform_public_key"] = platform_pub_;
  auto expected = report_data_binding({}, info->spki_sha256, server_->signing_keys());
  auto claims = attest::verify_evidence(*ev, col, *policy, expected, std::chrono::system_clock::now());
  EXPECT_TRUE(claims.ok()) << claims.error().message();
  // A different TLS key would not match the evidence.
  crypto::Sha256Digest other = info->spki_sha256;
  other[0] ^= 1;
  auto wrong = report_data_binding({}, other, server_->signing_keys());
  EXPECT_FALSE(attest::verify_evidence(*ev, col, *policy, wrong, std::chrono::system_clock::now()).ok());
}

TEST_F(ServerTest, KeysAndSignaturesSurviveARestart) {
  start();
  auto r = post("/v1/completions", completion_req("persist", 4), key_);
  ASSERT_EQ(r.status, 200);
  std::string id = json::parse(r.body)["id"];
  auto before = get("/v1/signature/" + id);
  ASSERT_EQ(before.status, 200);
  stop();
  store_.reset();
  start();  // reopens the same database file, adds a second key
  auto again = get("/v1/signature/" + id);
  ASSERT_EQ(again.status, 200);
  EXPECT_EQ(json::parse(again.body), json::parse(before.body));
  auto keys = store_->list_keys();
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->size(), 2u);
  // The first key still authenticates after the restart.
  EXPECT_EQ(post("/v1/completions", completion_req("x", 2), key_).status, 200);
}

TEST_F(ServerTest, KeepAliveConnectionServesAGenerationThenAStream) {
  start();
  HttpConnection c(port_, true);
  ASSERT_TRUE(c.connect());
  ASSERT_TRUE(c.send(make_request("POST", "/v1/completions", completion_req("abc", 5), key_, true)));
  auto a = c.read_response();
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(json::parse(a.body)["choices"][0]["text"], expected_text(4, 5));
  ASSERT_TRUE(c.send(make_request("POST", "/v1/completions", completion_req("abc", 5, true), key_, true)));
  auto b = c.read_response();
  ASSERT_EQ(b.status, 200);
  auto ev = sse_events(b.body);
  ASSERT_EQ(ev.size(), 7u);  // 5 text events, the finish event, [DONE]
  EXPECT_EQ(ev.back(), "[DONE]");
  ASSERT_TRUE(c.send(make_request("GET", "/health", "", "", true)));
  EXPECT_EQ(c.read_response().status, 200);
}

TEST_F(ServerTest, PlainHttpWorksWhenTlsIsOff) {
  start(4, 16, 4096, /*tls=*/false);
  EXPECT_EQ(server_->tls_identity(), nullptr);
  auto r = post("/v1/completions", completion_req("abc", 3), key_);
  EXPECT_EQ(r.status, 200);
}

TEST_F(ServerTest, GracefulStopFinishesRunningStream) {
  start(4, 16);
  auto c = std::make_unique<HttpConnection>(port_, true);
  ASSERT_TRUE(c->connect());
  ASSERT_TRUE(c->send(make_request("POST", "/v1/completions", completion_req("x", 2000, true), key_)));
  while (c->buffer().find("data: ") == std::string::npos) ASSERT_TRUE(c->fill());
  auto stopper = std::async(std::launch::async, [&] { server_->stop(std::chrono::seconds(20)); });
  auto res = c->read_response();
  ASSERT_EQ(res.error, "");
  auto ev = sse_events(res.body);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back(), "[DONE]");
  ASSERT_EQ(stopper.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_NE(get("/health").error, "");  // no longer listening
}

}  // namespace
}  // namespace veil::server
