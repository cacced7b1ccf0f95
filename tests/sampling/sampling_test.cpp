#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <new>
#include <vector>

#include "sampling/sampling.h"

// GCC 12 flags malloc/free inside a replaced operator new/delete as mismatched (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

// Counts heap allocations made while g_counting is set (to check that sampling allocates nothing per token).
namespace {
std::atomic<bool> g_counting{false};
std::atomic<size_t> g_allocs{0};
}  // namespace

void* operator new(size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace veil::sampling {
namespace {

std::vector<float> log_probs(std::initializer_list<double> p) {
  std::vector<float> out;
  for (double x : p) out.push_back(static_cast<float>(std::log(x)));
  return out;
}

SamplingParams plain(float temp) {
  SamplingParams p;
  p.temperature = temp;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 1234;
  return p;
}

std::map<TokenId, int> histogram(Sampler& s, const std::vector<float>& logits, int n) {
  std::map<TokenId, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits)];
  return h;
}

TEST(Xoshiro, PinnedSequence) {
  // xoshiro256** seeded by SplitMix64(42); fixed so that a seed gives the same ids on every platform.
  Xoshiro256 r(42);
  EXPECT_EQ(r.next(), 0x15780b2e0c2ec716ull);
  EXPECT_EQ(r.next(), 0x6104d9866d113a7eull);
  EXPECT_EQ(r.next(), 0xae17533239e499a1ull);
  Xoshiro256 u(7);
  for (int i = 0; i < 1000; ++i) {
    double x = u.uniform();
    ASSERT_TRUE(x >= 0.0 && x < 1.0);
  }
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  auto s = Sampler::create(SamplingParams::greedy(), 5);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->sample(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(s->sample(std::vector<float>{0.1f, NAN, -1.0f, 0.2f, INFINITY}), 3);  // non-finite -> -inf
  EXPECT_EQ(s->sample(std::vector<float>{1.0f, 2.0f}), -1);                      // wrong size
}

TEST(Sampler, SameSeedSameOutputDifferentSeedDiffers) {
  std::vector<float> logits(64, 0.0f);
  auto a = Sampler::create(plain(1.0f), 64);
  auto b = Sampler::create(plain(1.0f), 64);
  SamplingParams other = plain(1.0f);
  other.seed = 99;
  auto c = Sampler::create(other, 64);
  std::vector<TokenId> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a->sample(logits));
    sb.push_back(b->sample(logits));
    sc.push_back(c->sample(logits));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  a->reset(1234);
  std::vector<TokenId> again;
  for (int i = 0; i < 200; ++i) again.push_back(a->sample(logits));
  EXPECT_EQ(again, sa);
}

TEST(Sampler, TemperatureOneFollowsTheDistribution) {
  auto s = Sampler::create(plain(1.0f), 3);
  auto h = histogram(*s, log_probs({0.7, 0.2, 0.1}), 20000);
  EXPECT_NEAR(h[0] / 20000.0, 0.7, 0.02);
  EXPECT_NEAR(h[1] / 20000.0, 0.2, 0.02);
  EXPECT_NEAR(h[2] / 20000.0, 0.1, 0.02);
}

TEST(Sampler, LowTemperatureSharpensHighFlattens) {
  auto cold = Sampler::create(plain(0.25f), 3);
  auto hot = Sampler::create(plain(4.0f), 3);
  auto logits = log_probs({0.5, 0.3, 0.2});
  auto hc = histogram(*cold, logits, 10000);
  auto hh = histogram(*hot, logits, 10000);
  // T=0.25: p ∝ p^4 -> 0.5^4/(0.5^4+0.3^4+0.2^4) ≈ 0.863
  EXPECT_NEAR(hc[0] / 10000.0, 0.863, 0.02);
  // T=4: p ∝ p^0.25 -> 0.5^.25/(...) ≈ 0.366
  EXPECT_NEAR(hh[0] / 10000.0, 0.366, 0.02);
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplingParams p = plain(1.0f);
  p.top_k = 2;
  auto s = Sampler::create(p, 4);
  auto h = histogram(*s, log_probs({0.1, 0.4, 0.3, 0.2}), 5000);
  EXPECT_EQ(h.count(0), 0u);
  EXPECT_EQ(h.count(3), 0u);
  EXPECT_NEAR(h[1] / 5000.0, 4.0 / 7.0, 0.03);
  p.top_k = 1;
  auto one = Sampler::create(p, 4);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one->sample(log_probs({0.1, 0.4, 0.3, 0.2})), 1);
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
  auto logits = log_probs({0.2, 0.5, 0.3});
  SamplingParams p = plain(1.0f);
  p.top_p = 0.6f;  // 0.5 < 0.6 <= 0.8 -> {1, 2}
  auto s = Sampler::create(p, 3);
  auto h = histogram(*s, logits, 5000);
  EXPECT_EQ(h.count(0), 0u);
  EXPECT_NEAR(h[1] / 5000.0, 0.625, 0.03);
  p.top_p = 0.5f;  // exactly the first
  auto t = Sampler::create(p, 3);
  auto h2 = histogram(*t, logits, 500);
  EXPECT_EQ(h2[1], 500);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p = plain(1.0f);
  p.min_p = 0.5f;  // keep p >= 0.25
  auto s = Sampler::create(p, 3);
  auto h = histogram(*s, log_probs({0.5, 0.3, 0.2}), 5000);
  EXPECT_EQ(h.count(2), 0u);
  EXPECT_NEAR(h[0] / 5000.0, 0.625, 0.03);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  SamplingParams p = SamplingParams::greedy();
  p.repeat_penalty = 1.1f;
  auto s = Sampler::create(p, 3);
  std::vector<float> logits{2.0f, 1.9f, -5.0f};
  EXPECT_EQ(s->sample(logits), 0);
  s->accept(0);  // 2.0 / 1.1 = 1.818 < 1.9
  EXPECT_EQ(s->sample(logits), 1);
  std::vector<float> neg{-1.0f, -1.05f, -9.0f};
  auto t = Sampler::create(p, 3);
  t->accept(0);  // -1.0 * 1.1 = -1.1 < -1.05
  EXPECT_EQ(t->sample(neg), 1);
}

