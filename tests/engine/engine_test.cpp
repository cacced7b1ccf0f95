#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/engine.h"
#include "gguf/writer.h"

using namespace veil;
using namespace veil::engine;

namespace {

const std::string kModel = std::string(VEIL_SHARED_DIR) + "/models/stories260K/stories260K.gguf";

std::shared_ptr<const gguf::File> open_file(const std::string& path) {
  auto f = gguf::File::open(path);
  EXPECT_TRUE(f.ok()) << f.error().message();
  return std::make_shared<const gguf::File>(std::move(f).value());
}

std::vector<TokenId> expected_ids() {
  std::ifstream in(std::string(VEIL_SHARED_DIR) + "/models/stories260K/expected_greedy_201_ids.txt");
  std::vector<TokenId> ids;
  TokenId t;
  while (in >> t) ids.push_back(t);
  return ids;
}

TokenId argmax(std::span<const float> v) {
  return static_cast<TokenId>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

TEST(Engine, Stories260KGreedyMatchesGolden) {
  auto model = Model::load(open_file(kModel));
  ASSERT_TRUE(model.ok()) << model.error().message();
  const HParams& hp = (*model)->hparams();
  EXPECT_EQ(hp.n_embd, 64u);
  EXPECT_EQ(hp.n_layer, 5u);
  EXPECT_EQ(hp.n_head, 8u);
  EXPECT_EQ(hp.n_head_kv, 4u);
  EXPECT_EQ(hp.n_vocab, 512u);
  auto expect = expected_ids();
  ASSERT_EQ(expect.size(), 201u);
  ASSERT_EQ(expect[0], 1);
  for (const char* kset : {"scalar", "avx2"}) {
    auto ks = tensor::kernels_by_name(kset);
    if (!ks.ok()) continue;
    Context ctx(hp, {.threads = 2});
    ctx.set_kernels(**ks);
    KvCache cache = (*model)->new_cache(256);
    TokenId tok = 1;
    std::vector<TokenId> got;
    for (int step = 0; step < 199; ++step) {
      ForwardRequest r{&cache, {&tok, 1}, LogitsMode::kLast};
      ASSERT_TRUE((*model)->forward({&r, 1}, ctx).ok());
      tok = argmax(ctx.logits());
      got.push_back(tok);
    }
    EXPECT_EQ(got, std::vector<TokenId>(expect.begin() + 1, expect.begin() + 200)) << kset;
  }
}

TEST(Engine, PrefillBatchingAndLayerRangesAgree) {
  auto file = open_file(kModel);
  auto model = Model::load(file);
  ASSERT_TRUE(model.ok());
  const Model& m = **model;
  const uint32_t V = m.hparams().n_vocab;
  std::vector<TokenId> prompt = {1, 403, 407, 261, 378, 432};

  // Token by token, one sequence.
  Context ctx(m.hparams(), {.threads = 3});
  KvCache c1 = m.new_cache(64);
  std::vector<float> step_logits;
  for (TokenId t : prompt) {
    ForwardRequest r{&c1, {&t, 1}, LogitsMode::kLast};
    ASSERT_TRUE(m.forward({&r, 1}, ctx).ok());
    step_logits.insert(step_logits.end(), ctx.logits().begin(), ctx.logits().end());
  }
  // Whole prompt at once, logits for every position.
  KvCache c2 = m.new_cache(64);
  ForwardRequest all{&c2, prompt, LogitsMode::kAll};
  ASSERT_TRUE(m.forward({&all, 1}, ctx).ok());
  ASSERT_EQ(ctx.logit_rows(), prompt.size());
  for (size_t i = 0; i < step_logits.size(); ++i) ASSERT_NEAR(ctx.logits()[i], step_logits[i], 1e-4f) << i;
  EXPECT_EQ(c2.n_past(), prompt.size());

  // Two sequences in one call (different lengths, different positions) match running them alone.
  KvCache a = m.new_cache(64), b = m.new_cache(64);
  std::vector<TokenId> pa = {1, 403}, pb = {1, 403, 407, 261};
  ForwardRequest ra{&a, pa, LogitsMode::kLast}, rb{&b, pb, LogitsMode::kLast};
  std::vector<ForwardRequest> both = {ra, rb};
  ASSERT_TRUE(m.forward(both, ctx).ok());
  ASSERT_EQ(ctx.logit_rows(), 2u);
  std::vector<float> batched(ctx.logits().begin(), ctx.logits().end());
  for (size_t i = 0; i < V; ++i) {
    ASSERT_NEAR(batched[i], step_logits[1 * V + i], 1e-4f);
    ASSERT_NEAR(batched[V + i], step_logits[3 * V + i], 1e-4f);
  }

  // Pipeline: layers [0,2) then [2,5) with hidden states passed between stages.
  auto s1 = Model::load(file, {.layers = {0, 2}});
  auto s2 = Model::load(file, {.layers = {2, 5}});
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_TRUE((*s1)->first_stage() && !(*s1)->last_stage());
  Context x1((*s1)->hparams(), {}), x2((*s2)->hparams(), {});
  KvCache k1 = (*s1)->new_cache(64), k2 = (*s2)->new_cache(64);
  ForwardRequest r1{&k1, prompt, LogitsMode::kAll};
  ASSERT_TRUE((*s1)->forward({&r1, 1}, x1).ok());
  EXPECT_EQ(x1.logit_rows(), 0u);
  x2.set_hidden(x1.hidden());
  ForwardRequest r2{&k2, {}, LogitsMode::kAll, static_cast<uint32_t>(prompt.size())};
  ASSERT_TRUE((*s2)->forward({&r2, 1}, x2).ok());
  ASSERT_EQ(x2.logit_rows(), prompt.size());
  for (size_t i = 0; i < step_logits.size(); ++i) ASSERT_NEAR(x2.logits()[i], step_logits[i], 1e-4f);
}

TEST(Engine, ForwardRefusesBadRequests) {
  auto model = Model::load(open_file(kModel));
  ASSERT_TRUE(model.ok());
  const Model& m = **model;
  Context ctx(m.hparams(), {});
  KvCache c = m.new_cache(4);
  std::vector<TokenId> bad = {1, 600};
  ForwardRequest r{&c, bad, LogitsMode::kLast};
  EXPECT_EQ(m.forward({&r, 1}, ctx).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(c.n_past(), 0u);
  std::vector<TokenId> five = {1, 2, 3, 4, 5};
  ForwardRequest big{&c, five, LogitsMode::kLast};
  EXPECT_EQ(m.forward({&big, 1}, ctx).error().code(), ErrorCode::kResourceExhausted);
  std::vector<ForwardRequest> dup = {ForwardRequest{&c, {five.data(), 1}}, ForwardRequest{&c, {five.data(), 1}}};
  EXPECT_FALSE(m.forward(dup, ctx).ok());
  EXPECT_FALSE(Model::load(open_file(kModel), {.layers = {5, 9}}).ok());
}

namespace {

// Copies stories260K with one tensor dropped or replaced, or one metadata key changed.
std::shared_ptr<const gguf::File> mutated(const std::string& drop, const std::string& arch = "llama") {
  auto src = open_file(kModel);
  gguf::Writer w;
  w.copy_metadata(*src);
  w.set("general.architecture", gguf::make_string(arch));
  for (const auto& t : src->tensors()) {
    if (t.name == drop) continue;
    EXPECT_TRUE(w.add_tensor(t.name, t.dims, t.type, Bytes(t.data, t.data + t.n_bytes)).ok());
  }
  if (drop == "blk.1.ffn_up.weight") {  // put it back with the wrong shape
    const auto* t = src->find_tensor(drop);
    EXPECT_TRUE(w.add_tensor(drop, {t->dims[1], t->dims[0]}, t->type, Bytes(t->data, t->data + t->n_bytes)).ok());
  }
  auto bytes = std::make_shared<Bytes>(w.finish());
  auto f = gguf::File::from_memory(bytes, *bytes, "mutated.gguf");
  EXPECT_TRUE(f.ok());
  return std::make_shared<const gguf::File>(std::move(f).value());
}

}  // namespace

TEST(Engine, LoadErrorsNameTheTensor) {
  auto missing = Model::load(mutated("blk.3.attn_k.weight"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(missing.error().message().find("'blk.3.attn_k.weight' is missing"), std::string::npos);
  auto shape = Model::load(mutated("blk.1.ffn_up.weight"));
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.error().message().find("'blk.1.ffn_up.weight' has shape [172, 64], expected [64, 172]"),
            std::string::npos)
      << shape.error().message();
  auto arch = Model::load(mutated("", "mamba"));
  ASSERT_FALSE(arch.ok());
  EXPECT_EQ(arch.error().code(), ErrorCode::kUnsupported);
  // A model held in memory (as a decrypted sealed model is) loads like one on disk.
  auto mem = Model::load(mutated(""));
  ASSERT_TRUE(mem.ok()) << mem.error().message();
}
