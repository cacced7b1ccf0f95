// veil generate: stream text from a GGUF model on the CPU engine (docs/engine.md).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/command.h"
#include "cli/model_source.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "sampling/sampling.h"
#include "tokenizer/tokenizer.h"

namespace veil::cli {
namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  int n = 200;
  float temp = 0.0f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  uint64_t seed = 0;
  unsigned threads = 0;
  uint32_t ctx = 0;
  engine::KvType kv_type = engine::KvType::kF32;
  bool json = false;
  ModelSourceOptions source;
};

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

void emit(const std::string& s) {
  if (s.empty()) return;
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

Status run_generate(const GenerateArgs& a) {
  if (a.n < 0) return make_error(ErrorCode::kUsage, "generate: -n must be 0 or more");
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  auto t_load = Clock::now();
  VEIL_ASSIGN_OR_RETURN(auto shared, open_model(path, a.source));
  VEIL_ASSIGN_OR_RETURN(auto model, engine::Model::load(shared));
  VEIL_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::from_gguf(*shared));
  const engine::HParams& hp = model->hparams();
  if (tok.vocab_size() > hp.n_vocab) {
    return make_error(ErrorCode::kCorrupt, "generate: {}: vocabulary has {} tokens but the model only {} rows",
                      path.string(), tok.vocab_size(), hp.n_vocab);
  }
  sampling::SamplingParams sp;
  sp.temperature = a.temp;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.seed = a.seed;
  VEIL_ASSIGN_OR_RETURN(auto sampler, sampling::Sampler::create(sp, hp.n_vocab));
  if (hp.synthetic) spdlog::warn("model {} is SYNTHETIC (random weights, for benchmarks only)", path.filename().string());

  unsigned threads = a.threads ? a.threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  engine::Context ctx(hp, {.threads = threads});
  uint32_t n_ctx = a.ctx ? a.ctx : std::min<uint32_t>(hp.n_ctx_train, 4096);
  engine::KvCache cache = model->new_cache(n_ctx, a.kv_type);
  double load_ms = ms_since(t_load);

  std::vector<engine::TokenId> prompt_ids = tok.encode(a.prompt, {.add_special = true, .parse_special = false});
  if (prompt_ids.empty()) {
    // No BOS in this vocabulary's rules (e.g. GPT-2): start from BOS or end-of-text, as those models were trained.
    engine::TokenId start = tok.bos() != tokenizer::kNoToken ? tok.bos() : tok.eos();
    if (start == tokenizer::kNoToken) return make_error(ErrorCode::kInvalidArgument, "generate: empty prompt and no BOS/EOS token");
    prompt_ids.push_back(start);
  }
  if (prompt_ids.size() >= cache.n_ctx()) {
    return make_error(ErrorCode::kResourceExhausted, "generate: prompt of {} tokens does not fit the context of {}",
                      prompt_ids.size(), cache.n_ctx());
  }
  for (auto id : prompt_ids) sampler.accept(id);

  // The prompt is echoed as given; generated text follows. With no prompt text, the SentencePiece dummy-prefix
  // space of the first generated piece is dropped (as llama2.c prints it).
  bool only_special_prompt = a.prompt.empty();
  tokenizer::StreamDecoder dec(tok, only_special_prompt && tok.add_space_prefix());
  if (!a.json) emit(a.prompt);

  std::vector<engine::TokenId> out_ids;
  std::string text;
  auto t_prefill = Clock::now();
  engine::ForwardRequest req{&cache, prompt_ids, engine::LogitsMode::kLast};
  VEIL_TRY(model->forward({&req, 1}, ctx));
  double prefill_ms = ms_since(t_prefill);
  auto t_decode = Clock::now();
  std::string stop_reason = "length";
  for (int i = 0; i < a.n; ++i) {
    engine::TokenId next = sampler.sample(ctx.logits());
    if (next < 0) return make_error(ErrorCode::kInternal, "generate: sampler returned no token");
    sampler.accept(next);
    if (tok.is_eog(next)) {
      stop_reason = "eog";
      break;
    }
    out_ids.push_back(next);
    std::string piece = dec.push(next);
    text += piece;
    if (!a.json) emit(piece);
    if (i + 1 == a.n) break;
    if (cache.n_past() >= cache.n_ctx()) {
      stop_reason = "context";
      break;
    }
    engine::ForwardRequest step{&cache, {&next, 1}, engine::LogitsMode::kLast};
    VEIL_TRY(model->forward({&step, 1}, ctx));
  }
  std::string tail = dec.flush();
  text += tail;
  double decode_ms = ms_since(t_decode);
  double tps = decode_ms > 0 ? 1000.0 * static_cast<double>(out_ids.size()) / decode_ms : 0.0;

  if (a.json) {
    nlohmann::json j;
    j["model"] = path.string();
    j["architecture"] = hp.arch;
    j["synthetic"] = hp.synthetic;
    j["prompt_ids"] = prompt_ids;
    j["generated_ids"] = out_ids;
    j["text"] = text;
    j["stop_reason"] = stop_reason;
    j["threads"] = threads;
    j["kernels"] = ctx.kernels().name;
    j["timings"] = {{"load_ms", load_ms},
                    {"prefill_ms", prefill_ms},
                    {"prefill_tokens", prompt_ids.size()},
                    {"decode_ms", decode_ms},
                    {"generated_tokens", out_ids.size()},
                    {"tokens_per_second", tps}};
    emit(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  } else {
    emit(tail);
    if (::isatty(STDOUT_FILENO)) emit("\n");
    spdlog::info("generate: {} prompt tokens in {:.1f} ms, {} tokens in {:.1f} ms ({:.1f} tok/s), {} threads, {} kernels",
                 prompt_ids.size(), prefill_ms, out_ids.size(), decode_ms, tps, threads, ctx.kernels().name);
  }
  return ok_status();
}

void setup_generate(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a GGUF model on the CPU (streams to stdout)");
  add_model_option(sub, args->model);
  add_model_source_options(sub, args->source);
  sub->add_option("-p,--prompt", args->prompt, "Prompt text (default: none, start from BOS)");
  sub->add_option("-n,--n-predict", args->n, "Tokens to generate")->capture_default_str();
  sub->add_option("--temp", args->temp, "Temperature; 0 = greedy")->capture_default_str();
  sub->add_option("--top-k", args->top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
  sub->add_option("--top-p", args->top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
  sub->add_option("--min-p", args->min_p, "Drop tokens below min-p times the top probability (0 = off)")
      ->capture_default_str();
  sub->add_option("--seed", args->seed, "Random seed (same seed, same output)")->capture_default_str();
  sub->add_option("-t,--threads", args->threads, "Worker threads (default: CPU count, at most 8)");
  sub->add_option("-c,--ctx", args->ctx, "Context length (default: the model's, at most 4096)");
  add_kv_type_option(sub, args->kv_type);
  sub->add_flag("--json", args->json, "Print one JSON object: prompt ids, generated ids, text, timings");
  runner.on(sub, [args]() { return run_generate(*args); });
}

VEIL_COMMAND(setup_generate, 30);

}  // namespace
}  // namespace veil::cli
