// Retry with exponential backoff, jitter, a maximum number of attempts and an overall deadline.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "channel/channel.h"

namespace veil::channel {

bool is_retryable(const Error& error) {
  switch (error.code()) {
    case ErrorCode::kUnavailable:
    case ErrorCode::kTimeout:
    case ErrorCode::kIo:
      return true;
    default:
      return false;
  }
}

Status retry(const RetryPolicy& policy, const std::function<Status(int attempt, Deadline deadline)>& attempt,
             const RetryEnv& env) {
  if (policy.max_attempts < 1 || policy.multiplier < 1.0 || policy.jitter < 0.0 || policy.jitter > 1.0 ||
      policy.initial_backoff.count() < 0 || policy.max_backoff < policy.initial_backoff) {
    return make_error(ErrorCode::kInvalidArgument,
                      "retry policy: needs max_attempts >= 1, multiplier >= 1, jitter in [0, 1], "
                      "0 <= initial_backoff <= max_backoff");
  }
  auto now = env.now ? env.now : [] { return Clock::now(); };
  auto sleep = env.sleep ? env.sleep : [](std::chrono::milliseconds d) { std::this_thread::sleep_for(d); };
  std::function<double()> uniform = env.uniform01;
  if (!uniform) {
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    uniform = [rng] { return std::uniform_real_distribution<double>(0.0, 1.0)(*rng); };
  }
  const Deadline overall = now() + policy.overall_timeout;
  double backoff_ms = static_cast<double>(policy.initial_backoff.count());
  for (int n = 1;; ++n) {
    Status st = attempt(n, overall);
    if (st.ok()) return st;
    Error err = std::move(st).error();
    if (!is_retryable(err)) return std::move(err).wrap(fmt::format("attempt {} (not retryable)", n));
    if (n >= policy.max_attempts) {
      return std::move(err).wrap(fmt::format("gave up after {} attempts", n));
    }
    double capped = std::min(backoff_ms, static_cast<double>(policy.max_backoff.count()));
    double wait = capped * (1.0 - policy.jitter * uniform());
    auto wait_ms = std::chrono::milliseconds(static_cast<int64_t>(wait));
    if (now() + wait_ms >= overall) {
      return std::move(err).wrap(fmt::format("gave up after {} attempts: overall timeout of {} ms", n,
                                             policy.overall_timeout.count()));
    }
    spdlog::debug("retry: attempt {} failed ({}), next in {} ms", n, error_code_name(err.code()), wait_ms.count());
    sleep(wait_ms);
    backoff_ms *= policy.multiplier;
  }
}

Result<std::unique_ptr<Channel>> connect_channel(const Endpoint& endpoint, const ChannelOptions& options,
                                                 const RetryPolicy& policy, const RetryEnv& env) {
  std::unique_ptr<Channel> channel;
  auto st = retry(policy, [&](int, Deadline overall) -> Status {
    Deadline d = std::min(overall, Clock::now() + options.handshake_timeout);
    VEIL_ASSIGN_OR_RETURN(auto transport, connect(endpoint, d));
    VEIL_ASSIGN_OR_RETURN(channel, client_handshake(std::move(transport), options));
    return ok_status();
  }, env);
  if (!st.ok()) return std::move(st).error().wrap(fmt::format("opening channel to {}", endpoint.to_string()));
  return channel;
}

}  // namespace veil::channel
