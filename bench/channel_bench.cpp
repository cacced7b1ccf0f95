// Channel micro-benchmarks (the seed's transport figures, ../shared/docs/anchors.md):
//   one-direction throughput with 128 KiB messages over loopback TCP (target >= 2.5 GB/s), 1 KiB round trip,
//   full handshake with a fake HMAC attester and with the real `sim` provider + attest::verify_evidence.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "attest/sim.h"
#include "channel/channel.h"
#include "support/sim_tee.h"

namespace veil::channel {
namespace {

using namespace std::chrono_literals;
Deadline later() { return deadline_in(30s); }

// BENCH-ONLY fake attestation: evidence = report_data || HMAC(key, report_data). Measures the channel, not a TEE.
const Bytes kFakeKey(32, 0x42);
Attester fake_attester() {
  return [](const attest::ReportData& rd) -> Result<attest::Evidence> {
    Bytes data(rd.begin(), rd.end());
    auto mac = crypto::hmac(crypto::HashAlg::kSha256, kFakeKey, data);
    data.insert(data.end(), mac.begin(), mac.end());
    return attest::Evidence{attest::TeeType::kSim, std::move(data)};
  };
}
EvidenceVerifier fake_verifier() {
  return [](const attest::Evidence& ev, const attest::ReportData& expected) -> Result<attest::Claims> {
    if (ev.data.size() != 96) return make_error(ErrorCode::kCorrupt, "fake evidence size");
    auto mac = crypto::hmac(crypto::HashAlg::kSha256, kFakeKey, ByteView(ev.data).first(64));
    if (!ct_equal(mac, ByteView(ev.data).subspan(64)) || !ct_equal(expected, ByteView(ev.data).first(64))) {
      return make_error(ErrorCode::kSecurity, "fake evidence refused");
    }
    attest::Claims c;
    c.simulated = true;
    std::copy(expected.begin(), expected.end(), c.report_data.begin());
    return c;
  };
}

struct TcpPair {
  std::unique_ptr<Channel> client, server;
};

TcpPair connect_pair(const std::string& listen_at, crypto::AeadSuite suite) {
  auto listener = listen(*parse_endpoint(listen_at));
  if (!listener.ok()) throw std::runtime_error(listener.error().message());
  ChannelOptions s, c;
  s.attester = fake_attester();
  c.verifier = fake_verifier();
  c.suite = suite;
  Result<std::unique_ptr<Channel>> server = make_error(ErrorCode::kInternal, "not run");
  std::thread t([&] {
    auto tr = (*listener)->accept(later());
    if (tr.ok()) server = server_handshake(std::move(*tr), s);
  });
  auto client = connect_channel(*parse_endpoint((*listener)->address()), c);
  t.join();
  if (!client.ok() || !server.ok()) throw std::runtime_error("bench handshake failed");
  return {std::move(*client), std::move(*server)};
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Besides wall-clock bytes_per_second, reports the CPU time each side spent per byte as GB/s: on a shared, loaded
// machine the wall clock measures the scheduler, while min(send_cpu_GBps, recv_cpu_GBps) is the rate the pipeline
// reaches with a free core per side.
void throughput(benchmark::State& state, const std::string& endpoint, crypto::AeadSuite suite) {
  const size_t size = static_cast<size_t>(state.range(0));
  auto pair = connect_pair(endpoint, suite);
  std::atomic<double> receiver_cpu{0};
  std::thread receiver([&] {
    Bytes buf;
    double start = thread_cpu_seconds();
    while (pair.server->recv_into(buf, later()).ok()) {
    }
    receiver_cpu = thread_cpu_seconds() - start;
  });
  Bytes msg(size, 0x5a);
  double sender_start = thread_cpu_seconds();
  for (auto _ : state) {
    if (!pair.client->send(msg, later()).ok()) {
      state.SkipWithError("send failed");
      break;
    }
  }
  double sender_cpu = thread_cpu_seconds() - sender_start;
  (void)pair.client->close(later());
  receiver.join();
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
  double bytes = static_cast<double>(state.iterations() * size);
  state.counters["send_cpu_GBps"] = sender_cpu > 0 ? bytes / sender_cpu / 1e9 : 0;
  state.counters["recv_cpu_GBps"] = receiver_cpu > 0 ? bytes / receiver_cpu / 1e9 : 0;
}

void BM_Throughput_Tcp_Aes256Gcm(benchmark::State& state) {
  throughput(state, "tcp:127.0.0.1:0", crypto::AeadSuite::kAes256Gcm);
}
void BM_Throughput_Tcp_ChaCha20Poly1305(benchmark::State& state) {
  throughput(state, "tcp:127.0.0.1:0", crypto::AeadSuite::kChaCha20Poly1305);
}
void BM_Throughput_Unix_Aes256Gcm(benchmark::State& state) {
  auto path = std::filesystem::temp_directory_path() / fmt::format("veil-bench-{}.sock", ::getpid());
  std::filesystem::remove(path);
  throughput(state, "unix:" + path.string(), crypto::AeadSuite::kAes256Gcm);
}
BENCHMARK(BM_Throughput_Tcp_Aes256Gcm)->Arg(128 << 10)->Arg(1 << 20)->UseRealTime();
BENCHMARK(BM_Throughput_Tcp_ChaCha20Poly1305)->Arg(128 << 10)->UseRealTime();
BENCHMARK(BM_Throughput_Unix_Aes256Gcm)->Arg(128 << 10)->UseRealTime();

void BM_RoundTrip_Tcp(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  auto pair = connect_pair("tcp:127.0.0.1:0", crypto::AeadSuite::kAes256Gcm);
  std::thread echo([&] {
    Bytes buf;
    while (pair.server->recv_into(buf, later()).ok()) {
      if (!pair.server->send(buf, later()).ok()) break;
    }
  });
  Bytes msg(size, 0x33), back;
  for (auto _ : state) {
    if (!pair.client->send(msg, later()).ok() || !pair.client->recv_into(back, later()).ok()) {
      state.SkipWithError("round trip failed");
      break;
    }
  }
  (void)pair.client->close(later());
  echo.join();
}
BENCHMARK(BM_RoundTrip_Tcp)->Arg(1 << 10)->UseRealTime();

// Handshakes over in-process pairs; a long-lived server thread takes each new transport.
class HandshakeServer {
 public:
  explicit HandshakeServer(ChannelOptions options) : options_(std::move(options)), thread_([this] { loop(); }) {}
  ~HandshakeServer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Blocks until the server has finished `n` handshakes.
  void wait_completed(uint64_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return completed_ >= n; });
  }
  void submit(std::unique_ptr<Transport> t) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(t));
    }
    cv_.notify_all();
  }

 private:
  void loop() {
    while (true) {
      std::unique_ptr<Transport> t;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        t = std::move(queue_.front());
        queue_.pop_front();
      }
      double start = thread_cpu_seconds();
      auto ch = server_handshake(std::move(t), options_);
      cpu_seconds = cpu_seconds + (thread_cpu_seconds() - start);
      if (!ch.ok()) ++failures;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++completed_;
      }
      cv_.notify_all();
    }
  }
  ChannelOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Transport>> queue_;
  uint64_t completed_ = 0;
  bool stop_ = false;
  std::thread thread_;

 public:
  std::atomic<int> failures{0};
  std::atomic<double> cpu_seconds{0};
};

