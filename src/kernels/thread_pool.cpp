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
  generation_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&generation_);
  for (auto& t : workers_) t.join();
}

// Claims ranges of job `job` until none is left (or a newer job has replaced it).
void ThreadPool::work(uint32_t job, int thread) {
  const Job& j = jobs_desc_[job & 3];
  for (;;) {
    uint64_t c = claim_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(c >> 32) != job) return;
    const auto r = static_cast<uint32_t>(c);
    // While the counter carries this job's id, slot job & 3 holds this job (it is rewritten only for job + 4).
    const uint32_t ranges = j.ranges.load(std::memory_order_relaxed);
    if (r >= ranges) return;
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const size_t n = j.n.load(std::memory_order_relaxed), grain = j.grain.load(std::memory_order_relaxed);
    const size_t units = (n + grain - 1) / grain;
    const size_t per = units / ranges, extra = units % ranges;
    const size_t ub = r * per + std::min<size_t>(r, extra);
    const size_t ue = ub + per + (r < extra ? 1 : 0);
    const size_t b = std::min(n, ub * grain), e = std::min(n, ue * grain);
    if (b < e) j.fn.load(std::memory_order_relaxed)(j.ctx.load(std::memory_order_relaxed), b, e, thread);
    if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == ranges) {
      if (caller_sleeping_.load(std::memory_order_seq_cst)) futex_wake_all(&done_);
    }
  }
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
    work(seen, index);
  }
}

void ThreadPool::run(size_t n, size_t grain, TaskFn fn, void* ctx, int chunks_per_thread) {
  if (n == 0) return;
  ++jobs_;
  if (n_threads_ == 1) {
    fn(ctx, 0, n, 0);
    return;
  }
  if (grain == 0) grain = 1;
  const size_t units = (n + grain - 1) / grain;
  const auto ranges = static_cast<uint32_t>(
      std::min<size_t>(units, static_cast<size_t>(n_threads_) * static_cast<size_t>(std::max(chunks_per_thread, 1))));
  const uint32_t job = generation_.load(std::memory_order_relaxed) + 1;
  Job& j = jobs_desc_[job & 3];
  j.fn.store(fn, std::memory_order_relaxed);
  j.ctx.store(ctx, std::memory_order_relaxed);
  j.n.store(n, std::memory_order_relaxed);
  j.grain.store(grain, std::memory_order_relaxed);
  j.ranges.store(ranges, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(job) << 32, std::memory_order_release);
  generation_.store(job, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation_);
  work(job, 0);
  auto done = [&] { return done_.load(std::memory_order_acquire) == ranges; };
  if (!spin_until(done, spin_us_)) {
    caller_sleeping_.store(1, std::memory_order_seq_cst);
    for (;;) {
      const uint32_t d = done_.load(std::memory_order_seq_cst);
      if (d == ranges) break;
      futex_wait(&done_, d);
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
