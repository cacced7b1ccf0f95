// ThreadPool and SpinBarrier: bounded spinning, then a futex sleep.
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>

#include <immintrin.h>

#include "kernels/kernels.h"

namespace veil::kernels {
namespace {

static_assert(sizeof(std::atomic<uint32_t>) == 4 && sizeof(std::atomic<int>) == 4);

void futex_wait(void* addr, uint32_t expected) {
  syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(void* addr) { syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0); }

inline void cpu_relax() { _mm_pause(); }

using Clock = std::chrono::steady_clock;

// Spins until pred() holds or spin_us elapse; returns whether pred() held.
template <typename P>
bool spin_until(P pred, int spin_us) {
  if (pred()) return true;
  const auto deadline = Clock::now() + std::chrono::microseconds(spin_us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (Clock::now() >= deadline) return pred();
    // Give the core away if another thread is runnable here (oversubscribed machines: the thread we wait for
    // may be queued behind us). Returns at once when the core is otherwise idle.
    sched_yield();
  }
}

void pin_to_nth_cpu(int index) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  int count = CPU_COUNT(&allowed);
  if (count <= 0) return;
  int want = index % count, seen = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (seen++ == want) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);
      return;
    }
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads, bool pin, int spin_us)
    : n_threads_(n_threads < 1 ? 1 : n_threads), spin_us_(spin_us < 0 ? 0 : spin_us) {
  if (pin) pin_to_nth_cpu(0);
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i)
    workers_.emplace_back([this, i, pin] {
      if (pin) pin_to_nth_cpu(i);
      worker_main(i);
    });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  futex_wake_all(&generation_);
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_range(int index) {
  // Range `index` of n_threads_: boundaries at multiples of grain_.
  const size_t units = (n_ + grain_ - 1) / grain_;
  const size_t per = units / static_cast<size_t>(n_threads_), extra = units % static_cast<size_t>(n_threads_);
  const size_t i = static_cast<size_t>(index);
  size_t ub = i * per + std::min(i, extra);
  size_t ue = ub + per + (i < extra ? 1 : 0);
  size_t b = std::min(n_, ub * grain_), e = std::min(n_, ue * grain_);
  if (b < e) fn_(ctx_, b, e, index);
}

void ThreadPool::worker_main(int index) {
  uint32_t seen = 0;
  for (;;) {
    auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(changed, spin_us_)) {
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      while (generation_.load(std::memory_order_seq_cst) == seen) futex_wait(&generation_, seen);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    run_range(index);
    if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1) {
      if (caller_sleeping_.load(std::memory_order_seq_cst)) futex_wake_all(&pending_);
    }
  }
}

void ThreadPool::run(size_t n, size_t grain, TaskFn fn, void* ctx) {
  if (n == 0) return;
  ++jobs_;
  if (n_threads_ == 1) {
    fn(ctx, 0, n, 0);
    return;
  }
  fn_ = fn;
  ctx_ = ctx;
  n_ = n;
  grain_ = grain ? grain : 1;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation_);
  run_range(0);
  auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, spin_us_)) {
    caller_sleeping_.store(1, std::memory_order_seq_cst);
    for (;;) {
      int p = pending_.load(std::memory_order_seq_cst);
      if (p == 0) break;
      futex_wait(&pending_, static_cast<uint32_t>(p));
    }
    caller_sleeping_.store(0, std::memory_order_relaxed);
  }
}

void SpinBarrier::arrive_and_wait() {
  const uint32_t phase = phase_.load(std::memory_order_acquire);
  if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
    count_.store(0, std::memory_order_relaxed);
    phase_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&phase_);
    return;
  }
  auto moved = [&] { return phase_.load(std::memory_order_acquire) != phase; };
  if (spin_until(moved, spin_us_)) return;
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  while (phase_.load(std::memory_order_seq_cst) == phase) futex_wait(&phase_, phase);
  sleepers_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace veil::kernels
