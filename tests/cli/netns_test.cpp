// Three stages on three hosts: each `veil stage` runs in its own Linux network namespace, joined to the front's
// namespace by a veth pair (front side 10.77.<i>.1/24, stage side 10.77.<i>.2/24), and stage i to stage i + 1 by
// another (10.78.<i>.0/24, carrying the data channel between them), with a 2 ms netem delay on every link when the
// kernel has netem. `veil serve --manifest` (the front, in a fourth namespace) must return
// the same greedy text as single-node serving. The test builds the namespaces itself and removes them on any
// exit; it is skipped, saying why, where namespaces cannot be made (not root, no capability, no `ip`).
#include <fcntl.h>
#include <sched.h>

#include <fstream>
#include <thread>

#include "cli/pipeline_harness.h"

namespace veil::clitest {
namespace {

// The first of `names` found in $PATH, /usr/sbin or /sbin ("" when none).
std::string find_tool(const std::string& name) {
  std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
  dirs += ":/usr/sbin:/sbin";
  std::istringstream in(dirs);
  for (std::string dir; std::getline(in, dir, ':');) {
    if (!dir.empty() && ::access((fs::path(dir) / name).c_str(), X_OK) == 0) return (fs::path(dir) / name).string();
  }
  return "";
}

// Whether this process holds a capability (bit `cap` of CapEff in /proc/self/status).
bool has_capability(int cap) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> cap) & 1;
  }
  return false;
}
constexpr int kCapNetAdmin = 12, kCapSysAdmin = 21;

// Runs a tool (no environment changes) and waits for it, at most 10 s.
RunResult run_tool(const std::vector<std::string>& argv) { return run_command(argv, {}, 10s); }

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Network namespaces named after this process (unique per run), deleted on destruction: a namespace's veth ends
// go with it.
class Namespaces {
 public:
  explicit Namespaces(std::string ip) : ip_(std::move(ip)) {}
  ~Namespaces() {
    for (const auto& ns : made_) run_tool({ip_, "netns", "del", ns});
  }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;

  // Adds namespace "veil-<pid>-<suffix>" with its loopback up; returns "" or why it failed.
  std::string add(const std::string& suffix, std::string* name) {
    *name = "veil-" + std::to_string(::getpid()) + "-" + suffix;
    RunResult r = run_tool({ip_, "netns", "add", *name});
    if (r.exit_code != 0) return "ip netns add " + *name + ": " + first_line(r.err);
    made_.push_back(*name);
    return ip({"-n", *name, "link", "set", "lo", "up"});
  }

  // Runs `ip ARGS...`; returns "" or the failure.
  std::string ip(std::vector<std::string> args) {
    args.insert(args.begin(), ip_);
    RunResult r = run_tool(args);
    if (r.exit_code == 0) return "";
    std::string cmd;
    for (const auto& a : args) cmd += (cmd.empty() ? "" : " ") + a;
    return cmd + ": " + first_line(r.err);
  }

  // Links namespaces `a` and `b` with a veth pair named `name` at both ends, addresses a_addr and b_addr (CIDR).
  std::string link(const std::string& a, const std::string& b, const std::string& name, const std::string& a_addr,
                   const std::string& b_addr) {
    const std::vector<std::vector<std::string>> steps = {
        {"-n", a, "link", "add", name, "type", "veth", "peer", "name", name, "netns", b},
        {"-n", a, "addr", "add", a_addr, "dev", name},
        {"-n", b, "addr", "add", b_addr, "dev", name},
        {"-n", a, "link", "set", name, "up"},
        {"-n", b, "link", "set", name, "up"}};
    for (const auto& step : steps) {
      if (std::string err = ip(step); !err.empty()) return err;
    }
    return "";
  }

 private:
  std::string ip_;
  std::vector<std::string> made_;
};

// Runs `fn` on a thread that has joined network namespace `ns` (the namespace change ends with the thread).
HttpResponse in_namespace(const std::string& ns, const std::function<HttpResponse()>& fn) {
  HttpResponse out;
  std::thread t([&] {
    int fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
      out.raw = "cannot enter network namespace " + ns + ": " + std::strerror(errno);
      if (fd >= 0) ::close(fd);
      return;
    }
    ::close(fd);
    out = fn();
  });
  t.join();
  return out;
}

class NetnsTest : public PipelineCliTest {};

