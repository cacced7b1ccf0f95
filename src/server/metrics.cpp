#include "server/metrics.h"

#include <fmt/format.h>

namespace veil::server {

void Histogram::observe(double v) {
  for (size_t i = 0; i < kBounds.size(); ++i) {
    if (v <= kBounds[i]) ++buckets_[i];
  }
  ++count_;
  sum_ += v;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  std::string sep = labels.empty() ? "" : ",";
  for (size_t i = 0; i < kBounds.size(); ++i) {
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, kBounds[i], buckets_[i]);
  }
  out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count_);
  std::string l = labels.empty() ? "" : "{" + labels + "}";
  out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, l, sum_, name, l, count_);
}

void Metrics::request_done(const std::string& route, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
  durations_[route].observe(seconds);
}

void Metrics::time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(seconds);
}

void Metrics::tokens(uint64_t prompt, uint64_t completion) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += prompt;
  completion_tokens_ += completion;
}

void Metrics::rate_limited() {
  std::lock_guard<std::mutex> lock(mu_);
  ++rate_limited_;
}

void Metrics::connection_opened() {
  std::lock_guard<std::mutex> lock(mu_);
  ++connections_total_;
  ++connections_open_;
}

void Metrics::connection_closed() {
  std::lock_guard<std::mutex> lock(mu_);
  --connections_open_;
}

std::string Metrics::render(const BackendStats& backend) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  out += "# HELP veil_http_requests_total HTTP requests by route and status.\n# TYPE veil_http_requests_total counter\n";
  for (const auto& [k, v] : requests_) {
    out += fmt::format("veil_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, v);
  }
  out += "# HELP veil_http_request_duration_seconds Time from request to last byte.\n"
         "# TYPE veil_http_request_duration_seconds histogram\n";
  for (const auto& [route, h] : durations_) {
    h.render(out, "veil_http_request_duration_seconds", fmt::format("route=\"{}\"", route));
  }
  out += "# HELP veil_time_to_first_token_seconds Time from request to the first generated text.\n"
         "# TYPE veil_time_to_first_token_seconds histogram\n";
  ttft_.render(out, "veil_time_to_first_token_seconds", "");
  out += fmt::format("# TYPE veil_prompt_tokens_total counter\nveil_prompt_tokens_total {}\n", prompt_tokens_);
  out += fmt::format("# TYPE veil_completion_tokens_total counter\nveil_completion_tokens_total {}\n",
                     completion_tokens_);
  out += fmt::format("# TYPE veil_rate_limited_total counter\nveil_rate_limited_total {}\n", rate_limited_);
  out += fmt::format("# TYPE veil_connections_total counter\nveil_connections_total {}\n", connections_total_);
  out += fmt::format("# TYPE veil_connections_open gauge\nveil_connections_open {}\n", connections_open_);
  out += fmt::format("# TYPE veil_sequences_running gauge\nveil_sequences_running {}\n", backend.running);
  out += fmt::format("# TYPE veil_requests_queued gauge\nveil_requests_queued {}\n", backend.queued);
  out += fmt::format("# TYPE veil_sequence_slots gauge\nveil_sequence_slots {}\n", backend.max_slots);
  out += fmt::format("# TYPE veil_forward_lanes gauge\nveil_forward_lanes {}\n", backend.lanes);
  out += "# HELP veil_forward_passes_total Batched forward passes (one per scheduler step).\n";
  out += fmt::format("# TYPE veil_forward_passes_total counter\nveil_forward_passes_total {}\n", backend.forward_passes);
  out += "# HELP veil_forward_sequences_total Sequences summed over forward passes (/ passes = mean batch).\n";
  out += fmt::format("# TYPE veil_forward_sequences_total counter\nveil_forward_sequences_total {}\n",
                     backend.forward_sequences);
  return out;
}

}  // namespace veil::server