TEST(Sampler, FrequencyAndPresencePenalties) {
  SamplingParams p = SamplingParams::greedy();
  p.frequency_penalty = 0.2f;
  auto s = Sampler::create(p, 2);
  std::vector<float> logits{1.0f, 0.5f};
  s->accept(0);
  s->accept(0);
  EXPECT_EQ(s->sample(logits), 0);  // 1.0 - 0.4 = 0.6 > 0.5
  s->accept(0);
  EXPECT_EQ(s->sample(logits), 1);  // 1.0 - 0.6 = 0.4 < 0.5
  SamplingParams q = SamplingParams::greedy();
  q.presence_penalty = 0.6f;
  auto t = Sampler::create(q, 2);
  t->accept(0);
  EXPECT_EQ(t->sample(logits), 1);  // 1.0 - 0.6 = 0.4, once however many times seen
}

TEST(Sampler, PenaltyWindowForgetsOldTokens) {
  SamplingParams p = SamplingParams::greedy();
  p.presence_penalty = 1.0f;
  p.penalty_last_n = 2;
  auto s = Sampler::create(p, 3);
  std::vector<float> logits{1.0f, 0.5f, 0.0f};
  s->accept(0);
  EXPECT_EQ(s->sample(logits), 1);
  s->accept(2);
  s->accept(2);  // 0 left the window of 2
  EXPECT_EQ(s->sample(logits), 0);
}

TEST(Sampler, RejectsInvalidParameters) {
  SamplingParams p;
  p.top_p = 1.5f;
  auto a = Sampler::create(p, 10);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message().find("top_p"), std::string::npos);
  p = SamplingParams{};
  p.temperature = NAN;
  EXPECT_FALSE(Sampler::create(p, 10).ok());
  p = SamplingParams{};
  p.repeat_penalty = 0.0f;
  EXPECT_FALSE(Sampler::create(p, 10).ok());
  p = SamplingParams{};
  p.penalty_last_n = -1;
  EXPECT_FALSE(Sampler::create(p, 10).ok());
  EXPECT_FALSE(Sampler::create(SamplingParams{}, 0).ok());
}

TEST(Sampler, NoAllocationPerToken) {
  SamplingParams p;  // defaults: top-k 40, top-p, min-p, temperature
  p.repeat_penalty = 1.1f;
  p.frequency_penalty = 0.1f;
  p.presence_penalty = 0.1f;
  auto s = Sampler::create(p, 32000);
  ASSERT_TRUE(s.ok());
  std::vector<float> logits(32000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>((i * 7919) % 1000) / 100.0f;
  g_allocs = 0;
  g_counting = true;
  for (int i = 0; i < 200; ++i) s->accept(s->sample(logits));
  g_counting = false;
  EXPECT_EQ(g_allocs.load(), 0u);
}

TEST(StopDetector, StopStringSplitAcrossPieces) {
  StopDetector d({"\n\nUser:"});
  std::string out;
  EXPECT_FALSE(d.push("Hello", out));
  EXPECT_FALSE(d.push(" there\n", out));
  EXPECT_EQ(out, "Hello there");  // "\n" held back: it may start the stop string
  EXPECT_FALSE(d.push("\nUs", out));
  EXPECT_EQ(out, "Hello there");
  EXPECT_TRUE(d.push("er: and more", out));
  EXPECT_EQ(out, "Hello there");
  EXPECT_EQ(d.reason(), StopDetector::Reason::kStopString);
  EXPECT_TRUE(d.push("ignored", out));
  EXPECT_EQ(out, "Hello there");
}

TEST(StopDetector, HeldTextIsReleasedWhenRuledOut) {
  StopDetector d({"abc", "xyz"});
  std::string out;
  EXPECT_FALSE(d.push("1a", out));
  EXPECT_EQ(out, "1");
  EXPECT_FALSE(d.push("b", out));
  EXPECT_EQ(out, "1");
  EXPECT_FALSE(d.push("d", out));
  EXPECT_EQ(out, "1abd");
  EXPECT_FALSE(d.push("x", out));
  d.flush(out);
  EXPECT_EQ(out, "1abdx");
  EXPECT_EQ(d.reason(), StopDetector::Reason::kNone);
}

TEST(StopDetector, EarliestStopWinsAndStopInsideOnePiece) {
  StopDetector d({"END", "ST"});
  std::string out;
  EXPECT_TRUE(d.push("abcSTxEND", out));
  EXPECT_EQ(out, "abc");
}

TEST(StopDetector, MaxTokens) {
  StopDetector d({"zz"}, 3);
  std::string out;
  EXPECT_FALSE(d.push("a", out));
  EXPECT_FALSE(d.push("z", out));
  EXPECT_TRUE(d.push("b", out));
  EXPECT_EQ(out, "azb");
  EXPECT_EQ(d.reason(), StopDetector::Reason::kMaxTokens);
  EXPECT_EQ(d.tokens(), 3u);
  StopDetector none({}, 0);
  std::string o2;
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(none.push("x", o2));
  EXPECT_EQ(o2.size(), 100u);
}

}  // namespace
}  // namespace veil::sampling
