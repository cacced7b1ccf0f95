// Pipeline runtime: 1, 2 and 3 stages (in-process StageServers on 127.0.0.1, sim attestation, AES-256-GCM
// channels) driven by the front's PipelineStepModel, against one engine in-process, on a SYNTHETIC model.
//   VEIL_BENCH_MODEL=/tmp/gpt2-124m-q8.gguf veil_bench_pipeline     (veil synth --shape gpt2-124m --type Q8_0 ...)
// Threads: 1 stage gets 2, each of 2 or 3 stages gets 1 (the "all on the same 2 cores").
// Layers split as `veil manifest create` proposes (balance:1, the output head counted in the last stage) or in
// equal counts (balance:0). Counters: last_stage_layers, lanes (concurrent forward passes: one per stage when
// several sequences are in flight), ttft_ms (prefill of a 32-token prompt), decode_ms_p50 / p95 per step, tok_s
// (decode tokens per second over all sequences). Also the wire micro-benchmarks: encode/decode of a 128 KiB activation message, and the relay
// forwarding one (BM_Relay128K).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "pipeline/runtime.h"
#include "support/sim_tee.h"

namespace veil::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::shared_ptr<const gguf::File> bench_model() {
  static std::shared_ptr<const gguf::File> file = []() -> std::shared_ptr<const gguf::File> {
    const char* p = std::getenv("VEIL_BENCH_MODEL");
    if (!p || !*p) return nullptr;
    auto f = gguf::File::open(p);
    if (!f.ok()) return nullptr;
    return std::make_shared<const gguf::File>(std::move(*f));
  }();
  return file;
}

struct Cluster {
  std::filesystem::path dir;
  std::vector<std::unique_ptr<StageServer>> stages;
  std::unique_ptr<PipelineStepModel> front;
  uint32_t last_stage_layers = 0;
  ~Cluster() {
    front.reset();
    stages.clear();
    std::filesystem::remove_all(dir);
  }
};

// balance: split the layers as `veil manifest create` does (decode_costs: the output head counted in the last
// stage), or, for comparison, into equal layer counts.
Result<std::unique_ptr<Cluster>> make_cluster(uint32_t n_stages, uint32_t slots, bool balance) {
  auto c = std::make_unique<Cluster>();
  c->dir = std::filesystem::temp_directory_path() / fmt::format("veil-pipeline-bench-{}", ::getpid());
  std::filesystem::create_directories(c->dir);
  VEIL_ASSIGN_OR_RETURN(testsupport::SimTee tee, testsupport::make_sim_tee(c->dir));
  const attest::Policy policy = tee.policy();

  VEIL_ASSIGN_OR_RETURN(auto whole, engine::Model::load(bench_model()));
  const uint32_t n_layers = whole->hparams().n_layer;
  std::vector<TensorSize> sizes;
  for (const auto& t : whole->file().tensors()) sizes.push_back({t.name, t.n_bytes});
  const DecodeCosts costs = decode_costs(sizes);
  VEIL_ASSIGN_OR_RETURN(auto ranges, balance ? balance_stages(costs, n_stages)
                                             : balance_layers(std::vector<uint64_t>(n_layers, 1), n_stages));
  c->last_stage_layers = ranges.back().second - ranges.back().first;
  ShardManifest m;
  m.model_id = "synthetic";
  m.model_version = 1;
  m.sealed_model_sha256 = Bytes(32, 0);
  m.n_layers = n_layers;
  for (uint32_t i = 0; i < n_stages; ++i) {
    StageSpec s;
    s.index = i;
    s.layer_begin = ranges[i].first;
    s.layer_end = ranges[i].second;
    s.weights_sha256 = Bytes(32, 0);
    s.endpoint = "tcp:127.0.0.1:0";
    s.policy = policy;
    m.stages.push_back(s);
  }
  c->stages.resize(n_stages);
  for (uint32_t i = n_stages; i-- > 0;) {  // the last first: a stage reads its successor's endpoint from the manifest
    VEIL_ASSIGN_OR_RETURN(auto model, engine::Model::load(bench_model(), {.layers = {ranges[i].first, ranges[i].second}}));
    StageOptions so;
    so.threads = n_stages == 1 ? 2 : 1;
    so.max_slots = slots;
    so.n_ctx = 256;
    so.channel.attester = channel::attester_from_provider(tee.provider);
    so.collateral = tee.collateral;
    VEIL_ASSIGN_OR_RETURN(c->stages[i], StageServer::start(m, i, model, so));
    m.stages[i].endpoint = c->stages[i]->address();
  }
  FrontOptions fo;
  fo.collateral = tee.collateral;
  fo.health_interval = 0ms;
  VEIL_ASSIGN_OR_RETURN(c->front, PipelineStepModel::connect(m, fo));
  return c;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// One lane's sequences (slots [first, first + n)): a prefill of the prompt, then kDecode decode steps.
struct LaneRun {
  double ttft_ms = 0;
  std::vector<double> step_ms;
  std::string error;
};

constexpr int kPrompt = 32, kDecode = 32;

// TTFT is measured from `start`, one instant for every lane taken before any lane resets its slots: a lane whose
// reset waits behind another lane's prefill (the relaying front held a stage's link for a whole exchange) must not
// start its clock late.
void run_lane(server::StepModel& m, uint32_t first, uint32_t n, Clock::time_point start, std::barrier<>& decode_start,
              LaneRun& r) {
  std::vector<int32_t> prompt(kPrompt);
  for (int i = 0; i < kPrompt; ++i) prompt[i] = 100 + i;
  std::vector<float> logits;
  std::vector<server::StepInput> batch;
  for (uint32_t s = 0; s < n; ++s) m.reset_slot(first + s);
  for (uint32_t s = 0; s < n; ++s) batch.push_back({first + s, prompt, 0, true});
  const auto t0 = start;
  Status st = m.forward(batch, logits);
  r.ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  decode_start.arrive_and_wait();
  if (!st.ok()) {
    r.error = "prefill failed: " + st.error().message();
    return;
  }
  std::vector<int32_t> next(n, 7);
  for (int t = 0; t < kDecode; ++t) {
    batch.clear();
    for (uint32_t s = 0; s < n; ++s) batch.push_back({first + s, std::span<const int32_t>(&next[s], 1), uint32_t(kPrompt + t), true});
    auto t1 = Clock::now();
    st = m.forward(batch, logits);
    if (!st.ok()) {
      r.error = "decode failed: " + st.error().message();
      return;
    }
    r.step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t1).count());
  }
}

