#include "tensor/thread_pool.h"

#include <algorithm>

namespace veil::tensor {

namespace {
void range_for(size_t part, size_t parts, size_t n, size_t grain, size_t* b, size_t* e) {
  size_t units = (n + grain - 1) / grain;
  size_t ub = units * part / parts;
  size_t ue = units * (part + 1) / parts;
  *b = std::min(n, ub * grain);
  *e = std::min(n, ue * grain);
}
}  // namespace

ThreadPool::ThreadPool(size_t n_threads) {
  if (n_threads < 1) n_threads = 1;
  for (size_t i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(size_t index) {
  size_t seen = 0;
  for (;;) {
    TaskFn fn;
    void* ctx;
    size_t n, grain;
    {
      std::unique_lock<std::mutex> lk(mu_);
      start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      ctx = ctx_;
      n = n_;
      grain = grain_;
    }
    size_t b, e;
    range_for(index, size(), n, grain, &b, &e);
    if (b < e) fn(ctx, b, e);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

void ThreadPool::run(size_t n, size_t grain, TaskFn fn, void* ctx) {
  if (grain == 0) grain = 1;
  if (workers_.empty() || n <= grain) {
    if (n) fn(ctx, 0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    grain_ = grain;
    pending_ = workers_.size();
    ++generation_;
  }
  start_cv_.notify_all();
  size_t b, e;
  range_for(0, size(), n, grain, &b, &e);
  if (b < e) fn(ctx, b, e);
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return pending_ == 0; });
}

}  // namespace veil::tensor
