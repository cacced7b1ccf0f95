// Prometheus metrics for /metrics. Only counts, sizes and timings: labels are fixed route names and
// status codes, never anything taken from a request body or key.
//
// Thread-safety: all methods are safe from any thread.
#pragma once

#include <array>
#include <map>
#include <mutex>
#include <string>

#include "server/backend.h"

namespace veil::server {

class Histogram {
 public:
  static constexpr std::array<double, 12> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  void observe(double v);
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::array<uint64_t, kBounds.size()> buckets_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  void request_done(const std::string& route, int status, double seconds);
  void time_to_first_token(double seconds);
  void tokens(uint64_t prompt, uint64_t completion);
  void rate_limited();
  void connection_opened();
  void connection_closed();
  // Text exposition format; gauges passed in by the caller.
  std::string render(const BackendStats& backend) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> durations_;
  Histogram ttft_;
  uint64_t prompt_tokens_ = 0;
  uint64_t completion_tokens_ = 0;
  uint64_t rate_limited_ = 0;
  uint64_t connections_total_ = 0;
  int64_t connections_open_ = 0;
};

}  // namespace veil::server