// args: stages, sequences in flight, most lanes (0: as many as the front allows). The sequences are split over as many lanes (threads with their own forward
// passes, as the serving scheduler runs them) as the front allows: one per stage, so each stage works on one
// lane's batch while the next stage works on another's.
void BM_PipelineDecode(benchmark::State& state) {
  if (!bench_model()) {
    state.SkipWithError("set VEIL_BENCH_MODEL to a GGUF (veil synth --shape gpt2-124m --type Q8_0)");
    return;
  }
  const auto n_stages = static_cast<uint32_t>(state.range(0));
  const auto n_seq = static_cast<uint32_t>(state.range(1));
  auto cluster = make_cluster(n_stages, n_seq, state.range(3) != 0);
  if (!cluster.ok()) {
    state.SkipWithError(cluster.error().message().c_str());
    return;
  }
  server::StepModel& m = *(*cluster)->front;
  const uint32_t lanes = std::min({n_seq, m.max_concurrent_forwards(), state.range(2) > 0 ? uint32_t(state.range(2)) : n_seq});
  std::vector<double> ttft, steps;
  double decode_s = 0;
  for (auto _ : state) {
    std::vector<LaneRun> runs(lanes);
    std::barrier<> decode_start(static_cast<std::ptrdiff_t>(lanes) + 1);
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    for (uint32_t l = 0, first = 0; l < lanes; ++l) {
      const uint32_t n = n_seq / lanes + (l < n_seq % lanes ? 1 : 0);
      threads.emplace_back(run_lane, std::ref(m), first, n, start, std::ref(decode_start), std::ref(runs[l]));
      first += n;
    }
    decode_start.arrive_and_wait();
    auto t0 = Clock::now();
    for (auto& t : threads) t.join();
    decode_s += std::chrono::duration<double>(Clock::now() - t0).count();
    double first_token = 0;
    for (const LaneRun& r : runs) {
      if (!r.error.empty()) {
        state.SkipWithError(r.error.c_str());
        return;
      }
      first_token = std::max(first_token, r.ttft_ms);
      steps.insert(steps.end(), r.step_ms.begin(), r.step_ms.end());
    }
    ttft.push_back(first_token);
  }
  state.counters["lanes"] = lanes;
  state.counters["last_stage_layers"] = static_cast<double>((*cluster)->last_stage_layers);
  state.counters["ttft_ms"] = percentile(ttft, 0.5);
  state.counters["decode_ms_p50"] = percentile(steps, 0.5);
  state.counters["decode_ms_p95"] = percentile(steps, 0.95);
  state.counters["tok_s"] = decode_s > 0 ? static_cast<double>(state.iterations()) * kDecode * n_seq / decode_s : 0;
}
BENCHMARK(BM_PipelineDecode)
    ->ArgNames({"stages", "seqs", "lanes", "balance"})
    ->Args({1, 1, 0, 1})->Args({2, 1, 0, 1})->Args({3, 1, 0, 1})
    ->Args({1, 4, 0, 1})->Args({2, 4, 1, 1})->Args({2, 4, 0, 1})->Args({3, 4, 1, 1})->Args({3, 4, 0, 1})
    ->Args({3, 4, 2, 1})
    ->Args({2, 1, 0, 0})->Args({3, 1, 0, 0})->Args({2, 4, 0, 0})->Args({3, 4, 0, 0})
    ->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();

