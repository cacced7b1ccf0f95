// ThreadPool: a fixed set of worker threads that run one parallel loop at a time. The calling thread takes part,
// so ThreadPool(1) has no workers and runs everything inline. run() allocates nothing.
//
// Thread-safety: run() may be called by one thread at a time (the engine's forward pass); it blocks until every
// task has finished.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace veil::tensor {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, size_t begin, size_t end);

  explicit ThreadPool(size_t n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }
  // Splits [0, n) into size() contiguous ranges (each a multiple of `grain` where possible) and runs fn on each.
  void run(size_t n, size_t grain, TaskFn fn, void* ctx);

 private:
  void worker(size_t index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  size_t generation_ = 0;
  size_t pending_ = 0;
  bool stop_ = false;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  size_t n_ = 0;
  size_t grain_ = 1;
};

}  // namespace veil::tensor
