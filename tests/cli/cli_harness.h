// Test harness for end-to-end tests of the `veil` executable: runs it with posix_spawn, captures stdout,
// stderr and the exit status, and kills it when it runs past its time limit. Every test gets a fresh
// temporary folder that is also $HOME (and $VEIL_DATA_DIR is unset, $VEIL_MODEL unset unless a test sets it),
// so default-model resolution and data-folder defaults never see the developer's own files.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/temp_dir.h"

extern char** environ;

namespace veil::clitest {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline const std::string kVeil = VEIL_BIN;
inline const fs::path kShared = VEIL_SHARED_DIR;
inline const fs::path kModels = kShared / "models";
inline const fs::path kStories = kModels / "stories260K";

struct RunResult {
  int exit_code = -1;       // exit status, or -1 when killed by a signal
  int signal = 0;           // terminating signal, 0 if it exited
  bool timed_out = false;
  std::string out, err;
  std::string cmdline;

  // For failure messages.
  std::string describe() const {
    std::ostringstream s;
    s << "command: " << cmdline << "\nexit: " << exit_code << " signal: " << signal
      << (timed_out ? " (TIMED OUT)" : "") << "\n--- stdout (" << out.size() << " bytes) ---\n"
      << out.substr(0, 4000) << "\n--- stderr ---\n" << err.substr(0, 4000);
    return s.str();
  }
};

// Environment changes: a value sets the variable, std::nullopt removes it.
using EnvOverrides = std::map<std::string, std::optional<std::string>>;

inline std::vector<std::string> make_env(const EnvOverrides& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (overrides.count(key)) continue;
    env.push_back(kv);
  }
  for (const auto& [k, v] : overrides) {
    if (v) env.push_back(k + "=" + *v);
  }
  return env;
}

inline void set_nonblock(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A started `veil` process with pipes to its stdout and stderr.
class Process {
 public:
  Process() = default;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() { kill_and_reap(); }

  // Starts veil with `args`, behind `launcher` when given (e.g. {"ip", "netns", "exec", NAME}: the launcher's
  // program is looked up in $PATH and must exec veil in place). Returns an empty string on success, else why it
  // could not start.
  std::string start(const std::vector<std::string>& args, const EnvOverrides& env,
                    const std::vector<std::string>& launcher = {}) {
    std::vector<std::string> argv = launcher;
    argv.push_back(kVeil);
    argv.insert(argv.end(), args.begin(), args.end());
    return start_program(argv, env);
  }

  // Starts argv[0] (looked up in $PATH) with argv.
  std::string start_program(std::vector<std::string> argv_s, const EnvOverrides& env) {
    cmdline_.clear();
    for (const auto& a : argv_s) cmdline_ += (cmdline_.empty() ? "" : " ") + (a == kVeil ? std::string("veil") : a);
    int out_pipe[2], err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) return "pipe failed";
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) return "pipe failed";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = make_env(env);
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);

    int rc = ::posix_spawnp(&pid_, argv_s[0].c_str(), &fa, &attr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    out_fd_ = out_pipe[0];
    err_fd_ = err_pipe[0];
    set_nonblock(out_fd_);
    set_nonblock(err_fd_);
    if (rc != 0) {
      pid_ = -1;
      return "posix_spawn " + argv_s[0] + ": " + std::strerror(rc);
    }
    return "";
  }

  // Reads output until `done` says so or both pipes reach end of file; returns false if `deadline` came first.
  template <typename Pred>
  bool pump_until(Clock::time_point deadline, Pred done) {
    while (!done()) {
      if (out_fd_ < 0 && err_fd_ < 0) return true;
      pollfd fds[2];
      int n = 0;
      if (out_fd_ >= 0) fds[n++] = {out_fd_, POLLIN, 0};
      if (err_fd_ >= 0) fds[n++] = {err_fd_, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      int pr = ::poll(fds, n, static_cast<int>(std::min<long long>(left, 1000)));
      if (pr < 0 && errno != EINTR) return false;
      for (int i = 0; i < n; ++i) {
        if (fds[i].revents == 0) continue;
        int& fd = fds[i].fd == out_fd_ ? out_fd_ : err_fd_;
        std::string& buf = fds[i].fd == out_fd_ ? result_.out : result_.err;
        char tmp[65536];
        ssize_t got = ::read(fd, tmp, sizeof tmp);
        if (got > 0) {
          buf.append(tmp, static_cast<size_t>(got));
        } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
          ::close(fd);
          fd = -1;
        }
      }
    }
    return true;
  }

  // Waits for a line of stdout containing `needle`; returns that line, or nullopt on timeout or exit.
  std::optional<std::string> wait_for_stdout_line(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    auto find_line = [&]() -> std::optional<std::string> {
      size_t start = 0;
      while (true) {
        size_t nl = result_.out.find('\n', start);
        if (nl == std::string::npos) return std::nullopt;
        std::string line = result_.out.substr(start, nl - start);
        if (line.find(needle) != std::string::npos) return line;
        start = nl + 1;
      }
    };
    pump_until(deadline, [&] { return find_line().has_value(); });
    return find_line();
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Collects all output and the exit status; kills the process at the deadline.
  RunResult finish(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    bool ok = pump_until(deadline, [] { return false; });  // until both pipes close
    if (!ok) {
      result_.timed_out = true;
      signal(SIGKILL);
    }
    reap();
    result_.cmdline = cmdline_;
    return result_;
  }

  pid_t pid() const { return pid_; }

 private:
  void reap() {
    if (pid_ <= 0) return;
    int status = 0;
    // The pipes are closed (or the process was killed): it has exited or is about to.
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) result_.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result_.signal = WTERMSIG(status);
    pid_ = -1;
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
    out_fd_ = err_fd_ = -1;
  }
  void kill_and_reap() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      reap();
    }
  }

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  RunResult result_;
  std::string cmdline_;
};