Message activation_message(size_t bytes) {
  Message m;
  m.type = MsgType::kForward;
  m.segments = {{0, 0, 1, true}};
  m.values.assign(bytes / sizeof(float), 0.25f);
  return m;
}

void BM_WireEncode128K(benchmark::State& state) {
  Message m = activation_message(128 << 10);
  for (auto _ : state) benchmark::DoNotOptimize(encode_message(m));
  state.SetBytesProcessed(int64_t(state.iterations()) * (128 << 10));
}
BENCHMARK(BM_WireEncode128K);

void BM_WireDecode128K(benchmark::State& state) {
  Bytes b = encode_message(activation_message(128 << 10));
  for (auto _ : state) benchmark::DoNotOptimize(decode_message(b));
  state.SetBytesProcessed(int64_t(state.iterations()) * (128 << 10));
}
BENCHMARK(BM_WireDecode128K);

// Relay mode: a 128 KiB message through the host relay (client -> relay -> sink on 127.0.0.1), the sink answering
// one byte when it has the whole message. Arg relay=0 is the same exchange straight to the sink, for comparison.
constexpr size_t kMessage = 128 << 10;

void BM_Relay128K(benchmark::State& state) {
  auto listener = channel::listen(*channel::parse_endpoint("tcp:127.0.0.1:0"));
  if (!listener.ok()) return state.SkipWithError(listener.error().message().c_str());
  std::thread sink([&l = **listener] {
    auto t = l.accept(channel::deadline_in(30s));
    if (!t.ok()) return;
    Bytes buf(kMessage);
    const uint8_t ack = 1;
    while ((*t)->read_exact(buf, channel::Deadline::max()).ok() &&
           (*t)->write_all(std::array{ByteView(&ack, 1)}, channel::Deadline::max()).ok()) {
    }
  });
  std::unique_ptr<Relay> relay;
  std::string to = (*listener)->address();
  if (state.range(0)) {
    RelayOptions ro;
    ro.listen = "127.0.0.1:0";
    ro.target = to;
    auto r = Relay::start(std::move(ro));
    if (!r.ok()) {
      (*listener)->close();
      sink.join();
      return state.SkipWithError(r.error().message().c_str());
    }
    relay = std::move(*r);
    to = relay->address();
  }
  auto ep = channel::parse_endpoint(to);
  auto client = channel::connect(*ep, channel::deadline_in(5s));
  if (!client.ok()) {
    (*listener)->close();
    sink.join();
    return state.SkipWithError(client.error().message().c_str());
  }
  Bytes message(kMessage, 0x5a);
  uint8_t ack = 0;
  for (auto _ : state) {
    auto deadline = channel::deadline_in(5s);
    if (!(*client)->write_all(std::array{ByteView(message)}, deadline).ok() ||
        !(*client)->read_exact(std::span<uint8_t>(&ack, 1), deadline).ok()) {
      state.SkipWithError("relay exchange failed");
      break;
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kMessage));
  client->reset();  // the sink sees the end of the stream and returns
  sink.join();
}
BENCHMARK(BM_Relay128K)->ArgName("relay")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace veil::pipeline

BENCHMARK_MAIN();
