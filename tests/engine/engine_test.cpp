#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/convert.h"
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

// The golden ids with every kernel table this CPU can run (the avx512 instance is skipped, with the reason, on a
// CPU without AVX-512 VNNI).
class EngineByIsa : public ::testing::TestWithParam<kernels::Isa> {
 protected:
  void SetUp() override {
    if (!kernels::isa_supported(GetParam())) {
      GTEST_SKIP() << "this CPU lacks " << kernels::isa_name(GetParam())
                   << " (AVX2+FMA+F16C; AVX-512 F/BW/VL+VNNI): that kernel table cannot run here";
    }
  }
  const kernels::KernelTable* table() const { return &kernels::kernel_table(GetParam()); }
};

TEST_P(EngineByIsa, Stories260KGreedyMatchesGolden) {
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
  Context ctx(hp, {.threads = 2, .kernels = table()});
  EXPECT_STREQ(ctx.kernels().name, kernels::isa_name(GetParam()));
  KvCache cache = (*model)->new_cache(256);
  TokenId tok = 1;
  std::vector<TokenId> got;
  for (int step = 0; step < 199; ++step) {
    ForwardRequest r{&cache, {&tok, 1}, LogitsMode::kLast};
    ASSERT_TRUE((*model)->forward({&r, 1}, ctx).ok());
    tok = argmax(ctx.logits());
    got.push_back(tok);
  }
  EXPECT_EQ(got, std::vector<TokenId>(expect.begin() + 1, expect.begin() + 200));
}

// An f16 KV cache: half the bytes, logits within fp16 rounding of the f32 cache's, and the same golden greedy ids
// (prefill of a tile of tokens, then decode) with every kernel table.
TEST_P(EngineByIsa, F16KvCacheKeepsTheGoldenIdsAndCloseLogits) {
  auto model = Model::load(open_file(kModel));
  ASSERT_TRUE(model.ok()) << model.error().message();
  const HParams& hp = (*model)->hparams();
  auto expect = expected_ids();
  ASSERT_EQ(expect.size(), 201u);
  Context c32(hp, {.threads = 2, .kernels = table()}), c16(hp, {.threads = 2, .kernels = table()});
  KvCache k32 = (*model)->new_cache(256), k16 = (*model)->new_cache(256, KvType::kF16);
  EXPECT_EQ(k16.type(), KvType::kF16);
  EXPECT_EQ(k16.bytes() * 2, k32.bytes());
  std::vector<TokenId> prompt(expect.begin(), expect.begin() + 20);  // a 20-token prefill (two attention tiles)
  ForwardRequest p32{&k32, prompt, LogitsMode::kLast}, p16{&k16, prompt, LogitsMode::kLast};
  ASSERT_TRUE((*model)->forward({&p32, 1}, c32).ok());
  ASSERT_TRUE((*model)->forward({&p16, 1}, c16).ok());
  std::vector<TokenId> got(prompt.begin() + 1, prompt.end());
  float worst = 0.0f;
  for (int step = 0; step < 180; ++step) {
    for (size_t i = 0; i < hp.n_vocab; ++i) worst = std::max(worst, std::fabs(c32.logits()[i] - c16.logits()[i]));
    TokenId tok = argmax(c16.logits());
    got.push_back(tok);
    ForwardRequest r32{&k32, {&tok, 1}, LogitsMode::kLast}, r16{&k16, {&tok, 1}, LogitsMode::kLast};
    ASSERT_TRUE((*model)->forward({&r32, 1}, c32).ok());
    ASSERT_TRUE((*model)->forward({&r16, 1}, c16).ok());
  }
  EXPECT_EQ(got, std::vector<TokenId>(expect.begin() + 1, expect.begin() + 1 + got.size()));
  EXPECT_LT(worst, 0.05f);  // logits span ~[-10, 20]; fp16 keeps ~3 decimal digits of each K and V
  EXPECT_GT(worst, 0.0f);   // the f16 path really ran
  std::printf("f16 KV cache: largest logit difference from f32 over 180 steps: %.5f\n", worst);
}

