#include "server/engine_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "crypto/crypto.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "sampling/sampling.h"
#include "tokenizer/tokenizer.h"

namespace veil::server {
namespace {

class EngineStepModel final : public StepModel {
 public:
  EngineStepModel(std::shared_ptr<const engine::Model> model, uint32_t threads, uint32_t n_ctx, uint32_t slots,
                  engine::KvType kv_type)
      : model_(std::move(model)), ctx_(model_->hparams(), {.threads = threads}), n_ctx_(n_ctx) {
    for (uint32_t i = 0; i < slots; ++i) caches_.push_back(model_->new_cache(n_ctx, kv_type));
  }
  uint32_t context_length() const override { return n_ctx_; }
  uint32_t vocab_size() const override { return model_->hparams().n_vocab; }
  uint32_t max_slots() const override { return static_cast<uint32_t>(caches_.size()); }
  void reset_slot(uint32_t slot) override { caches_.at(slot).clear(); }

  Status forward(std::span<const StepInput> batch, std::vector<float>& logits) override {
    requests_.clear();
    size_t rows = 0;
    for (const auto& in : batch) {
      if (in.slot >= caches_.size()) return make_error(ErrorCode::kInternal, "engine backend: slot {} out of range", in.slot);
      engine::KvCache& cache = caches_[in.slot];
      if (in.pos0 != cache.n_past()) {
        return make_error(ErrorCode::kInternal, "engine backend: slot {} is at position {}, batch says {}", in.slot,
                          cache.n_past(), in.pos0);
      }
      engine::ForwardRequest r;
      r.cache = &cache;
      r.tokens = in.tokens;
      r.logits = in.want_logits ? engine::LogitsMode::kLast : engine::LogitsMode::kNone;
      requests_.push_back(r);
      rows += in.want_logits;
    }
    VEIL_TRY(model_->forward(requests_, ctx_));
    auto out = ctx_.logits();
    size_t n_vocab = model_->hparams().n_vocab;
    if (ctx_.logit_rows() != rows || out.size() != rows * n_vocab) {
      return make_error(ErrorCode::kInternal, "engine backend: {} logit rows, expected {}", ctx_.logit_rows(), rows);
    }
    logits.assign(out.begin(), out.end());
    return ok_status();
  }

 private:
  std::shared_ptr<const engine::Model> model_;
  engine::Context ctx_;
  uint32_t n_ctx_;
  std::vector<engine::KvCache> caches_;
  std::vector<engine::ForwardRequest> requests_;
};

class TokenizerCodec final : public TextCodec {
 public:
  explicit TokenizerCodec(tokenizer::Tokenizer tok) : tok_(std::move(tok)) {}

  Result<std::vector<int32_t>> encode_prompt(const std::string& prompt) override {
    auto ids = tok_.encode(prompt, {.add_special = true, .parse_special = false});
    if (ids.empty()) {
      // As `veil generate` does: a model without BOS rules starts from BOS or end-of-text.
      int32_t start = tok_.bos() != tokenizer::kNoToken ? tok_.bos() : tok_.eos();
      if (start == tokenizer::kNoToken) return make_error(ErrorCode::kInvalidArgument, "the prompt is empty");
      ids.push_back(start);
    }
    return ids;
  }

  Result<std::vector<int32_t>> encode_chat(const std::vector<ChatMessage>& messages) override {
    std::vector<tokenizer::ChatMessage> msgs;
    msgs.reserve(messages.size());
    for (const auto& m : messages) msgs.push_back({m.role, m.content});
    // encode_chat tokenizes message content as plain text: a user typing "<|im_end|>" cannot inject a control token.
    VEIL_ASSIGN_OR_RETURN(auto ids, tokenizer::encode_chat(tok_, msgs, /*add_generation_prompt=*/true));
    if (ids.empty()) return make_error(ErrorCode::kInvalidArgument, "the chat prompt is empty");
    return ids;
  }

  tokenizer::StreamDecoder stream_decoder(std::span<const int32_t> prompt) const override {
    // A prompt of BOS alone: drop the SentencePiece dummy-prefix space of the output, as `veil generate` does.
    bool bos_only = prompt.size() == 1 && prompt[0] == tok_.bos();
    return tokenizer::StreamDecoder(tok_, bos_only && tok_.add_space_prefix());
  }

  bool is_end_of_generation(int32_t id) const override { return tok_.is_eog(id); }

 private:
  tokenizer::Tokenizer tok_;
};

class SeededSampler final : public TokenSampler {
 public:
  explicit SeededSampler(sampling::Sampler s) : s_(std::move(s)) {}
  int32_t sample(std::span<float> logits) override {
    int32_t id = s_.sample(logits);
    if (id >= 0) s_.accept(id);
    return id;
  }

 private:
  sampling::Sampler s_;
};

}  // namespace

std::unique_ptr<TextCodec> make_tokenizer_codec(tokenizer::Tokenizer tok) {
  return std::make_unique<TokenizerCodec>(std::move(tok));
}

Result<std::unique_ptr<BatchingBackend>> make_step_backend(const gguf::File& file, std::unique_ptr<StepModel> step,
                                                           const EngineBackendOptions& options) {
  if (!step) return make_error(ErrorCode::kInvalidArgument, "{}: no step model", file.name());
  VEIL_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::from_gguf(file));
  const uint32_t n_vocab = step->vocab_size();
  if (tok.vocab_size() > n_vocab) {
    return make_error(ErrorCode::kCorrupt, "{}: the vocabulary has {} tokens but the model only {} rows", file.name(),
                      tok.vocab_size(), n_vocab);
  }
  std::string id = options.model_id.empty() ? std::filesystem::path(file.name()).stem().string() : options.model_id;
  if (id.empty()) return make_error(ErrorCode::kInvalidArgument, "the served model needs an id (--model-id)");
  SamplerFactory samplers = [n_vocab](const SamplingOptions& o) -> std::unique_ptr<TokenSampler> {
    sampling::SamplingParams p;
    p.temperature = o.temperature;
    p.top_k = 0;
    p.top_p = o.top_p;
    p.min_p = 0.0f;
    if (o.seed) {
      p.seed = *o.seed;
    } else {
      Bytes r = crypto::random_bytes(8);
      for (uint8_t b : r) p.seed = (p.seed << 8) | b;
    }
    auto s = sampling::Sampler::create(p, n_vocab);
    if (!s.ok()) return nullptr;
    return std::make_unique<SeededSampler>(std::move(s).value());
  };
  return std::make_unique<BatchingBackend>(id, std::move(step), make_tokenizer_codec(std::move(tok)),
                                           std::move(samplers), options.batching);
}

Result<std::unique_ptr<BatchingBackend>> make_engine_backend(std::shared_ptr<const gguf::File> file,
                                                             const EngineBackendOptions& options) {
  VEIL_ASSIGN_OR_RETURN(auto model, engine::Model::load(file));
  const engine::HParams& hp = model->hparams();
  if (hp.synthetic) spdlog::warn("serving a SYNTHETIC model (random weights, for benchmarks only)");
  uint32_t threads = options.threads ? options.threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  uint32_t n_ctx = options.context ? options.context : std::min<uint32_t>(hp.n_ctx_train ? hp.n_ctx_train : 2048, 2048);
  uint32_t slots = std::max<uint32_t>(1, options.batching.max_slots);
  return make_step_backend(*file, std::make_unique<EngineStepModel>(model, threads, n_ctx, slots, options.kv_type), options);
}

}  // namespace veil::server
