#include "channel/assist.h"

#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace veil::channel::detail {
namespace {

// One job slot and one thread, made on first use. Never destroyed: the thread is detached and may be waiting on
// the condition variable while static destructors run at exit.
struct Assist {
  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> job;                  // set while a job waits to start
  std::shared_ptr<AssistTask::State> state;   // the queued or running job's
  const pid_t pid = ::getpid();

  Assist() { std::thread([this] { loop(); }).detach(); }

  void loop() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return job != nullptr; });
      std::function<void()> work = std::move(job);
      job = nullptr;
      lock.unlock();
      std::exception_ptr err;
      try {
        work();
      } catch (...) {
        err = std::current_exception();
      }
      work = nullptr;  // the captures go before the caller is released
      lock.lock();
      state->error = err;
      state->done = true;
      state = nullptr;  // idle: the next job may be taken
      cv.notify_all();
    }
  }
};

Assist& assist() {
  static Assist* a = new Assist();  // deliberately never destroyed (see Assist)
  return *a;
}

}  // namespace

AssistTask run_assisted(std::function<void()> work) {
  Assist& a = assist();
  {
    std::lock_guard<std::mutex> lock(a.mu);
    if (a.state == nullptr && a.pid == ::getpid()) {
      a.state = std::make_shared<AssistTask::State>();
      a.job = std::move(work);
      a.cv.notify_all();
      return AssistTask(a.state);
    }
  }
  work();
  return AssistTask();
}

void AssistTask::wait() {
  if (!state_) return;
  Assist& a = assist();
  std::exception_ptr err;
  {
    std::unique_lock<std::mutex> lock(a.mu);
    a.cv.wait(lock, [&] { return state_->done; });
    err = state_->error;
  }
  state_ = nullptr;
  if (err) std::rethrow_exception(err);
}

AssistTask::~AssistTask() {
  try {
    wait();
  } catch (...) {
    // Destructors do not throw: a caller that did not wait() is already leaving on an error of its own.
  }
}

}  // namespace veil::channel::detail
