// ThreadPool and SpinBarrier: correctness under repeated dispatch, every range covered once, no deadlock when
// workers fall asleep between jobs, bounded time.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "kernels/kernels.h"

namespace veil::kernels {
namespace {

TEST(ThreadPool, CoversEveryIndexOnceWithGrain) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (size_t n : {1u, 2u, 5u, 64u, 1000u, 4097u}) {
      for (size_t grain : {1u, 4u, 32u}) {
        std::vector<int> hits(n, 0);
        pool.parallel_for(n, grain, [&](size_t b, size_t e, int t) {
          EXPECT_LT(t, threads);
          if (grain > 1 && e != n) {
            EXPECT_EQ(e % grain, 0u);
          }
          for (size_t i = b; i < e; ++i) ++hits[i];
        });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << "threads=" << threads << " n=" << n << " i=" << i;
      }
    }
  }
}

TEST(ThreadPool, RepeatedDispatchSpinning) {
  ThreadPool pool(2);
  std::atomic<uint64_t> total{0};
  const int kJobs = 20000;
  for (int j = 0; j < kJobs; ++j)
    pool.parallel_for(30, 1, [&](size_t b, size_t e, int) { total.fetch_add(e - b, std::memory_order_relaxed); });
  EXPECT_EQ(total.load(), static_cast<uint64_t>(kJobs) * 30);
  EXPECT_EQ(pool.jobs_run(), static_cast<uint64_t>(kJobs));
  // More threads than this machine may have cores: spinning must not stall the job.
  ThreadPool big(5);
  for (int j = 0; j < 2000; ++j)
    big.parallel_for(30, 1, [&](size_t b, size_t e, int) { total.fetch_add(e - b, std::memory_order_relaxed); });
  EXPECT_EQ(total.load(), static_cast<uint64_t>(kJobs + 2000) * 30);
}

TEST(ThreadPool, RepeatedDispatchThroughFutexSleep) {
  // spin_us = 0: every wait goes to the futex, exercising the sleep / wake handshake on both sides.
  ThreadPool pool(4, false, 0);
  std::vector<uint64_t> per(4 * 16, 0);
  for (int j = 0; j < 3000; ++j) {
    std::vector<int> hit(4, 0);
    pool.parallel_for(4, 1, [&](size_t b, size_t e, int t) {
      per[static_cast<size_t>(t) * 16] += e - b;
      for (size_t i = b; i < e; ++i) ++hit[i];
    });
    ASSERT_EQ(hit, std::vector<int>(4, 1)) << "job " << j;
  }
  uint64_t sum = 0;
  for (int t = 0; t < 4; ++t) sum += per[static_cast<size_t>(t) * 16];
  EXPECT_EQ(sum, 12000u);
}

TEST(ThreadPool, RangesOfAStalledThreadGoToTheOthers) {
  // Thread 1 stalls in its first range (as if descheduled): with 8 ranges per thread, the caller runs the rest
  // instead of waiting for it, and every index is still covered once.
  ThreadPool pool(2, false, 50);
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<int> hits(1600, 0);
    std::atomic<int> by_caller{0}, by_worker{0};
    std::atomic<bool> stalled{false};
    pool.parallel_for(1600, 1, [&](size_t b, size_t e, int t) {
      if (t == 1 && !stalled.exchange(true)) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      for (size_t i = b; i < e; ++i) ++hits[i];
      (t == 0 ? by_caller : by_worker) += 1;
    }, 8);
    for (int h : hits) ASSERT_EQ(h, 1);
    EXPECT_EQ(by_caller + by_worker, 16);
    if (by_worker > 0) {
      EXPECT_GE(by_caller.load(), 14) << "the caller should have taken the stalled thread's share";
    }
  }
}

TEST(ThreadPool, WorkersAsleepWakeForNextJobAndShutDown) {
  ThreadPool pool(2, false, 1);
  std::atomic<int> ran{0};
  pool.parallel_for(2, 1, [&](size_t, size_t, int) { ran++; });
  // Let the workers pass their spin window and sleep: wait (bounded) for an observable condition, not a timer.
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(5)) {
  }
  pool.parallel_for(2, 1, [&](size_t, size_t, int) { ran++; });
  EXPECT_EQ(ran.load(), 4);
}

TEST(ThreadPool, PinnedPoolRuns) {
  ThreadPool pool(2, /*pin=*/true);
  std::atomic<int> ran{0};
  pool.parallel_for(100, 1, [&](size_t b, size_t e, int) { ran += static_cast<int>(e - b); });
  EXPECT_EQ(ran.load(), 100);
}

TEST(ThreadPool, EmptyRunAndSingleThread) {
  ThreadPool pool(1);
  int calls = 0;
  pool.parallel_for(0, 1, [&](size_t, size_t, int) { ++calls; });
  EXPECT_EQ(calls, 0);
  pool.parallel_for(10, 1, [&](size_t b, size_t e, int t) {
    ++calls;
    EXPECT_EQ(b, 0u);
    EXPECT_EQ(e, 10u);
    EXPECT_EQ(t, 0);
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPool, RunsKernelsSplitByRows) {
  // A matvec split over the pool equals the single-threaded one.
  const Type t = Type::kQ4_0;
  const size_t rows = 301, n = 256;
  std::vector<uint8_t> w(rows * row_bytes(t, n));
  fill_random_matrix(t, rows, n, 5, w.data());
  const TypeKernels& k = active_table().of(t);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 17) - 8.0f;
  std::vector<uint8_t> act(k.act_bytes(n));
  k.prepare(x.data(), n, act.data());
  std::vector<float> y1(rows), y2(rows);
  k.matvec(w.data(), row_bytes(t, n), n, act.data(), y1.data(), 0, rows);
  ThreadPool pool(2);
  for (int rep = 0; rep < 100; ++rep)
    pool.parallel_for(rows, 4, [&](size_t b, size_t e, int) {
      k.matvec(w.data(), row_bytes(t, n), n, act.data(), y2.data() + b, b, e);
    });
  EXPECT_EQ(y1, y2);
}

TEST(SpinBarrier, PhasesStayInStep) {
  for (int spin : {200, 0}) {
    const int kThreads = 3, kPhases = 2000;
    SpinBarrier barrier(kThreads, spin);
    std::vector<int> counter(kPhases, 0);
    std::atomic<int> errors{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&] {
        for (int p = 0; p < kPhases; ++p) {
          __atomic_fetch_add(&counter[static_cast<size_t>(p)], 1, __ATOMIC_SEQ_CST);
          barrier.arrive_and_wait();
          if (__atomic_load_n(&counter[static_cast<size_t>(p)], __ATOMIC_SEQ_CST) != kThreads) errors++;
        }
      });
    for (auto& th : ts) th.join();
    EXPECT_EQ(errors.load(), 0) << "spin " << spin;
  }
}

TEST(Bandwidth, MeasuresSomething) {
  ThreadPool pool(2);
  auto r = measure_read_bandwidth(pool, 16u << 20, 2);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_GT(r->gbs, 0.1);
  EXPECT_EQ(r->threads, 2);
  EXPECT_EQ(r->bytes, 16u << 20);
  EXPECT_FALSE(measure_read_bandwidth(pool, 100, 1).ok());
}

}  // namespace
}  // namespace veil::kernels