// Runs argv (argv[0] looked up in $PATH) and waits for it (killed after `timeout`).
inline RunResult run_command(const std::vector<std::string>& argv, const EnvOverrides& env,
                             std::chrono::milliseconds timeout) {
  Process p;
  std::string err = p.start_program(argv, env);
  if (!err.empty()) {
    RunResult r;
    r.err = err;
    return r;
  }
  return p.finish(timeout);
}

// The port at the end of a "... on http://127.0.0.1:PORT" line a server prints (0 when there is none).
inline uint16_t port_of(const std::string& line) {
  size_t colon = line.rfind(':');
  return colon == std::string::npos ? 0 : static_cast<uint16_t>(std::atoi(line.c_str() + colon + 1));
}

inline std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << text;
}

inline std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

struct HttpResponse {
  int status = 0;  // 0: no response
  std::string headers, body, raw;
};

// A minimal HTTP/1.1 request over plain TCP to 127.0.0.1:port (Connection: close; the whole response is read
// until the server closes, each read bounded by 10 s).
inline HttpResponse http_request(uint16_t port, const std::string& method, const std::string& path,
                                 const std::string& body = "", const std::vector<std::string>& headers = {}) {
  HttpResponse r;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return r;
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return r;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  for (const auto& h : headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return r;
  }
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    r.raw.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  size_t sp = r.raw.find(' ');
  size_t hdr_end = r.raw.find("\r\n\r\n");
  if (r.raw.rfind("HTTP/1.", 0) != 0 || sp == std::string::npos || hdr_end == std::string::npos) return r;
  r.status = std::atoi(r.raw.c_str() + sp + 1);
  r.headers = r.raw.substr(0, hdr_end);
  r.body = r.raw.substr(hdr_end + 4);
  return r;
}

// Base fixture: a fresh temporary folder, used as $HOME.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = {{"HOME", dir_.string()}, {"VEIL_DATA_DIR", std::nullopt}, {"VEIL_MODEL", std::nullopt}};
  }

  // Runs veil with `args` and waits for it (killed after `timeout`).
  RunResult veil(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s,
                 const EnvOverrides& extra_env = {}) {
    EnvOverrides env = env_;
    for (const auto& [k, v] : extra_env) env[k] = v;
    std::vector<std::string> argv{kVeil};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, env, timeout);
  }

  // Runs another program (an absolute path or a name in $PATH) the same way, e.g. a client script against a
  // veil server.
  RunResult run_program(const std::string& program, const std::vector<std::string>& args,
                        std::chrono::milliseconds timeout = 60s) {
    std::vector<std::string> argv{program};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, env_, timeout);
  }

  // Starts veil in the background (for servers), behind `launcher` when given (Process::start).
  std::unique_ptr<Process> start(const std::vector<std::string>& args, const EnvOverrides& extra_env = {},
                                 const std::vector<std::string>& launcher = {}) {
    EnvOverrides env = env_;
    for (const auto& [k, v] : extra_env) env[k] = v;
    auto p = std::make_unique<Process>();
    std::string err = p->start(args, env, launcher);
    EXPECT_EQ(err, "");
    return p;
  }

  fs::path path(const std::string& name) const { return dir_ / name; }

  testsupport::TempDir tmp_{"veil-cli"};
  fs::path dir_ = tmp_.path();
  EnvOverrides env_;
};

// A failure as docs/cli.md promises: the exit code, nothing on stdout is required, and stderr is exactly one
// line "error: ..." without an exception or stack trace.
// With `logs_before`, warning log lines may precede it (e.g. serve's SIMULATED TEE warning).
inline void expect_one_line_error(const RunResult& r, int code, bool logs_before = false) {
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.signal, 0) << r.describe();
  EXPECT_EQ(r.exit_code, code) << r.describe();
  ASSERT_FALSE(r.err.empty()) << r.describe();
  EXPECT_EQ(r.err.back(), '\n') << r.describe();
  std::vector<std::string> lines = split_lines(r.err);
  ASSERT_FALSE(lines.empty()) << r.describe();
  EXPECT_EQ(lines.back().rfind("error: ", 0), 0u) << r.describe();
  size_t error_lines = 0;
  for (const auto& l : lines) error_lines += l.rfind("error: ", 0) == 0 ? 1 : 0;
  EXPECT_EQ(error_lines, 1u) << r.describe();
  if (!logs_before) {
    EXPECT_EQ(lines.size(), 1u) << "stderr must be one line\n" << r.describe();
  }
  for (const char* bad : {"terminate called", "what():", "Aborted", "internal error", "Segmentation", "#0 ", "std::"}) {
    EXPECT_EQ(r.err.find(bad), std::string::npos) << "found '" << bad << "'\n" << r.describe();
  }
}

inline void expect_ok(const RunResult& r) {
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.signal, 0) << r.describe();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

}  // namespace veil::clitest
