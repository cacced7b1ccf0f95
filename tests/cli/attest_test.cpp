// veil attest quote | verify | show with the simulated TEE: accepted under a policy that allows it, refused
// (exit 3) otherwise.
#include <nlohmann/json.hpp>

#include "cli/cli_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

const std::string kReportData = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";  // 32 bytes

class AttestTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    write_text(path("allow-sim.json"), R"({"allowed_types": ["sim"], "allow_simulated": true})");
    write_text(path("hardware-only.json"), R"({"allowed_types": ["tdx", "sev-snp"], "allow_simulated": false})");
  }

  // Quote with a fresh simulated platform key; evidence in ev.json, collateral in col.json.
  void quote() {
    RunResult q = veil({"attest", "quote", "--provider", "sim", "--create-key", "--platform-key", path("platform.key").string(),
                        "--report-data", kReportData, "--out", path("ev.json").string(), "--collateral-out",
                        path("col.json").string()});
    expect_ok(q);
    ASSERT_TRUE(fs::exists(path("ev.json"))) << q.describe();
    ASSERT_TRUE(fs::exists(path("col.json"))) << q.describe();
    // The platform key is a secret: owner-only.
    auto perms = fs::status(path("platform.key")).permissions();
    EXPECT_EQ(perms & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
  }
};

TEST_F(AttestTest, QuoteWritesEvidenceJson) {
  quote();
  json ev = json::parse(read_text(path("ev.json")), nullptr, false);
  ASSERT_FALSE(ev.is_discarded());
  EXPECT_EQ(ev["type"], "sim");
  EXPECT_FALSE(ev["data"].get<std::string>().empty());
  json col = json::parse(read_text(path("col.json")), nullptr, false);
  ASSERT_FALSE(col.is_discarded());
  EXPECT_TRUE(col.contains("sim_platform_public_key")) << col.dump();

  // Without --out the evidence goes to stdout.
  RunResult r = veil({"attest", "quote", "--provider", "sim", "--platform-key", path("platform.key").string(),
                      "--report-data", "ab"});
  expect_ok(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  EXPECT_EQ(j["type"], "sim");
}

TEST_F(AttestTest, VerifyAcceptedWithAPolicyAllowingSim) {
  quote();
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col.json").string(), "--policy",
                      path("allow-sim.json").string(), "--report-data", kReportData});
  expect_ok(r);
  EXPECT_EQ(r.out.rfind("verdict: accepted\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("simulated:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(kReportData), std::string::npos) << r.out;

  RunResult j = veil({"attest", "verify", "--json", path("ev.json").string(), "--collateral", path("col.json").string(),
                      "--policy", path("allow-sim.json").string(), "--report-data", kReportData});
  expect_ok(j);
  json v = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(v.is_discarded()) << j.describe();
  EXPECT_EQ(v["verdict"], "accepted");
  EXPECT_EQ(v["report_data_bound"], true);
  EXPECT_EQ(v["claims"]["type"], "sim");
  EXPECT_EQ(v["claims"]["simulated"], true);
  EXPECT_EQ(v["claims"]["report_data"].get<std::string>().substr(0, kReportData.size()), kReportData);
  EXPECT_EQ(v["claims"]["measurements"]["measurement"].get<std::string>().size(), 96u);  // SHA-384
}

TEST_F(AttestTest, VerifyWithoutReportDataSaysItIsUnbound) {
  quote();
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col.json").string(), "--policy",
                      path("allow-sim.json").string()});
  expect_ok(r);
  EXPECT_NE(r.out.find("report_data not checked"), std::string::npos) << r.out;
}

TEST_F(AttestTest, PolicyWithoutSimIsARefusal) {
  quote();
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col.json").string(), "--policy",
                      path("hardware-only.json").string(), "--report-data", kReportData});
  expect_one_line_error(r, 3);
  EXPECT_EQ(r.out, "verdict: refused\n");
  EXPECT_NE(r.err.find("sim"), std::string::npos) << r.err;

  RunResult j = veil({"attest", "verify", "--json", path("ev.json").string(), "--collateral", path("col.json").string(),
                      "--policy", path("hardware-only.json").string()});
  expect_one_line_error(j, 3);
  json v = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(v.is_discarded()) << j.describe();
  EXPECT_EQ(v["verdict"], "refused");
}

// docs/attestation.md: a policy listing sim without allow_simulated is malformed (an error naming the field).
TEST_F(AttestTest, SimWithoutAllowSimulatedIsAMalformedPolicy) {
  quote();
  write_text(path("sim-no-flag.json"), R"({"allowed_types": ["sim"]})");
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col.json").string(), "--policy",
                      path("sim-no-flag.json").string()});
  EXPECT_NE(r.exit_code, 0) << r.describe();
  expect_one_line_error(r, r.exit_code);
  EXPECT_NE(r.err.find("allow_simulated"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("sim-no-flag.json"), std::string::npos) << r.err;
}

TEST_F(AttestTest, WrongReportDataIsARefusal) {
  quote();
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col.json").string(), "--policy",
                      path("allow-sim.json").string(), "--report-data", "ff"});
  expect_one_line_error(r, 3);
  EXPECT_NE(r.err.find("report_data"), std::string::npos) << r.err;
}

