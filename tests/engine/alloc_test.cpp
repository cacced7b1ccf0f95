// Decode latency: a decode step allocates nothing once the context has seen a batch that large (scratch buffers,
// thread pool dispatch, kernels). Counts global operator new calls around the steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "engine/engine.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VEIL_ALLOC_COUNT_OFF 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define VEIL_ALLOC_COUNT_OFF 1
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocs{0};
}  // namespace

#ifndef VEIL_ALLOC_COUNT_OFF
// The replacement pairs malloc with free; GCC's mismatch heuristic does not know it is the replacement.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

using namespace veil;
using namespace veil::engine;

TEST(Alloc, DecodeStepsAllocateNothing) {
#ifdef VEIL_ALLOC_COUNT_OFF
  GTEST_SKIP() << "operator new is the sanitizer's in this build";
#endif
  auto f = gguf::File::open(std::string(VEIL_SHARED_DIR) + "/models/stories260K/stories260K.gguf");
  ASSERT_TRUE(f.ok());
  auto model = Model::load(std::make_shared<const gguf::File>(std::move(f).value()));
  ASSERT_TRUE(model.ok());
  for (unsigned threads : {1u, 2u, 4u}) {
    Context ctx((*model)->hparams(), {.threads = threads});
    KvCache cache = (*model)->new_cache(64);
    TokenId tok = 1;
    auto step = [&] {
      ForwardRequest r{&cache, {&tok, 1}, LogitsMode::kLast};
      ASSERT_TRUE((*model)->forward({&r, 1}, ctx).ok());
      auto l = ctx.logits();
      tok = static_cast<TokenId>(std::max_element(l.begin(), l.end()) - l.begin());
    };
    for (int i = 0; i < 3; ++i) step();  // warm-up: buffers grow to a one-token batch
    g_allocs = 0;
    g_counting = true;
    for (int i = 0; i < 20; ++i) step();
    g_counting = false;
    EXPECT_EQ(g_allocs.load(), 0) << threads << " threads";
  }
}