namespace {

std::shared_ptr<const gguf::File> in_memory(gguf::Writer& w, const std::string& name) {
  auto bytes = std::make_shared<Bytes>(w.finish());
  auto f = gguf::File::from_memory(bytes, *bytes, name);
  EXPECT_TRUE(f.ok());
  return std::make_shared<const gguf::File>(std::move(f).value());
}

// stories260K re-quantised in memory (rows of 172 fall back to F16), or written to a file and mapped; `tied`
// drops output.weight so the token embedding is also the output matrix.
std::shared_ptr<const gguf::File> quantized_stories(gguf::TensorType type, bool tied = false,
                                                    const std::string& path = "") {
  auto src = open_file(kModel);
  if (tied) {
    gguf::Writer t;
    t.copy_metadata(*src);
    for (const auto& ti : src->tensors()) {
      if (ti.name == "output.weight") continue;
      EXPECT_TRUE(t.add_tensor(ti.name, ti.dims, ti.type, Bytes(ti.data, ti.data + ti.n_bytes)).ok());
    }
    src = in_memory(t, "tied.gguf");
  }
  gguf::Writer w;
  EXPECT_TRUE(quantize_model(*src, type, w).ok());
  if (!path.empty()) {
    EXPECT_TRUE(w.write(path).ok());
    return open_file(path);
  }
  return in_memory(w, "quantized.gguf");
}

// Logits of a 7-token prefill (every row: matmul) then 5 decode steps (matvec).
std::vector<float> prefill_then_decode(const Model& m, const kernels::KernelTable* table, unsigned threads) {
  Context ctx(m.hparams(), {.threads = threads, .kernels = table});
  KvCache c = m.new_cache(64);
  std::vector<TokenId> prompt = {1, 403, 407, 261, 378, 432, 30};
  ForwardRequest all{&c, prompt, LogitsMode::kAll};
  EXPECT_TRUE(m.forward({&all, 1}, ctx).ok());
  std::vector<float> out(ctx.logits().begin(), ctx.logits().end());
  TokenId tok = argmax(ctx.logits().subspan(ctx.logits().size() - m.hparams().n_vocab));
  for (int i = 0; i < 5; ++i) {
    ForwardRequest r{&c, {&tok, 1}, LogitsMode::kLast};
    EXPECT_TRUE(m.forward({&r, 1}, ctx).ok());
    out.insert(out.end(), ctx.logits().begin(), ctx.logits().end());
    tok = argmax(ctx.logits());
  }
  return out;
}

}  // namespace

TEST_P(EngineByIsa, RepackedQuantizedWeightsMatchThePlainLayout) {
  for (auto [type, tied] : {std::pair{gguf::TensorType::kQ8_0, false}, std::pair{gguf::TensorType::kQ4_0, true}}) {
    auto file = quantized_stories(type, tied);
    auto plain = Model::load(file, {.layers = {}, .repack = Repack::kNever});
    auto packed = Model::load(file, {.layers = {}, .repack = Repack::kAlways});
    ASSERT_TRUE(plain.ok() && packed.ok());
    EXPECT_EQ((*plain)->repacked_bytes(), 0u);
    EXPECT_GT((*packed)->repacked_bytes(), 0u);
    EXPECT_TRUE((*packed)->weights().layers[0].attn_q.x4);
    EXPECT_TRUE((*packed)->weights().output.x4);
    EXPECT_EQ((*packed)->weights().tied_output, tied);
    // Tied: the embedding is looked up in the x4 copy; separate: the embedding stays plain (lookups only).
    EXPECT_EQ((*packed)->weights().token_embd.x4, tied);
    EXPECT_FALSE((*packed)->weights().layers[0].ffn_down.x4) << "rows of 172 were stored as F16";
    auto want = prefill_then_decode(**plain, table(), 1);
    for (unsigned threads : {1u, 3u}) {
      auto got = prefill_then_decode(**packed, table(), threads);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-3f * (1.0f + std::fabs(want[i])))
            << gguf::type_name(type) << " logit " << i << " threads " << threads;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryTable, EngineByIsa,
                         ::testing::Values(kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512),
                         [](const ::testing::TestParamInfo<kernels::Isa>& i) {
                           return std::string(kernels::isa_name(i.param));
                         });

TEST(Engine, MappedModelRepacksAndReleasesItsFilePages) {
  const std::string path = ::testing::TempDir() + "/veil_engine_q8.gguf";
  auto file = quantized_stories(gguf::TensorType::kQ8_0, false, path);
  ASSERT_TRUE(file->mapped());
  auto a = Model::load(file);  // kAuto: mapped -> repacked, source pages released
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_GT((*a)->repacked_bytes(), 0u);
  // The released pages fault back in from the file: a second model on the same File reads the plain bytes.
  auto b = Model::load(file, {.layers = {}, .repack = Repack::kNever});
  ASSERT_TRUE(b.ok());
  auto la = prefill_then_decode(**a, nullptr, 2), lb = prefill_then_decode(**b, nullptr, 2);
  for (size_t i = 0; i < la.size(); ++i) ASSERT_NEAR(la[i], lb[i], 1e-3f * (1.0f + std::fabs(lb[i]))) << i;
  // In memory and larger than kRepackInMemoryLimit would stay plain; this one is small, so kAuto repacks it.
  auto mem = Model::load(quantized_stories(gguf::TensorType::kQ8_0));
  ASSERT_TRUE(mem.ok());
  EXPECT_GT((*mem)->repacked_bytes(), 0u);
  std::remove(path.c_str());
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
