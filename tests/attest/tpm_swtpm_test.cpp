// The tpm provider against a real software TPM: the test starts its own swtpm (TCP on free
// loopback ports, a fresh state directory), quotes through tpm2-tss ESYS, and verifies the evidence
// with the tpm verifier. Skipped, with the reason, when swtpm cannot run here.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "attest/formats.h"
#include "attest/tpm_bundle.h"
#include "crypto/crypto.h"

extern char** environ;

namespace veil::attest::tpm {
namespace {

namespace fs = std::filesystem;

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// Whether `op` (bind or connect) succeeds on a fresh TCP socket with 127.0.0.1:port.
template <class Op>
bool try_on_port(int port, Op op) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return false;
  sockaddr_in a = loopback(port);
  bool ok = op(s, reinterpret_cast<sockaddr*>(&a), static_cast<socklen_t>(sizeof a)) == 0;
  ::close(s);
  return ok;
}

bool can_bind(int port) { return try_on_port(port, ::bind); }
bool accepts(int port) { return try_on_port(port, ::connect); }

// A free port P with P+1 also free (swtpm's server and control channels).
int free_port_pair() {
  for (int attempt = 0; attempt < 64; ++attempt) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (s >= 0) ::close(s);
      continue;
    }
    int port = ntohs(a.sin_port);
    ::close(s);
    if (port < 65535 && can_bind(port) && can_bind(port + 1)) return port;
  }
  return -1;
}

