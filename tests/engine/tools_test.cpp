// veil quantize and veil synth, through their library functions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/convert.h"
#include "engine/engine.h"

using namespace veil;
using namespace veil::engine;
using gguf::TensorType;

namespace {

const std::string kShared = VEIL_SHARED_DIR;

std::shared_ptr<const gguf::File> in_memory(gguf::Writer& w, const std::string& name) {
  auto bytes = std::make_shared<Bytes>(w.finish());
  auto f = gguf::File::from_memory(bytes, *bytes, name);
  EXPECT_TRUE(f.ok()) << f.error().message();
  return std::make_shared<const gguf::File>(std::move(f).value());
}

std::vector<float> logits_after(const Model& m, const std::vector<TokenId>& prompt) {
  Context ctx(m.hparams(), {.threads = 2});
  KvCache c = m.new_cache(64);
  ForwardRequest r{&c, prompt, LogitsMode::kLast};
  EXPECT_TRUE(m.forward({&r, 1}, ctx).ok());
  return {ctx.logits().begin(), ctx.logits().end()};
}

}  // namespace

TEST(Tools, QuantizeEveryTypeKeepsTheModelWorking) {
  auto src = gguf::File::open(kShared + "/models/stories260K/stories260K.gguf");
  ASSERT_TRUE(src.ok());
  auto ref_model = Model::load(std::make_shared<const gguf::File>(*src));
  ASSERT_TRUE(ref_model.ok());
  std::vector<TokenId> prompt = {1, 403, 407, 261, 378};
  auto ref = logits_after(**ref_model, prompt);
  for (kernels::Type kt : kernels::kAllTypes) {
    const auto t = static_cast<TensorType>(kt);
    gguf::Writer w;
    auto rep = quantize_model(*src, t, w);
    ASSERT_TRUE(rep.ok()) << rep.error().message();
    auto f = in_memory(w, "q.gguf");
    auto m = Model::load(f);
    ASSERT_TRUE(m.ok()) << gguf::type_name(t) << ": " << m.error().message();
    EXPECT_EQ(f->find_tensor("blk.0.attn_norm.weight")->type, TensorType::kF32);
    // Rows of 64 are too short for the 256-blocks of K-quants: those fall back to a 32-block type.
    TensorType got = f->find_tensor("blk.0.attn_q.weight")->type;
    if (kernels::block_elems(kt) == 256) {
      EXPECT_NE(got, t);
      EXPECT_GT(rep->fallback, 0u);
    } else {
      EXPECT_EQ(got, t);
    }
    auto l = logits_after(**m, prompt);
    // The quantised model still agrees on the most likely next token and stays close overall.
    auto top = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    double err = 0, mag = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      err += std::fabs(l[i] - ref[i]);
      mag += std::fabs(ref[i]);
    }
    EXPECT_LT(err / mag, 0.25) << gguf::type_name(t);
    if (t != TensorType::kQ4_0 && t != TensorType::kQ4_1) {
      EXPECT_EQ(top(l), top(ref)) << gguf::type_name(t);
    }
  }
}

TEST(Tools, SynthStories15mWithLlama2cVocabulary) {
  auto vocab = load_vocabulary(kShared + "/models/llama2c-tokenizer/tokenizer.bin");
  ASSERT_TRUE(vocab.ok()) << vocab.error().message();
  auto w = synth_model(SynthShape::kStories15m, TensorType::kQ8_0, *vocab);
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto f = in_memory(*w, "synth.gguf");
  EXPECT_TRUE(*f->get_bool("veil.synthetic"));
  auto m = Model::load(f);
  ASSERT_TRUE(m.ok()) << m.error().message();
  const HParams& hp = (*m)->hparams();
  EXPECT_TRUE(hp.synthetic);
  EXPECT_EQ(hp.n_embd, 288u);
  EXPECT_EQ(hp.n_layer, 6u);
  EXPECT_EQ(hp.n_vocab, 32000u);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_up.weight")->type, TensorType::kQ8_0);
  auto l = logits_after(**m, {1, 100, 200});
  for (float v : l) ASSERT_TRUE(std::isfinite(v));
  // Fixed seed: the same file twice.
  auto w2 = synth_model(SynthShape::kStories15m, TensorType::kQ8_0, *vocab);
  ASSERT_TRUE(w2.ok());
  auto f2 = in_memory(*w2, "synth2.gguf");
  ASSERT_EQ(f->bytes().size(), f2->bytes().size());
  EXPECT_TRUE(std::equal(f->bytes().begin(), f->bytes().end(), f2->bytes().begin()));
}

TEST(Tools, SynthGpt2SeparateOutputAndVocabularyChecks) {
  auto vocab = load_vocabulary(kShared + "/models/gpt2-tokenizer/encoder.json");
  ASSERT_TRUE(vocab.ok()) << vocab.error().message();
  auto w = synth_model(SynthShape::kGpt2_124m, TensorType::kQ4_0, *vocab);
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto f = in_memory(*w, "gpt2.gguf");
  auto m = Model::load(f);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_FALSE((*m)->weights().tied_output);
  EXPECT_EQ((*m)->hparams().n_vocab, 50257u);
  EXPECT_EQ(f->find_tensor("output.weight")->type, TensorType::kQ4_0);
  EXPECT_EQ(*f->get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges")->size(), 50000u);
  auto l = logits_after(**m, {50256, 15496});
  for (float v : l) ASSERT_TRUE(std::isfinite(v));
  // A vocabulary of the wrong size for the shape is refused.
  auto small = load_vocabulary(kShared + "/testdata/tokenizer/ggml-vocab-bert-bge.gguf");
  ASSERT_TRUE(small.ok());
  auto bad = synth_model(SynthShape::kGpt2_124m, TensorType::kQ4_0, *small);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("50257"), std::string::npos);
  EXPECT_FALSE(parse_synth_shape("llama-70b").ok());
}

TEST(Tools, SynthOutputTypeLikeLlamaCppQ4_0) {
  auto vocab = load_vocabulary(kShared + "/models/llama2c-tokenizer/tokenizer.bin");
  ASSERT_TRUE(vocab.ok()) << vocab.error().message();
  auto w = synth_model(SynthShape::kStories15m, TensorType::kQ4_0, *vocab, 1234, TensorType::kQ6_K);
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto f = in_memory(*w, "q4_0-q6_k.gguf");
  // 288-wide rows are not a multiple of Q6_K's 256-element blocks: the output falls back to Q8_0 (TinyLlama's
  // 2048-wide rows keep Q6_K); the other matrices stay Q4_0.
  EXPECT_EQ(f->find_tensor("output.weight")->type, TensorType::kQ8_0);
  EXPECT_EQ(f->find_tensor("token_embd.weight")->type, TensorType::kQ4_0);
  EXPECT_EQ(f->find_tensor("blk.5.ffn_down.weight")->type, TensorType::kQ4_0);
  auto m = Model::load(f);
  ASSERT_TRUE(m.ok()) << m.error().message();
  auto l = logits_after(**m, {1, 100, 200});
  for (float v : l) ASSERT_TRUE(std::isfinite(v));
}