TEST_F(NetnsTest, ThreeStagesInThreeNamespacesServeTheSingleNodeText) {
  std::string ip = find_tool("ip");
  if (ip.empty()) GTEST_SKIP() << "no `ip` binary (iproute2) in $PATH, /usr/sbin or /sbin";
  if (!has_capability(kCapSysAdmin) || !has_capability(kCapNetAdmin)) {
    GTEST_SKIP() << "creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN (uid " << ::geteuid() << ")";
  }
  Namespaces nets(ip);
  std::string front_ns, stage_ns[3];
  if (std::string err = nets.add("front", &front_ns); !err.empty()) GTEST_SKIP() << "cannot create namespaces: " << err;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(nets.add("s" + std::to_string(i), &stage_ns[i]), "");
  std::vector<std::string> endpoints;
  for (int i = 0; i < 3; ++i) {
    std::string net = "10.77." + std::to_string(i + 1);
    ASSERT_EQ(nets.link(front_ns, stage_ns[i], "veil" + std::to_string(i), net + ".1/24", net + ".2/24"), "");
    endpoints.push_back(net + ".2:7400");
  }
  // Stage i opens its data channel to stage i + 1's manifest endpoint over a link of their own (10.78.<i>.0/24, with
  // a host route to that endpoint): the front's namespace does not forward, so the activations cross from stage
  // namespace to stage namespace.
  std::vector<std::pair<std::string, std::string>> devices;  // (namespace, device) of every link end
  for (int i = 0; i < 3; ++i) devices.insert(devices.end(), {{front_ns, "veil" + std::to_string(i)}, {stage_ns[i], "veil" + std::to_string(i)}});
  for (int i = 0; i + 1 < 3; ++i) {
    std::string net = "10.78." + std::to_string(i), dev = "vchain" + std::to_string(i);
    ASSERT_EQ(nets.link(stage_ns[i], stage_ns[i + 1], dev, net + ".1/24", net + ".2/24"), "");
    ASSERT_EQ(nets.ip({"-n", stage_ns[i], "route", "add", endpoints[i + 1].substr(0, endpoints[i + 1].find(':')) + "/32",
                       "via", net + ".2"}),
              "");
    devices.insert(devices.end(), {{stage_ns[i], dev}, {stage_ns[i + 1], dev}});
  }
  // A 2 ms delay each way on every link, where the kernel has netem.
  std::string tc = find_tool("tc"), netem = tc.empty() ? "no `tc` binary" : "";
  for (size_t d = 0; d < devices.size() && netem.empty(); ++d) {
    RunResult r = run_tool({tc, "-n", devices[d].first, "qdisc", "add", "dev", devices[d].second, "root", "netem", "delay", "2ms"});
    if (r.exit_code != 0) netem = first_line(r.err);
  }
  std::printf("[ netns    ] %s\n", netem.empty() ? "netem: 2 ms delay each way on every link"
                                                  : ("netem unavailable (" + netem + "): links without delay").c_str());

  // The single-node reference, in this namespace.
  auto single = start({"serve", "-m", (kStories / "stories260K.gguf").string(), "--model-id", "stories260K",
                       "--insecure-http", "--no-auth", "--listen", "127.0.0.1:0", "-t", "1", "--grace", "1"});
  auto single_line = single->wait_for_stdout_line("veil serve: model ", 20s);
  ASSERT_TRUE(single_line.has_value()) << single->finish(1s).describe();
  std::string want = completion_text(complete(port_of(*single_line), 16));
  ASSERT_FALSE(want.empty());

  // Each stage listens on its own namespace's address, which exists nowhere else.
  std::string meas = measurement();
  ASSERT_FALSE(meas.empty());
  write_text(path("stages.json"), manifest(meas, endpoints));
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(start_stage(i, "tcp:" + endpoints[i], "stages.json", {"-m", (kStories / "stories260K.gguf").string()},
                          {ip, "netns", "exec", stage_ns[i]}),
              "tcp:" + endpoints[i]);
  }
  Front started = start_front("stages.json", {ip, "netns", "exec", front_ns});
  auto& front = started.process;
  const uint16_t port = started.port;
  ASSERT_NE(port, 0);
  HttpResponse got = in_namespace(front_ns, [&] { return complete(port, 16); });
  EXPECT_EQ(completion_text(got), want) << got.raw;

  front->signal(SIGTERM);
  EXPECT_EQ(front->finish(10s).exit_code, 0);
  for (auto& s : stages_) {
    s->signal(SIGTERM);
    RunResult r = s->finish(10s);
    EXPECT_EQ(r.exit_code, 0) << r.describe();
  }
  single->signal(SIGTERM);
  EXPECT_EQ(single->finish(10s).exit_code, 0);
}

}  // namespace
}  // namespace veil::clitest
