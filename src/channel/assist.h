// Internal: a second thread for the independent halves of a handshake step. While one side produces or checks
// evidence (a signature or a verification, ~30-70 us with sim, more with real TEEs), the X25519 key agreement
// (~50 us) runs beside it instead of after it (docs/protocol.md "Implementation notes").
#pragma once

#include <exception>
#include <functional>
#include <memory>

namespace veil::channel::detail {

// Work handed to the process's assist thread, or already done. The destructor waits for it, so work that
// captures the caller's locals never outlives them, whichever way the caller leaves.
class AssistTask {
 public:
  struct State {
    bool done = false;
    std::exception_ptr error;
  };
  AssistTask() = default;  // work that ran inline: nothing to wait for
  explicit AssistTask(std::shared_ptr<State> state) : state_(std::move(state)) {}
  AssistTask(AssistTask&&) noexcept = default;
  AssistTask& operator=(AssistTask&&) = delete;
  AssistTask(const AssistTask&) = delete;
  ~AssistTask();
  // Blocks until the work has run; rethrows what it threw.
  void wait();

 private:
  std::shared_ptr<State> state_;
};

// Runs `work` on the assist thread when it is idle; when it is busy with another handshake's work (or in a
// forked child, where the thread does not exist), runs `work` on the calling thread before returning. Either
// way the result is the same: only the latency differs.
AssistTask run_assisted(std::function<void()> work);

}  // namespace veil::channel::detail
