// Aggregate generation throughput of `veil serve`'s stack (TLS, API keys, signing, continuous batching, engine)
// at 1, 4 and 16 concurrent clients, each POSTing /v1/completions for 64 new greedy tokens after a ~20-token prompt,
// as anchors.md measured llama.cpp's llama-server (113 / 198 / 348 tok/s on SYNTHETIC GPT-2 124M Q8_0, 2 threads).
//
//   veil synth --shape gpt2-124m --type Q8_0 --vocab ../shared/models/gpt2-tokenizer/encoder.json -o /tmp/gpt2-q8.gguf
//   VEIL_BENCH_MODEL=/tmp/gpt2-q8.gguf VEIL_BENCH_THREADS=2 build/release/bench/veil_bench_server
// Without VEIL_BENCH_MODEL it runs on stories260K (a tiny real model: fast, useful for overhead only).
// Reported counter: tok_per_s = completion tokens of all clients / wall time of the round.
// This runs the stack in-process; bench/server-load.sh measures a real `veil serve` process end to end against the
// anchors (docs/benchmarks.md, "Serving").
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>

#include "../tests/server/http_client.h"
#include "attest/attest.h"
#include "crypto/crypto.h"
#include "gguf/gguf.h"
#include "server/engine_backend.h"
#include "server/server.h"
#include "support/sim_tee.h"

namespace {

using namespace veil;
using json = nlohmann::json;

struct Stack {
  std::filesystem::path dir;
  std::unique_ptr<server::BatchingBackend> backend;
  std::shared_ptr<attest::Provider> provider;
  std::unique_ptr<server::Store> store;
  std::unique_ptr<server::Server> srv;
  std::string key;
  std::string error;

  Stack() {
    const char* m = std::getenv("VEIL_BENCH_MODEL");
    std::string path = m && *m ? m : VEIL_SHARED_DIR "/models/stories260K/stories260K.gguf";
    const char* t = std::getenv("VEIL_BENCH_THREADS");
    auto file = gguf::File::open(path);
    if (!file.ok()) {
      error = file.error().message();
      return;
    }
    server::EngineBackendOptions eo;
    eo.threads = t && *t ? static_cast<uint32_t>(std::atoi(t)) : 2;
    eo.context = 512;
    eo.batching.max_slots = 16;
    auto b = server::make_engine_backend(std::make_shared<const gguf::File>(std::move(file).value()), eo);
    if (!b.ok()) {
      error = b.error().message();
      return;
    }
    backend = std::move(b).value();
    dir = std::filesystem::temp_directory_path() / ("veil_server_bench_" + to_hex(crypto::random_bytes(6)));
    std::filesystem::create_directories(dir);
    auto tee = testsupport::make_sim_tee(dir);
    auto s = server::Store::open(dir / "server.db");
    if (!tee.ok() || !s.ok()) {
      error = "provider or store failed";
      return;
    }
    provider = tee->provider;
    store = std::move(s).value();
    key = *store->add_key("bench", {"*"}, 1e9, 1000000);
    auto root = provider->sealing_root();
    server::ServerOptions so;
    so.port = 0;
    auto srv_r = server::Server::start(so, *backend, *store, *provider, server::derive_signing_keys(root->view()));
    if (!srv_r.ok()) {
      error = srv_r.error().message();
      return;
    }
    srv = std::move(srv_r).value();
  }
  ~Stack() {
    if (srv) srv->stop(std::chrono::seconds(5));
    srv.reset();
    backend.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

Stack& stack() {
  static Stack s;
  return s;
}

// One client: a fresh TLS connection, one completion; returns the completion tokens (or -1).
int one_request(Stack& s, int client) {
  std::string prompt = "Once upon a time in a small village near the sea there lived an old man called " +
                        std::to_string(client);
  std::string body = json{{"model", s.backend->model_id()}, {"prompt", prompt}, {"max_tokens", 64},
                          {"temperature", 0}}.dump();
  auto r = veil::server::testing::http_request(s.srv->port(), true, "POST", "/v1/completions", body, s.key);
  if (r.status != 200) return -1;
  return json::parse(r.body)["usage"]["completion_tokens"].get<int>();
}

void BM_ServerAggregateThroughput(benchmark::State& state) {
  Stack& s = stack();
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  int clients = static_cast<int>(state.range(0));
  int64_t tokens = 0;
  double seconds = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::future<int>> f;
    for (int c = 0; c < clients; ++c) f.push_back(std::async(std::launch::async, one_request, std::ref(s), c));
    for (auto& x : f) {
      int n = x.get();
      if (n < 0) {
        state.SkipWithError("a request failed");
        return;
      }
      tokens += n;
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["tok_per_s"] = seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
  state.counters["clients"] = clients;
}

BENCHMARK(BM_ServerAggregateThroughput)->Arg(1)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime()
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
