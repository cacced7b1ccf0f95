// veil relay: forward a pipeline stage's channel ciphertext through this host (docs/pipeline.md "Relay mode").
#include <cstdio>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "cli/command.h"
#include "pipeline/runtime.h"

namespace veil::cli {
namespace {

struct RelayArgs {
  std::string listen;
  std::string to;
  uint32_t connect_timeout_s = 5;
  uint32_t max_connections = 64;
};

Status run_relay(const RelayArgs& a) {
  // First, before the engine, channel or server threads start: they inherit the mask, so only the wait() at the
  // end receives SIGINT/SIGTERM and stops gracefully (one during start-up takes effect once started).
  StopSignals stop_signals;
  pipeline::RelayOptions ro;
  ro.listen = a.listen;
  ro.target = a.to;
  ro.connect_timeout = std::chrono::seconds(a.connect_timeout_s);
  ro.max_connections = a.max_connections;


  auto relay = pipeline::Relay::start(std::move(ro));
  if (!relay.ok()) {
    const Error& e = relay.error();
    return e.code() == ErrorCode::kInvalidArgument ? Error(ErrorCode::kUsage, e.message()) : e;
  }
  std::printf("veil relay: forwarding %s to %s\n", (*relay)->address().c_str(), (*relay)->target().c_str());
  std::fflush(stdout);
  const int sig = stop_signals.wait();
  spdlog::warn("relay: signal {}: stopping", sig);
  (*relay)->stop();
  return ok_status();
}

void setup_relay(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<RelayArgs>();
  CLI::App* sub = app.add_subcommand(
      "relay", "Forward TCP connections to one pipeline stage (host relay: it sees only channel ciphertext)");
  sub->add_option("--listen", a->listen, "HOST:PORT to accept connections on, HOST an IP address (port 0: any free port)")
      ->required();
  sub->add_option("--to", a->to, "HOST:PORT of the stage every connection is forwarded to")->required();
  sub->add_option("--connect-timeout", a->connect_timeout_s, "Seconds to reach the stage before the client is closed")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  sub->add_option("--max-connections", a->max_connections, "Connections open at once (more are closed at once)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  sub->footer(
      "The attested channel runs end to end between the front and the stage: the relay cannot read activations, and "
      "a byte it changes makes the channel refuse the record. Point the stage's manifest endpoint at the relay.\n"
      "Example: veil relay --listen 0.0.0.0:7400 --to 192.168.122.11:7400");
  runner.on(sub, [a]() { return run_relay(*a); });
}

VEIL_COMMAND(setup_relay, 62);

}  // namespace
}  // namespace veil::cli