// Reports, besides wall-clock time, client_cpu_us and server_cpu_us: the CPU each side spends per handshake.
// `isolated`: the latency of one handshake on an otherwise idle pair (what a client that connects sees): between
// timed handshakes the loop waits, untimed, until the server has finished the previous one and 1 ms has passed, so
// work the previous handshake left in the background (the next ephemeral keys) is done. Otherwise handshakes run
// back to back and the figure is the pair's throughput on these cores, background work included.
void run_handshakes(benchmark::State& state, ChannelOptions server, ChannelOptions client, bool isolated) {
  HandshakeServer hs(std::move(server));
  double client_start = thread_cpu_seconds();
  uint64_t done = 0;
  for (auto _ : state) {
    if (isolated && done > 0) {
      state.PauseTiming();
      hs.wait_completed(done);
      std::this_thread::sleep_for(1ms);
      state.ResumeTiming();
    }
    ++done;
    auto [a, b] = make_in_process_pair(1 << 16);
    hs.submit(std::move(b));
    auto ch = client_handshake(std::move(a), client);
    if (!ch.ok()) {
      state.SkipWithError(ch.error().message().c_str());
      break;
    }
  }
  double client_cpu = thread_cpu_seconds() - client_start;
  double n = static_cast<double>(std::max<int64_t>(state.iterations(), 1));
  state.counters["client_cpu_us"] = client_cpu / n * 1e6;
  state.counters["server_cpu_us"] = hs.cpu_seconds / n * 1e6;
}