TEST_F(AttestTest, MissingOrForeignCollateralIsARefusal) {
  quote();
  RunResult none = veil({"attest", "verify", path("ev.json").string(), "--policy", path("allow-sim.json").string()});
  expect_one_line_error(none, 3);
  EXPECT_NE(none.err.find("sim_platform_public_key"), std::string::npos) << none.err;

  // Another simulated machine's public key: the signature does not verify.
  RunResult other = veil({"attest", "quote", "--provider", "sim", "--create-key", "--platform-key",
                          path("other.key").string(), "--report-data", "00", "--out", path("ev2.json").string(),
                          "--collateral-out", path("col2.json").string()});
  expect_ok(other);
  RunResult r = veil({"attest", "verify", path("ev.json").string(), "--collateral", path("col2.json").string(), "--policy",
                      path("allow-sim.json").string()});
  expect_one_line_error(r, 3);
}

TEST_F(AttestTest, TamperedEvidenceIsRefusedOrRejected) {
  quote();
  json ev = json::parse(read_text(path("ev.json")));
  std::string data = ev["data"].get<std::string>();
  // Change one base64 character in the middle of the signed body (still valid base64).
  size_t mid = data.size() / 2;
  data[mid] = data[mid] == 'A' ? 'B' : 'A';
  ev["data"] = data;
  write_text(path("bad-ev.json"), ev.dump());
  RunResult r = veil({"attest", "verify", path("bad-ev.json").string(), "--collateral", path("col.json").string(),
                      "--policy", path("allow-sim.json").string()});
  expect_one_line_error(r, 3);
  EXPECT_EQ(r.out, "verdict: refused\n");
}

// docs/cli.md: evidence that cannot be parsed is refused (exit 3), like evidence that fails its checks; only an
// input that cannot be read is a runtime failure (exit 1).
TEST_F(AttestTest, VerifyRefusesMalformedEvidence) {
  quote();
  json ev = json::parse(read_text(path("ev.json")));
  std::vector<std::pair<std::string, std::string>> cases = {
      {"not-json.json", "garbage"},
      {"bad-base64.json", json{{"type", "sim"}, {"data", "!!not base64!!"}}.dump()},
      {"unknown-type.json", json{{"type", "no-such-tee"}, {"data", ev["data"]}}.dump()},
      {"truncated.json", json{{"type", "sim"}, {"data", ev["data"].get<std::string>().substr(0, 40)}}.dump()},
  };
  for (const auto& [name, content] : cases) {
    SCOPED_TRACE(name);
    write_text(path(name), content);
    for (bool js : {false, true}) {
      std::vector<std::string> args = {"attest", "verify", path(name).string(), "--collateral", path("col.json").string(),
                                       "--policy", path("allow-sim.json").string()};
      if (js) args.push_back("--json");
      RunResult r = veil(args);
      expect_one_line_error(r, 3);
      if (js) {
        json v = json::parse(r.out, nullptr, false);
        ASSERT_FALSE(v.is_discarded()) << r.describe();
        EXPECT_EQ(v["verdict"], "refused");
      } else {
        EXPECT_EQ(r.out, "verdict: refused\n");
      }
    }
  }
  // An empty raw evidence file is refused too; one that does not exist is a runtime failure.
  write_text(path("empty.bin"), "");
  expect_one_line_error(veil({"attest", "verify", path("empty.bin").string(), "--type", "sim", "--policy",
                              path("allow-sim.json").string()}), 3);
  RunResult missing = veil({"attest", "verify", path("nope.json").string(), "--policy", path("allow-sim.json").string()});
  expect_one_line_error(missing, 1);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;
}

TEST_F(AttestTest, ShowDecodesWithoutVerifying) {
  quote();
  RunResult r = veil({"attest", "show", path("ev.json").string()});
  expect_ok(r);
  EXPECT_NE(r.out.find("type:                    sim"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verified:                false"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(kReportData), std::string::npos) << r.out;

  RunResult j = veil({"attest", "show", "--json", path("ev.json").string()});
  expect_ok(j);
  json v = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(v.is_discarded()) << j.describe();
  EXPECT_EQ(v["type"], "sim");
  EXPECT_EQ(v["verified"], false);
  EXPECT_EQ(v["simulated"], true);
  EXPECT_EQ(v["measurement"].get<std::string>().size(), 96u);
}

TEST_F(AttestTest, BadInputs) {
  // Evidence file that does not exist: runtime failure naming it.
  RunResult missing = veil({"attest", "show", path("nope.json").string()});
  expect_one_line_error(missing, 1);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;
  // Not JSON evidence: a hint about --type.
  write_text(path("garbage.bin"), "garbage");
  RunResult garbage = veil({"attest", "show", path("garbage.bin").string()});
  expect_one_line_error(garbage, 1);
  EXPECT_NE(garbage.err.find("--type"), std::string::npos) << garbage.err;
  // Report data that is not hex, or too long: usage errors.
  expect_one_line_error(veil({"attest", "quote", "--provider", "sim", "--report-data", "xyz"}), 2);
  expect_one_line_error(veil({"attest", "quote", "--provider", "sim", "--report-data", std::string(130, 'a')}), 2);
  // Quoting with a platform key that does not exist (and no --create-key) says how to create it.
  RunResult nokey = veil({"attest", "quote", "--provider", "sim", "--platform-key", path("absent.key").string(),
                          "--report-data", "00"});
  expect_one_line_error(nokey, 1);
  EXPECT_NE(nokey.err.find("--create-key"), std::string::npos) << nokey.err;
  // verify needs --policy.
  expect_one_line_error(veil({"attest", "verify", path("nope.json").string()}), 2);
}

}  // namespace
}  // namespace veil::clitest
