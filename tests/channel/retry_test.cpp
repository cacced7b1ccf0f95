// Retry policy with an injected clock and sleeper: no test waits.
#include <gtest/gtest.h>

#include "channel/channel.h"

namespace veil::channel {
namespace {

using namespace std::chrono_literals;

struct FakeTime {
  Clock::time_point now = Clock::time_point() + 1000h;
  std::vector<std::chrono::milliseconds> sleeps;
  double u = 0.0;
  RetryEnv env() {
    RetryEnv e;
    e.now = [this] { return now; };
    e.sleep = [this](std::chrono::milliseconds d) { sleeps.push_back(d); now += d; };
    e.uniform01 = [this] { return u; };
    return e;
  }
};

TEST(ChannelRetry, ExponentialBackoffUntilSuccess) {
  FakeTime t;
  RetryPolicy p;
  p.max_attempts = 5;
  p.initial_backoff = 100ms;
  p.multiplier = 2.0;
  p.jitter = 0.0;
  int calls = 0;
  auto st = retry(p, [&](int n, Deadline) -> Status {
    ++calls;
    EXPECT_EQ(n, calls);
    if (n < 4) return make_error(ErrorCode::kUnavailable, "connection refused");
    return ok_status();
  }, t.env());
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(t.sleeps, (std::vector<std::chrono::milliseconds>{100ms, 200ms, 400ms}));
}

TEST(ChannelRetry, BackoffIsCappedAndJittered) {
  FakeTime t;
  t.u = 1.0;  // the largest jitter: wait * (1 - jitter)
  RetryPolicy p;
  p.max_attempts = 6;
  p.initial_backoff = 100ms;
  p.max_backoff = 300ms;
  p.jitter = 0.5;
  auto st = retry(p, [&](int, Deadline) -> Status { return make_error(ErrorCode::kTimeout, "slow"); }, t.env());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kTimeout);
  EXPECT_NE(st.error().message().find("gave up after 6 attempts"), std::string::npos);
  EXPECT_EQ(t.sleeps, (std::vector<std::chrono::milliseconds>{50ms, 100ms, 150ms, 150ms, 150ms}));
}

TEST(ChannelRetry, SecurityRefusalIsNeverRetried) {
  FakeTime t;
  int calls = 0;
  auto st = retry({}, [&](int, Deadline) -> Status {
    ++calls;
    return make_error(ErrorCode::kSecurity, "evidence refused");
  }, t.env());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kSecurity);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(t.sleeps.empty());
}

TEST(ChannelRetry, OverallDeadlineStopsEarly) {
  FakeTime t;
  RetryPolicy p;
  p.max_attempts = 100;
  p.initial_backoff = 400ms;
  p.multiplier = 1.0;
  p.max_backoff = 400ms;
  p.jitter = 0.0;
  p.overall_timeout = 1000ms;
  Deadline seen{};
  int calls = 0;
  auto st = retry(p, [&](int, Deadline d) -> Status {
    ++calls;
    seen = d;
    return make_error(ErrorCode::kUnavailable, "down");
  }, t.env());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(calls, 3);  // t=0, 400, 800; the next wait would end at 1200 > 1000
  EXPECT_EQ(seen, Clock::time_point() + 1000h + 1000ms);
  EXPECT_NE(st.error().message().find("overall timeout"), std::string::npos);
}

TEST(ChannelRetry, InvalidPolicyRefused) {
  RetryPolicy p;
  p.max_attempts = 0;
  auto st = retry(p, [](int, Deadline) { return ok_status(); });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
}

TEST(ChannelRetry, ConnectChannelRetriesUntilServerListens) {
  // The first attempts hit a closed port; the fake sleeper starts the server before the last attempt.
  auto probe = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(probe.ok());
  auto ep = *parse_endpoint((*probe)->address());
  probe->reset();
  FakeTime t;
  RetryEnv env = t.env();
  std::unique_ptr<Listener> listener;
  int sleeps = 0;
  env.sleep = [&](std::chrono::milliseconds) {
    if (++sleeps == 2) {
      auto l = listen(ep);
      ASSERT_TRUE(l.ok()) << l.error().message();
      listener = std::move(*l);
    }
  };
  env.now = [] { return Clock::now(); };
  ChannelOptions opt;
  // No verifier: once connected, the handshake fails with a non-retryable misuse error, which ends the retries.
  auto r = connect_channel(ep, opt, RetryPolicy{}, env);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument) << r.error().message();
  EXPECT_EQ(sleeps, 2);
}

}  // namespace
}  // namespace veil::channel