void BM_Handshake_FakeAttestation(benchmark::State& state) {
  ChannelOptions s, c;
  s.attester = fake_attester();
  c.verifier = fake_verifier();
  if (state.range(0) == 2) {
    s.mode = c.mode = Mode::kMutual;
    c.attester = fake_attester();
    s.verifier = fake_verifier();
  }
  run_handshakes(state, s, c, state.range(1) == 1);
}
BENCHMARK(BM_Handshake_FakeAttestation)->ArgsProduct({{1, 2}, {0, 1}})->ArgNames({"mode", "isolated"})->UseRealTime();

// A simulated TEE for the benches (tests/support), in a temporary folder removed afterwards.
struct BenchSimTee {
  std::filesystem::path dir = made(std::filesystem::temp_directory_path() / fmt::format("veil-bench-sim-{}", ::getpid()));
  Result<testsupport::SimTee> tee = testsupport::make_sim_tee(dir);
  static std::filesystem::path made(std::filesystem::path d) {
    std::filesystem::create_directories(d);
    return d;
  }
  ~BenchSimTee() { std::filesystem::remove_all(dir); }
};

// Real sim provider + attest::verify_evidence. range(0): 1 = mutual attestation (both sides quote and verify), else
// the server alone is attested; range(1): isolated (see run_handshakes).
void BM_Handshake_SimAttestation(benchmark::State& state) {
  BenchSimTee sim;
  if (!sim.tee.ok()) {
    state.SkipWithError(sim.tee.error().message().c_str());
    return;
  }
  const testsupport::SimTee& tee = *sim.tee;
  ChannelOptions s, c;
  s.attester = attester_from_provider(tee.provider);
  c.verifier = verifier_from_policy(tee.policy(), tee.collateral);
  if (state.range(0) == 1) {
    s.mode = c.mode = Mode::kMutual;
    c.attester = attester_from_provider(tee.provider);
    s.verifier = verifier_from_policy(tee.policy(), tee.collateral);
  }
  run_handshakes(state, s, c, state.range(1) == 1);
}
BENCHMARK(BM_Handshake_SimAttestation)->ArgsProduct({{0, 1}, {0, 1}})->ArgNames({"mutual", "isolated"})->UseRealTime();

// The sim evidence of a handshake: the server's quote and the client's full verify_evidence (policy included).
void BM_HandshakePart_Sim(benchmark::State& state) {
  BenchSimTee sim;
  if (!sim.tee.ok()) {
    state.SkipWithError(sim.tee.error().message().c_str());
    return;
  }
  auto attester = attester_from_provider(sim.tee->provider);
  auto verifier = verifier_from_policy(sim.tee->policy(), sim.tee->collateral);
  attest::ReportData rd{};
  rd[0] = 7;
  auto ev = attester(rd);
  for (auto _ : state) {
    if (state.range(0) == 0) {
      benchmark::DoNotOptimize(attester(rd));
    } else if (!verifier(*ev, rd).ok()) {
      state.SkipWithError("verify failed");
      break;
    }
  }
  state.SetLabel(state.range(0) == 0 ? "sim quote" : "sim verify_evidence");
}
BENCHMARK(BM_HandshakePart_Sim)->DenseRange(0, 1)->ArgName("part");

// The handshake's building blocks, each as the handshake calls it (the costs the two handshake rows add up).
void BM_HandshakePart(benchmark::State& state) {
  const Bytes key(32, 0x11), data(200, 0x22);
  auto own = crypto::x25519_generate();
  auto peer = crypto::x25519_generate();
  auto aead_key = crypto::random_bytes(32);
  for (auto _ : state) {
    switch (state.range(0)) {
      case 0: benchmark::DoNotOptimize(crypto::hmac(crypto::HashAlg::kSha256, key, data)); break;
      case 1: benchmark::DoNotOptimize(crypto::hkdf_expand(crypto::HashAlg::kSha256, key, data, 32)); break;
      case 2: benchmark::DoNotOptimize(crypto::sha256(data)); break;
      case 3: benchmark::DoNotOptimize(crypto::x25519_generate()); break;
      case 4: benchmark::DoNotOptimize(crypto::x25519_shared(own, peer.public_key)); break;
      case 5: benchmark::DoNotOptimize(crypto::Aead::create(crypto::AeadSuite::kAes256Gcm, aead_key)); break;
    }
  }
  static const char* const kNames[] = {"hmac-sha256 200 B", "hkdf-expand 32 B", "sha256 200 B",
                                       "x25519 keygen",     "x25519 derive",    "aes-256-gcm key setup"};
  state.SetLabel(kNames[state.range(0)]);
}
BENCHMARK(BM_HandshakePart)->DenseRange(0, 5)->ArgName("part");

}  // namespace
}  // namespace veil::channel

BENCHMARK_MAIN();