class Swtpm {
 public:
  // Starts swtpm; on failure returns false and sets `why`.
  bool start(std::string& why) {
    char tmpl[] = "/tmp/veil-swtpm-XXXXXX";
    if (!::mkdtemp(tmpl)) { why = "mkdtemp failed"; return false; }
    dir_ = tmpl;
    port_ = free_port_pair();
    if (port_ < 0) { why = "no free loopback port pair"; return false; }
    std::string state = "dir=" + dir_.string();
    std::string server = "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
    std::string ctrl = "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
    std::string pid = "file=" + (dir_ / "swtpm.pid").string();
    std::string log = "file=" + (dir_ / "swtpm.log").string();
    std::vector<std::string> args = {"swtpm", "socket", "--tpm2", "--tpmstate", state, "--server", server,
                                     "--ctrl", ctrl, "--flags", "not-need-init,startup-clear", "--pid", pid,
                                     "--log", log, "--daemon"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t child = 0;
    // --daemon: the child returns once swtpm listens on both ports (it daemonizes after binding).
    int rc = ::posix_spawnp(&child, "swtpm", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) { why = std::string("cannot run swtpm: ") + std::strerror(rc); return false; }
    int status = 0;
    if (::waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      why = "swtpm exited with status " + std::to_string(status) + ": " + read_log();
      return false;
    }
    std::ifstream pf(dir_ / "swtpm.pid");
    if (!(pf >> daemon_pid_) || daemon_pid_ <= 0) { why = "swtpm wrote no pid file"; return false; }
    // Readiness: the daemon listens before the parent exits; confirm with a bounded number of connects.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!accepts(port_)) {
      if (std::chrono::steady_clock::now() > deadline) { why = "swtpm does not accept connections"; return false; }
    }
    return true;
  }
  ~Swtpm() {
    if (daemon_pid_ > 0) {
      ::kill(daemon_pid_, SIGTERM);
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (::kill(daemon_pid_, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
        if (!accepts(port_)) break;  // its sockets are closed: it is going away
      }
    }
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  std::string tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

 private:
  std::string read_log() {
    std::ifstream in(dir_ / "swtpm.log");
    std::string s((std::istreambuf_iterator<char>(in)), {});
    return s.substr(0, 300);
  }
  fs::path dir_;
  int port_ = -1;
  pid_t daemon_pid_ = -1;
};

ReportData random_report_data() {
  ReportData rd;
  crypto::random_bytes(std::span<uint8_t>(rd.data(), rd.size()));
  return rd;
}

Collateral pin_ak(const Evidence& ev) {
  auto b = bundle_from_json(as_chars(ev.data));
  EXPECT_TRUE(b.ok());
  Collateral c;
  c.items[kAkPublicItem] = b->ak_public;
  return c;
}

TEST(TpmSwtpm, FreshQuoteVerifiesAndADifferentNonceIsRefused) {
  Swtpm tpm;
  std::string why;
  if (!tpm.start(why)) GTEST_SKIP() << "swtpm cannot start in this environment: " << why;
  ProviderOptions opts;
  opts.tpm_tcti = tpm.tcti();
  auto provider = make_tpm_provider(opts);
  ASSERT_TRUE(provider.ok()) << provider.error().message();
  EXPECT_EQ((*provider)->type(), TeeType::kTpm);
  auto verifier = make_tpm_verifier();
  auto now = std::chrono::system_clock::now();

  ReportData rd = random_report_data();
  auto ev = (*provider)->quote(rd);
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  Collateral pinned = pin_ak(*ev);  // enrolment: the verifier's host pins this TPM's AK
  auto claims = verifier->verify(*ev, pinned, now);
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_EQ(claims->type, TeeType::kTpm);
  EXPECT_EQ(claims->report_data, rd);
  for (int i = 0; i < 24; ++i) {
    ASSERT_TRUE(claims->measurements.count("pcr" + std::to_string(i))) << i;
    EXPECT_EQ(claims->measurements.at("pcr" + std::to_string(i)).size(), 32u);
  }

  // The same quote presented for another report_data (nonce) is refused.
  auto j = nlohmann::json::parse(as_chars(ev->data));
  ReportData other = random_report_data();
  j["report_data"] = to_hex(other);
  Evidence replayed{TeeType::kTpm, to_bytes(j.dump())};
  auto refused = verifier->verify(replayed, pinned, now);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(refused.error().message().find("extraData"), std::string::npos) << refused.error().message();

  // A second quote with that nonce verifies and binds it.
  auto ev2 = (*provider)->quote(other);
  ASSERT_TRUE(ev2.ok());
  auto claims2 = verifier->verify(*ev2, pinned, now);
  ASSERT_TRUE(claims2.ok()) << claims2.error().message();
  EXPECT_EQ(claims2->report_data, other);

  // Changed PCR values in the evidence are refused (pcrDigest).
  auto j2 = nlohmann::json::parse(as_chars(ev2->data));
  std::string pcr7 = j2["pcrs"]["sha256"]["7"];
  pcr7[0] = pcr7[0] == '0' ? '1' : '0';
  j2["pcrs"]["sha256"]["7"] = pcr7;
  auto bad_pcr = verifier->verify(Evidence{TeeType::kTpm, to_bytes(j2.dump())}, pinned, now);
  ASSERT_FALSE(bad_pcr.ok());
  EXPECT_NE(bad_pcr.error().message().find("pcrDigest"), std::string::npos);

  // Without a trust anchor for the AK nothing is accepted.
  auto unanchored = verifier->verify(*ev, Collateral{}, now);
  ASSERT_FALSE(unanchored.ok());
  EXPECT_EQ(unanchored.error().code(), ErrorCode::kSecurity);

  // The AK is deterministic: a new provider on the same TPM has the same AK (the pin still holds).
  auto again = make_tpm_provider(opts);
  ASSERT_TRUE(again.ok()) << again.error().message();
  auto ev3 = (*again)->quote(rd);
  ASSERT_TRUE(ev3.ok());
  EXPECT_TRUE(verifier->verify(*ev3, pinned, now).ok());
  EXPECT_EQ((*again)->sealing_root().error().code(), ErrorCode::kUnsupported);
}

TEST(TpmSwtpm, AbsentDeviceIsUnsupported) {
  ProviderOptions opts;
  opts.tpm_tcti = "device:/nonexistent/tpmrm9";
  auto p = make_tpm_provider(opts);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code(), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace veil::attest::tpm
