// veil bench: memory read bandwidth (--bandwidth) and model speed (-m MODEL): prefill tok/s, decode tok/s, time
// to first token, peak memory, and decode's share of the memory roofline (docs/benchmarks.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/command.h"
#include "cli/model_source.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"

namespace veil::cli {
namespace {

struct BenchArgs {
  bool bandwidth = false;
  std::string model;
  int prompt = 128;
  int n = 128;
  int depth = 0;  // tokens already in the KV cache when the timed decode starts
  int reps = 3;
  unsigned threads = 0;
  size_t size_mib = 1024;
  bool pin = false;
  engine::KvType kv_type = engine::KvType::kF32;
  bool json = false;
  ModelSourceOptions source;
};

using Clock = std::chrono::steady_clock;
double secs_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void print(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

unsigned default_threads() { return std::clamp(std::thread::hardware_concurrency(), 1u, 8u); }

// Peak resident set (VmHWM) in bytes, 0 if unknown.
uint64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

Result<kernels::BandwidthResult> bandwidth(unsigned threads, size_t mib, bool pin) {
  kernels::ThreadPool pool(static_cast<int>(threads), pin);
  return kernels::measure_read_bandwidth(pool, mib << 20, 3);
}

Status run_bandwidth(const BenchArgs& a) {
  if (a.size_mib < 1) return make_error(ErrorCode::kUsage, "bench: --size-mib must be at least 1");
  const unsigned n = a.threads ? a.threads : default_threads();
  std::vector<unsigned> counts = {1};
  if (n > 1) counts.push_back(n);
  nlohmann::json rows = nlohmann::json::array();
  std::string text = fmt::format("memory read bandwidth, {} MiB buffer, best of 3 passes:\n", a.size_mib);
  for (unsigned t : counts) {
    VEIL_ASSIGN_OR_RETURN(auto r, bandwidth(t, a.size_mib, a.pin));
    rows.push_back({{"threads", t}, {"gbs", r.gbs}, {"seconds", r.seconds}, {"bytes", r.bytes}, {"loads", r.loads}});
    text += fmt::format("  {} thread{}: {:.2f} GB/s ({} loads)\n", t, t == 1 ? " " : "s", r.gbs, r.loads);
  }
  if (a.json) {
    nlohmann::json j;
    j["bandwidth"] = rows;
    j["buffer_mib"] = a.size_mib;
    j["cpu"] = cpu_features_string();
    print(j.dump() + "\n");
  } else {
    print(text);
  }
  return ok_status();
}

struct Stats {
  double mean = 0, best = 0;
};
Stats stats(const std::vector<double>& v) {
  Stats s;
  for (double x : v) {
    s.mean += x / static_cast<double>(v.size());
    s.best = std::max(s.best, x);
  }
  return s;
}

// Bytes of all tensors in the model file (what has to be resident to run it).
uint64_t model_bytes(const gguf::File& f) {
  uint64_t total = 0;
  for (const auto& t : f.tensors()) total += t.n_bytes;
  return total;
}

Status run_model(const BenchArgs& a) {
  if (a.prompt < 1 || a.n < 1 || a.reps < 1)
    return make_error(ErrorCode::kUsage, "bench: -p, -n and -r must be at least 1");
  if (a.depth < 0) return make_error(ErrorCode::kUsage, "bench: -d/--depth must be at least 0");
  if (a.size_mib < 1) return make_error(ErrorCode::kUsage, "bench: --size-mib must be at least 1");
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  VEIL_ASSIGN_OR_RETURN(auto shared, open_model(path, a.source));
  VEIL_ASSIGN_OR_RETURN(auto model, engine::Model::load(shared));
  const engine::HParams& hp = model->hparams();
  const unsigned threads = a.threads ? a.threads : default_threads();
  engine::Context ctx(hp, {.threads = threads, .pin_threads = a.pin});
  const uint32_t n_ctx = static_cast<uint32_t>(std::max(a.prompt, a.depth + a.n) + 1);
  engine::KvCache cache = model->new_cache(n_ctx, a.kv_type);

  // A fixed pseudo-random prompt (the same every run, so runs compare); the depth's context comes from the same
  // generator.
  std::vector<engine::TokenId> prompt(static_cast<size_t>(std::max(a.prompt, a.depth)));
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (auto& t : prompt) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<engine::TokenId>((s >> 33) % hp.n_vocab);
  }
  auto argmax = [&](std::span<const float> logits) {
    return static_cast<engine::TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  };

  std::vector<double> prefill_tps, decode_tps, ttft_ms;
  for (int r = 0; r < a.reps + 1; ++r) {  // the first run warms caches and page tables and is not counted
    cache.clear();
    auto t0 = Clock::now();
    engine::ForwardRequest req{&cache, std::span(prompt).first(static_cast<size_t>(a.prompt)),
                               engine::LogitsMode::kLast};
    VEIL_TRY(model->forward({&req, 1}, ctx));
    engine::TokenId next = argmax(ctx.logits());
    const double prefill_s = secs_since(t0);
    // Decode starts from a cache holding `depth` tokens (0: empty, as llama-bench's tg test does), so attention
    // reads the same context as the figure it is compared with. Filling it is not timed.
    cache.clear();
    if (a.depth > 0) {
      engine::ForwardRequest fill{&cache, std::span(prompt).first(static_cast<size_t>(a.depth)),
                                  engine::LogitsMode::kLast};
      VEIL_TRY(model->forward({&fill, 1}, ctx));
    }
    auto t1 = Clock::now();
    const int steps = r == 0 ? std::min(a.n, 8) : a.n;
    for (int i = 0; i < steps; ++i) {
      engine::ForwardRequest step{&cache, {&next, 1}, engine::LogitsMode::kLast};
      VEIL_TRY(model->forward({&step, 1}, ctx));
      next = argmax(ctx.logits());
    }
    const double decode_s = secs_since(t1);
    if (r == 0) continue;
    prefill_tps.push_back(a.prompt / prefill_s);
    decode_tps.push_back(a.n / decode_s);
    ttft_ms.push_back(prefill_s * 1000.0);
  }
  const uint64_t peak = peak_rss_bytes();
  const uint64_t wbytes = model->weight_bytes_per_token();
  const uint64_t mbytes = model_bytes(model->file());
  const uint64_t kv_bytes = cache.bytes();
  // After the peak was read: the probe's buffer is not the model's memory.
  VEIL_ASSIGN_OR_RETURN(auto bw, bandwidth(threads, a.size_mib, a.pin));
  const Stats pf = stats(prefill_tps), dc = stats(decode_tps);
  double ttft_best = *std::min_element(ttft_ms.begin(), ttft_ms.end());
  const double roof_tps = bw.gbs * 1e9 / static_cast<double>(wbytes);
  const double share = dc.best / roof_tps;

  if (a.json) {
    nlohmann::json j;
    j["model"] = path.string();
    j["architecture"] = hp.arch;
    j["synthetic"] = hp.synthetic;
    j["threads"] = threads;
    j["kernels"] = ctx.kernels().name;
    j["prompt_tokens"] = a.prompt;
    j["decode_tokens"] = a.n;
    j["decode_depth"] = a.depth;
    j["repetitions"] = a.reps;
    j["prefill_tps"] = {{"mean", pf.mean}, {"best", pf.best}};
    j["decode_tps"] = {{"mean", dc.mean}, {"best", dc.best}};
    j["ttft_ms"] = ttft_best;
    j["peak_rss_bytes"] = peak;
    j["model_bytes"] = mbytes;
    j["kv_cache_bytes"] = kv_bytes;
    j["kv_type"] = engine::kv_type_name(a.kv_type);
    j["repacked_bytes"] = model->repacked_bytes();
    j["weight_bytes_per_token"] = wbytes;
    j["bandwidth_gbs"] = bw.gbs;
    j["bandwidth_buffer_mib"] = a.size_mib;
    j["roofline_tps"] = roof_tps;
    j["decode_roofline_share"] = share;
    print(j.dump() + "\n");
    return ok_status();
  }
  std::string out;
  out += fmt::format("model:     {}{} ({}, {} layers, {} threads, {} kernels)\n", path.filename().string(),
                     hp.synthetic ? " [SYNTHETIC]" : "", hp.arch, hp.n_layer, threads, ctx.kernels().name);
  out += fmt::format("prefill:   {} tokens  {:.1f} tok/s mean, {:.1f} best  (time to first token {:.1f} ms)\n",
                     a.prompt, pf.mean, pf.best, ttft_best);
  out += fmt::format("decode:    {} tokens from depth {}  {:.1f} tok/s mean, {:.1f} best\n", a.n, a.depth, dc.mean,
                     dc.best);
  out += fmt::format("roofline:  {:.1f} MB of weights per token, {:.2f} GB/s read bandwidth ({} threads, {} MiB "
                     "buffer) -> <= {:.1f} tok/s; decode reaches {:.0f}%\n",
                     static_cast<double>(wbytes) / 1e6, bw.gbs, threads, a.size_mib, roof_tps, share * 100.0);
  const double mib = 1 << 20;
  out += fmt::format("memory:    peak resident {:.1f} MiB = weights {:.1f} + KV cache {:.1f} + {:.1f} MiB other "
                     "({:.1f} MiB of weights repacked)\n",
                     static_cast<double>(peak) / mib, static_cast<double>(mbytes) / mib,
                     static_cast<double>(kv_bytes) / mib,
                     (static_cast<double>(peak) - static_cast<double>(mbytes) - static_cast<double>(kv_bytes)) / mib,
                     static_cast<double>(model->repacked_bytes()) / mib);
  print(out);
  return ok_status();
}

void setup_bench(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand("bench", "Measure memory bandwidth (--bandwidth) or a model's prefill/decode speed (-m)");
  sub->add_flag("--bandwidth", args->bandwidth, "Measure memory read bandwidth with 1 and N threads");
  add_model_option(sub, args->model);
  add_model_source_options(sub, args->source);
  sub->add_option("-p,--prompt-tokens", args->prompt, "Prompt tokens for prefill")->capture_default_str();
  sub->add_option("-n,--n-predict", args->n, "Tokens to decode")->capture_default_str();
  sub->add_option("-d,--depth", args->depth,
                  "Tokens in the KV cache when the timed decode starts (0: an empty cache, like llama-bench's tg test)")
      ->capture_default_str();
  sub->add_option("-r,--repetitions", args->reps, "Repetitions (after one warm-up run)")->capture_default_str();
  sub->add_option("--threads", args->threads, "Threads (default: hardware threads, at most 8)");
  sub->add_option("--size-mib", args->size_mib, "Bandwidth buffer size in MiB")->capture_default_str();
  sub->add_flag("--pin", args->pin, "Pin threads to CPUs (model run and bandwidth probe)");
  add_kv_type_option(sub, args->kv_type);
  sub->add_flag("--json", args->json, "Print one JSON object");
  runner.on(sub, [args]() { return args->bandwidth ? run_bandwidth(*args) : run_model(*args); });
}

}  // namespace

VEIL_COMMAND(setup_bench, 50);

}  // namespace veil::cli
