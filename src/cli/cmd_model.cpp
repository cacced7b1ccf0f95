// veil model info, veil convert, veil quantize, veil synth: inspecting and producing GGUF models (docs/engine.md).
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "sealed/sealed.h"
#include "engine/convert.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "gguf/writer.h"

namespace veil::cli {
namespace {

void print(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.2f} {}", v, units[u]);
}

// ---------------- model info ----------------

struct InfoArgs {
  std::string model;
  bool json = false;
};

Status run_info(const InfoArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  if (sealed::is_sealed_model(path)) {  // header only: no key needed
    VEIL_ASSIGN_OR_RETURN(std::string text, sealed::describe_sealed_model(path, a.json));
    std::fputs(text.c_str(), stdout);
    return ok_status();
  }
  VEIL_ASSIGN_OR_RETURN(gguf::File file, gguf::File::open(path));
  auto f = std::make_shared<const gguf::File>(std::move(file));
  nlohmann::json j;
  j["file"] = path.string();
  j["file_bytes"] = f->bytes().size();
  j["gguf_version"] = f->version();
  auto arch = f->get_string("general.architecture");
  j["architecture"] = arch.ok() ? *arch : "";
  if (auto n = f->get_string("general.name"); n.ok()) j["name"] = *n;
  bool synthetic = false;
  if (auto s = f->get_bool("veil.synthetic"); s.ok()) synthetic = *s;
  j["synthetic"] = synthetic;

  std::map<std::string, std::pair<uint64_t, uint64_t>> by_type;  // type -> (tensors, bytes)
  uint64_t params = 0, tensor_bytes = 0;
  for (const auto& t : f->tensors()) {
    auto& e = by_type[gguf::type_name(t.type)];
    ++e.first;
    e.second += t.n_bytes;
    params += t.n_elements;
    tensor_bytes += t.n_bytes;
  }
  j["tensors"] = f->tensors().size();
  j["parameters"] = params;
  j["tensor_bytes"] = tensor_bytes;
  for (const auto& [name, e] : by_type) j["tensor_types"][name] = {{"tensors", e.first}, {"bytes", e.second}};
  if (auto m = f->get_string("tokenizer.ggml.model"); m.ok()) {
    j["tokenizer"]["model"] = *m;
    if (const gguf::Value* toks = f->find("tokenizer.ggml.tokens")) {
      if (const auto* items = std::get_if<std::vector<gguf::Value>>(&toks->v)) j["tokenizer"]["tokens"] = items->size();
    }
    if (auto p = f->get_string("tokenizer.ggml.pre"); p.ok()) j["tokenizer"]["pre"] = *p;
  }
  std::string engine_status = "ok";
  if (!f->tensors().empty()) {
    auto model = engine::Model::load(f);
    if (model.ok()) {
      const engine::HParams& hp = (*model)->hparams();
      j["hparams"] = {{"n_vocab", hp.n_vocab},         {"n_embd", hp.n_embd},       {"n_layer", hp.n_layer},
                      {"n_head", hp.n_head},           {"n_head_kv", hp.n_head_kv}, {"head_dim", hp.head_dim},
                      {"n_ff", hp.n_ff},               {"n_ctx_train", hp.n_ctx_train},
                      {"norm_eps", hp.norm_eps},       {"rope_theta", hp.rope_theta}, {"rope_dim", hp.rope_dim},
                      {"tied_output", (*model)->weights().tied_output}};
    } else {
      engine_status = model.error().message();
    }
  } else {
    engine_status = "vocabulary only (no tensors)";
  }
  j["engine"] = engine_status;

  if (a.json) {
    print(j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    return ok_status();
  }
  std::string out;
  out += fmt::format("file:          {} ({})\n", path.string(), human_bytes(f->bytes().size()));
  if (synthetic) out += "SYNTHETIC:     yes - random weights for benchmarks only; output is meaningless\n";
  out += fmt::format("gguf version:  {}\n", f->version());
  out += fmt::format("architecture:  {}\n", j["architecture"].get<std::string>());
  if (j.contains("name")) out += fmt::format("name:          {}\n", j["name"].get<std::string>());
  if (j.contains("hparams")) {
    const auto& h = j["hparams"];
    out += fmt::format("vocabulary:    {}\n", h["n_vocab"].get<uint32_t>());
    out += fmt::format("embedding:     {}\n", h["n_embd"].get<uint32_t>());
    out += fmt::format("layers:        {}\n", h["n_layer"].get<uint32_t>());
    out += fmt::format("heads:         {} (kv {}, head size {})\n", h["n_head"].get<uint32_t>(),
                       h["n_head_kv"].get<uint32_t>(), h["head_dim"].get<uint32_t>());
    out += fmt::format("feed-forward:  {}\n", h["n_ff"].get<uint32_t>());
    out += fmt::format("context:       {}\n", h["n_ctx_train"].get<uint32_t>());
    out += fmt::format("norm eps:      {}\n", h["norm_eps"].get<float>());
    if (h["rope_dim"].get<uint32_t>() > 0) {
      out += fmt::format("rope:          theta {}, {} dims\n", h["rope_theta"].get<float>(), h["rope_dim"].get<uint32_t>());
    }
    out += fmt::format("output:        {}\n", h["tied_output"].get<bool>() ? "tied to token embedding" : "separate matrix");
  }
  if (j.contains("tokenizer")) {
    out += fmt::format("tokenizer:     {}", j["tokenizer"]["model"].get<std::string>());
    if (j["tokenizer"].contains("tokens")) out += fmt::format(", {} tokens", j["tokenizer"]["tokens"].get<size_t>());
    if (j["tokenizer"].contains("pre")) out += fmt::format(", pre {}", j["tokenizer"]["pre"].get<std::string>());
    out += "\n";
  }
  out += fmt::format("tensors:       {} ({} parameters, {})\n", f->tensors().size(), params, human_bytes(tensor_bytes));
  for (const auto& [name, e] : by_type) out += fmt::format("  {:<6} {:>5} tensors  {}\n", name, e.first, human_bytes(e.second));
  out += fmt::format("engine:        {}\n", engine_status);
  print(out);
  return ok_status();
}

// ---------------- convert ----------------

struct ConvertArgs {
  std::string checkpoint, tokenizer, out;
};

Status run_convert(const ConvertArgs& a) {
  VEIL_ASSIGN_OR_RETURN(MappedFile ck, MappedFile::open(a.checkpoint));
  VEIL_ASSIGN_OR_RETURN(Bytes tok, read_file(a.tokenizer, 256u << 20));
  VEIL_ASSIGN_OR_RETURN(gguf::Writer w, engine::convert_llama2c(ck.view(), a.checkpoint, tok, a.tokenizer));
  VEIL_TRY(w.write(a.out));
  print(fmt::format("wrote {}\n", a.out));
  return ok_status();
}

// ---------------- quantize ----------------

struct QuantizeArgs {
  std::string in, out, type;
};

Status run_quantize(const QuantizeArgs& a) {
  auto type = gguf::parse_type_name(a.type);
  if (!type.ok()) return Error(ErrorCode::kUsage, type.error().message());
  VEIL_ASSIGN_OR_RETURN(gguf::File in, gguf::File::open(a.in));
  gguf::Writer w;
  VEIL_ASSIGN_OR_RETURN(auto rep, engine::quantize_model(in, *type, w));
  VEIL_TRY(w.write(a.out));
  print(fmt::format("wrote {}: {} tensors {}, {} in a compatible type (row length), {} kept F32\n", a.out, rep.quantized,
                    gguf::type_name(*type), rep.fallback, rep.kept));
  return ok_status();
}

// ---------------- synth ----------------

struct SynthArgs {
  std::string shape, type = "F32", output_type, vocab, out;
  uint64_t seed = 1234;
};

Status run_synth(const SynthArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto shape, engine::parse_synth_shape(a.shape));
  auto type = gguf::parse_type_name(a.type);
  if (!type.ok()) return Error(ErrorCode::kUsage, type.error().message());
  std::optional<gguf::TensorType> output_type;
  if (!a.output_type.empty()) {
    auto o = gguf::parse_type_name(a.output_type);
    if (!o.ok()) return Error(ErrorCode::kUsage, o.error().message());
    output_type = *o;
  }
  VEIL_ASSIGN_OR_RETURN(auto vocab, engine::load_vocabulary(a.vocab));
  VEIL_ASSIGN_OR_RETURN(gguf::Writer w, engine::synth_model(shape, *type, vocab, a.seed, output_type));
  VEIL_TRY(w.write(a.out));
  print(fmt::format("wrote {} (SYNTHETIC {}, {}, seed {})\n", a.out, a.shape, gguf::type_name(*type), a.seed));
  return ok_status();
}

void setup_model(CLI::App& app, Runner& runner) {
  CLI::App* group = subcommand_group(app, "model", "Inspect models");
  auto info = std::make_shared<InfoArgs>();
  CLI::App* sub = group->add_subcommand("info", "Architecture, hyper-parameters, tensor types and sizes of a GGUF model");
  sub->add_option("model", info->model, "Model file (default: as -m/--model elsewhere)");
  add_model_option(sub, info->model);
  sub->add_flag("--json", info->json, "Print one JSON object");
  runner.on(sub, [info]() { return run_info(*info); });

  auto conv = std::make_shared<ConvertArgs>();
  CLI::App* c = app.add_subcommand("convert", "Convert a llama2.c checkpoint and tokenizer to GGUF");
  c->add_option("checkpoint", conv->checkpoint, "llama2.c checkpoint (.bin, legacy or v1 header)")->required();
  c->add_option("tokenizer", conv->tokenizer, "llama2.c tokenizer (.bin)")->required();
  c->add_option("-o,--output", conv->out, "Output GGUF file")->required();
  runner.on(c, [conv]() { return run_convert(*conv); });

  auto q = std::make_shared<QuantizeArgs>();
  CLI::App* qs = app.add_subcommand("quantize", "Re-encode a GGUF model's weights in another tensor type");
  qs->add_option("input", q->in, "Input GGUF")->required();
  qs->add_option("output", q->out, "Output GGUF")->required();
  qs->add_option("type", q->type, "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K")->required();
  runner.on(qs, [q]() { return run_quantize(*q); });

  auto s = std::make_shared<SynthArgs>();
  CLI::App* ss = app.add_subcommand("synth", "Write a SYNTHETIC model (fixed-seed random weights at a real shape) for benchmarks");
  ss->add_option("--shape", s->shape, "gpt2-124m, stories15m or tinyllama-1.1b")->required();
  ss->add_option("--type", s->type, "Tensor type of the weights")->capture_default_str();
  ss->add_option("--output-type", s->output_type, "Tensor type of output.weight (default: --type; llama.cpp's Q4_0 uses Q6_K)");
  ss->add_option("--vocab", s->vocab, "Vocabulary: a GGUF with tokenizer metadata, GPT-2 encoder.json, or llama2.c tokenizer.bin")
      ->required();
  ss->add_option("-o,--output", s->out, "Output GGUF file")->required();
  ss->add_option("--seed", s->seed, "Random seed")->capture_default_str();
  runner.on(ss, [s]() { return run_synth(*s); });
}

VEIL_COMMAND(setup_model, 35);

}  // namespace
}  // namespace veil::cli
