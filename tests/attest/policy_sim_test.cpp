// Policy parsing and checks, evidence JSON, and the simulated TEE round trip.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/sim.h"
#include "support/temp_dir.h"

namespace veil::attest {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& p, std::string_view s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

ReportData rd(uint8_t fill) {
  ReportData r;
  r.fill(fill);
  return r;
}

TimePoint now() { return std::chrono::system_clock::now(); }

// ---- names, base64, evidence JSON, time -------------------------------------------------------------

TEST(AttestNames, RoundTrip) {
  for (TeeType t : {TeeType::kSim, TeeType::kTdx, TeeType::kSevSnp, TeeType::kNitro, TeeType::kTpm, TeeType::kAzSnpVtpm,
                    TeeType::kAzTdxVtpm}) {
    auto back = tee_type_from_name(tee_type_name(t));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, t);
  }
  EXPECT_FALSE(tee_type_from_name("SGX").ok());
  EXPECT_FALSE(tee_type_from_name("").ok());
}

TEST(AttestBase64, RoundTripAndStrictness) {
  for (size_t n = 0; n < 20; ++n) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 37 + 1);
    auto d = base64_decode(base64_encode(b));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, b);
  }
  EXPECT_EQ(base64_encode(to_bytes("foobar")), "Zm9vYmFy");
  EXPECT_EQ(*base64_decode("Zm9vYg=="), to_bytes("foob"));
  EXPECT_FALSE(base64_decode("Zm9vYg=").ok());
  EXPECT_FALSE(base64_decode("Zm9v\nYmFy").ok());
  EXPECT_FALSE(base64_decode("Zm=vYmFy").ok());
  EXPECT_FALSE(base64_decode("Zm9-YmFy").ok());
}

TEST(AttestEvidenceJson, RoundTripAndErrors) {
  Evidence e{TeeType::kSevSnp, Bytes{1, 2, 3, 4, 5}};
  auto back = evidence_from_json(evidence_to_json(e));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->type, TeeType::kSevSnp);
  EXPECT_EQ(back->data, e.data);
  EXPECT_FALSE(evidence_from_json("[]").ok());
  EXPECT_FALSE(evidence_from_json(R"({"type":"tdx"})").ok());
  EXPECT_FALSE(evidence_from_json(R"({"type":"sgx","data":"AQID"})").ok());
  EXPECT_FALSE(evidence_from_json(R"({"type":"tdx","data":"AQID","x":1})").ok());
  EXPECT_FALSE(evidence_from_json(R"({"type":"tdx","data":""})").ok());
  auto bad = evidence_from_json(R"({"type":"tdx","data":"A!ID"})");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("data"), std::string::npos);
}

TEST(AttestTime, Parse) {
  auto t = parse_time("2025-09-01T00:00:00Z");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*t), 1756684800);
  EXPECT_EQ(format_time(*t), "2025-09-01T00:00:00Z");
  auto ms = parse_time("2022-10-13T08:58:02.136Z");
  ASSERT_TRUE(ms.ok());
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::milliseconds>(ms->time_since_epoch()).count(), 1665651482136);
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*parse_time("1750329147")), 1750329147);
  EXPECT_FALSE(parse_time("2025-09-01").ok());
  EXPECT_FALSE(parse_time("2025-13-01T00:00:00Z").ok());
  EXPECT_FALSE(parse_time("2025-09-01T00:00:00+02:00").ok());
}

TEST(AttestCollateral, JsonRoundTrip) {
  Collateral c;
  c.items["vcek"] = Bytes{1, 2, 3};
  c.items["ask_ark"] = to_bytes("-----BEGIN");
  auto back = collateral_from_json(collateral_to_json(c));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->items, c.items);
  EXPECT_FALSE(collateral_from_json(R"({"vcek": 5})").ok());
  EXPECT_FALSE(collateral_from_json(R"({"vcek": "!!"})").ok());
}

// ---- policy parsing -----------------------------------------------------------------------------------

TEST(AttestPolicy, ParsesFullPolicy) {
  auto p = parse_policy(R"({
    "allowed_types": ["tdx", "sev-snp"],
    "allow_debug": false,
    "expected_measurements": {"tdx": {"mrtd": ["00ff", "AB01"]}, "sev-snp": {"measurement": ["01"]}},
    "min_svns": {"sev-snp": {"snp": 8, "microcode": 115}},
    "accepted_tcb_status": {"tdx": ["UpToDate", "SWHardeningNeeded"]},
    "max_evidence_age_seconds": 300
  })");
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->allowed_types.size(), 2u);
  EXPECT_FALSE(p->allow_simulated);
  EXPECT_EQ(p->expected_measurements[TeeType::kTdx]["mrtd"].size(), 2u);
  EXPECT_EQ(p->expected_measurements[TeeType::kTdx]["mrtd"][1], (Bytes{0xab, 0x01}));
  EXPECT_EQ(p->min_svns[TeeType::kSevSnp]["microcode"], 115u);
  EXPECT_TRUE(p->accepted_tcb_status[TeeType::kTdx].contains("SWHardeningNeeded"));
  EXPECT_EQ(p->max_evidence_age->count(), 300);
}

void expect_policy_error(std::string_view json, std::string_view field) {
  auto p = parse_policy(json);
  ASSERT_FALSE(p.ok()) << json;
  EXPECT_NE(p.error().message().find(field), std::string::npos) << p.error().message();
}

TEST(AttestPolicy, RejectsBadPolicies) {
  expect_policy_error("", "JSON");
  expect_policy_error("[]", "object");
  expect_policy_error("{}", "allowed_types");
  expect_policy_error(R"({"allowed_types": []})", "allowed_types");
  expect_policy_error(R"({"allowed_types": "tdx"})", "allowed_types");
  expect_policy_error(R"({"allowed_types": ["tdx"], "alow_debug": true})", "alow_debug");
  expect_policy_error(R"({"allowed_types": ["sgx"]})", "allowed_types[0]");
  expect_policy_error(R"({"allowed_types": ["tdx", "tdx"]})", "allowed_types[1]");
  expect_policy_error(R"({"allowed_types": ["sim"]})", "allow_simulated");
  expect_policy_error(R"({"allowed_types": ["tdx"], "allow_debug": "no"})", "allow_debug");
  expect_policy_error(R"({"allowed_types": ["tdx"], "expected_measurements": {"tdx": {"mrtd": ["xyz"]}}})",
                      "expected_measurements.tdx.mrtd[0]");
  expect_policy_error(R"({"allowed_types": ["tdx"], "expected_measurements": {"tdx": {"mrtd": ["abc"]}}})",
                      "expected_measurements.tdx.mrtd[0]");
  expect_policy_error(R"({"allowed_types": ["tdx"], "expected_measurements": {"tdx": {"mrtd": []}}})",
                      "expected_measurements.tdx.mrtd");
  expect_policy_error(R"({"allowed_types": ["tdx"], "expected_measurements": {"sev-snp": {"measurement": ["00"]}}})",
                      "expected_measurements.sev-snp");
  expect_policy_error(R"({"allowed_types": ["tdx"], "min_svns": {"tdx": {"qe_svn": -1}}})", "min_svns.tdx.qe_svn");
  expect_policy_error(R"({"allowed_types": ["tdx"], "accepted_tcb_status": {"tdx": []}})", "accepted_tcb_status.tdx");
  expect_policy_error(R"({"allowed_types": ["tdx"], "max_evidence_age_seconds": 0})", "max_evidence_age_seconds");
}

TEST(AttestPolicy, UnreadableFileIsAnError) {
  testsupport::TempDir dir{"veil-attest"};
  auto p = load_policy(dir.path() / "missing.json");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message().find("missing.json"), std::string::npos);
  write(dir.path() / "p.json", R"({"allowed_types": ["tdx"]})");
  EXPECT_TRUE(load_policy(dir.path() / "p.json").ok());
}

// ---- check_policy -------------------------------------------------------------------------------------

Claims tdx_claims() {
  Claims c;
  c.type = TeeType::kTdx;
  c.measurements["mrtd"] = Bytes(48, 0x11);
  c.svns["qe_svn"] = 4;
  c.tcb_status = "UpToDate";
  c.report_data = rd(7);
  return c;
}

Policy tdx_policy() { return *parse_policy(R"({"allowed_types": ["tdx"]})"); }

void expect_refused(const Status& st, std::string_view why) {
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(st.error().message().find(why), std::string::npos) << st.error().message();
}

TEST(AttestCheckPolicy, AcceptsAndRefuses) {
  Policy p = tdx_policy();
  EXPECT_TRUE(check_policy(p, tdx_claims(), rd(7), now()).ok());
  expect_refused(check_policy(p, tdx_claims(), rd(8), now()), "report_data");

  Claims snp = tdx_claims();
  snp.type = TeeType::kSevSnp;
  expect_refused(check_policy(p, snp, rd(7), now()), "allowed_types");

  Claims dbg = tdx_claims();
  dbg.debug = true;
  expect_refused(check_policy(p, dbg, rd(7), now()), "debug");
  Policy pd = p;
  pd.allow_debug = true;
  EXPECT_TRUE(check_policy(pd, dbg, rd(7), now()).ok());

  Claims old = tdx_claims();
  old.tcb_status = "OutOfDate";
  expect_refused(check_policy(p, old, rd(7), now()), "TCB status");
  Policy po = p;
  po.accepted_tcb_status[TeeType::kTdx] = {"UpToDate", "OutOfDate"};
  EXPECT_TRUE(check_policy(po, old, rd(7), now()).ok());

  Policy pm = p;
  pm.expected_measurements[TeeType::kTdx]["mrtd"] = {Bytes(48, 0x22), Bytes(48, 0x11)};
  EXPECT_TRUE(check_policy(pm, tdx_claims(), rd(7), now()).ok());
  pm.expected_measurements[TeeType::kTdx]["mrtd"] = {Bytes(48, 0x22)};
  expect_refused(check_policy(pm, tdx_claims(), rd(7), now()), "mrtd");
  pm.expected_measurements[TeeType::kTdx] = {{"rtmr9", {Bytes(48, 0)}}};
  expect_refused(check_policy(pm, tdx_claims(), rd(7), now()), "absent");

  Policy ps = p;
  ps.min_svns[TeeType::kTdx]["qe_svn"] = 5;
  expect_refused(check_policy(ps, tdx_claims(), rd(7), now()), "qe_svn");
  ps.min_svns[TeeType::kTdx]["qe_svn"] = 4;
  EXPECT_TRUE(check_policy(ps, tdx_claims(), rd(7), now()).ok());
  ps.min_svns[TeeType::kTdx]["pce_svn"] = 1;
  expect_refused(check_policy(ps, tdx_claims(), rd(7), now()), "pce_svn");

  Policy pa = p;
  pa.max_evidence_age = std::chrono::seconds(60);
  Claims aged = tdx_claims();
  aged.issued_at = now() - std::chrono::seconds(120);
  expect_refused(check_policy(pa, aged, rd(7), now()), "older");
  aged.issued_at = now() - std::chrono::seconds(10);
  EXPECT_TRUE(check_policy(pa, aged, rd(7), now()).ok());
  aged.issued_at = now() + std::chrono::hours(1);
  expect_refused(check_policy(pa, aged, rd(7), now()), "future");

  Policy empty;
  expect_refused(check_policy(empty, tdx_claims(), rd(7), now()), "allows no");
}

// ---- sim ----------------------------------------------------------------------------------------------

struct SimFixture : ::testing::Test {
  testsupport::TempDir dir{"veil-attest"};
  ProviderOptions opts;
  void SetUp() override {
    opts.sim_platform_key = dir.path() / "platform.key";
    opts.sim_config = dir.path() / "veil.conf";
    opts.sim_executable = dir.path() / "app.bin";
    opts.sim_create_key = true;
    write(opts.sim_config, "threads = 2\n");
    write(opts.sim_executable, "the first build of the application");
  }
  Collateral collateral() {
    Collateral c;
    c.items[item::kSimPlatformPublicKey] = *sim_platform_public_key(opts.sim_platform_key, false);
    return c;
  }
  Policy sim_policy() { return *parse_policy(R"({"allowed_types": ["sim"], "allow_simulated": true})"); }
};

TEST_F(SimFixture, RoundTripVerifies) {
  auto provider = make_provider("sim", opts);
  ASSERT_TRUE(provider.ok()) << provider.error().message();
  struct stat st {};
  ASSERT_EQ(::stat(opts.sim_platform_key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto ev = (*provider)->quote(rd(0x5a));
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  auto back = evidence_from_json(evidence_to_json(*ev));
  ASSERT_TRUE(back.ok());
  auto claims = verify_evidence(*back, collateral(), sim_policy(), rd(0x5a), now());
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_TRUE(claims->simulated);
  EXPECT_EQ(claims->measurements["measurement"], *sim_measurement(opts.sim_executable, opts.sim_config));
  EXPECT_TRUE(claims->issued_at.has_value());
  // Bound to the report data.
  auto wrong = verify_evidence(*back, collateral(), sim_policy(), rd(0x5b), now());
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code(), ErrorCode::kSecurity);
}

TEST_F(SimFixture, ChangedExecutableRefusedByPinnedPolicy) {
  auto provider = make_provider("sim", opts);
  ASSERT_TRUE(provider.ok());
  Bytes old_measurement = *sim_measurement(opts.sim_executable, opts.sim_config);
  Policy pinned = sim_policy();
  pinned.expected_measurements[TeeType::kSim]["measurement"] = {old_measurement};
  auto ev1 = (*provider)->quote(rd(1));
  ASSERT_TRUE(ev1.ok());
  EXPECT_TRUE(verify_evidence(*ev1, collateral(), pinned, rd(1), now()).ok());

  // A new build is a new process: the provider measures at start.
  write(opts.sim_executable, "the second build of the application");
  auto restarted = make_provider("sim", opts);
  ASSERT_TRUE(restarted.ok());
  auto ev2 = (*restarted)->quote(rd(1));
  ASSERT_TRUE(ev2.ok());
  auto r = verify_evidence(*ev2, collateral(), pinned, rd(1), now());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("measurement"), std::string::npos);
  // A changed configuration changes the measurement too.
  write(opts.sim_executable, "the first build of the application");
  write(opts.sim_config, "threads = 3\n");
  EXPECT_NE(*sim_measurement(opts.sim_executable, opts.sim_config), old_measurement);
}

TEST_F(SimFixture, SimulatedRefusedWithoutAllowSimulated) {
  auto provider = make_provider("sim", opts);
  ASSERT_TRUE(provider.ok());
  auto ev = (*provider)->quote(rd(2));
  ASSERT_TRUE(ev.ok());
  Policy p = sim_policy();
  p.allow_simulated = false;
  auto r = verify_evidence(*ev, collateral(), p, rd(2), now());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("simulated"), std::string::npos);
  // A policy that does not list sim refuses before verifying.
  Policy tdx_only = *parse_policy(R"({"allowed_types": ["tdx"]})");
  EXPECT_FALSE(verify_evidence(*ev, collateral(), tdx_only, rd(2), now()).ok());
}

TEST_F(SimFixture, TamperedOrUntrustedEvidenceRefused) {
  auto provider = make_provider("sim", opts);
  ASSERT_TRUE(provider.ok());
  auto ev = (*provider)->quote(rd(3));
  ASSERT_TRUE(ev.ok());
  // Every single-byte flip fails (signature, structure or magic).
  for (size_t i = 0; i < ev->data.size(); ++i) {
    Evidence m = *ev;
    m.data[i] ^= 0x01;
    EXPECT_FALSE(verify_evidence(m, collateral(), sim_policy(), rd(3), now()).ok()) << "byte " << i;
  }
  // Another platform key is not trusted.
  Collateral other;
  other.items[item::kSimPlatformPublicKey] = *sim_platform_public_key(dir.path() / "other.key", true);
  EXPECT_FALSE(verify_evidence(*ev, other, sim_policy(), rd(3), now()).ok());
  // No collateral: refused.
  EXPECT_FALSE(verify_evidence(*ev, Collateral{}, sim_policy(), rd(3), now()).ok());
}

// Format 1 (Ed25519, "VEILSIM1") evidence and a 32-byte format 1 platform key are refused, each saying why.
TEST_F(SimFixture, FormatOneEvidenceAndKeysAreRefusedWithAReason) {
  auto provider = make_provider("sim", opts);
  ASSERT_TRUE(provider.ok());
  auto ev = (*provider)->quote(rd(4));
  ASSERT_TRUE(ev.ok());
  ASSERT_EQ(std::string(ev->data.begin(), ev->data.begin() + 8), "VEILSIM2");
  Evidence v1 = *ev;
  std::memcpy(v1.data.data(), "VEILSIM1", 8);
  auto r = verify_evidence(v1, collateral(), sim_policy(), rd(4), now());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("format 1"), std::string::npos) << r.error().message();
  Collateral old;
  old.items[item::kSimPlatformPublicKey] = Bytes(32, 0x11);
  auto k = verify_evidence(*ev, old, sim_policy(), rd(4), now());
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message().find("export the collateral again"), std::string::npos) << k.error().message();
}

TEST_F(SimFixture, SealingRootStableAndBoundToMeasurement) {
  auto p1 = make_provider("sim", opts);
  auto p2 = make_provider("sim", opts);
  ASSERT_TRUE(p1.ok() && p2.ok());
  auto s1 = (*p1)->sealing_root();
  auto s2 = (*p2)->sealing_root();
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(s1->size(), 32u);
  EXPECT_TRUE(ct_equal(s1->view(), s2->view()));
  write(opts.sim_executable, "a different application");
  auto p3 = make_provider("sim", opts);  // measured at start
  ASSERT_TRUE(p3.ok());
  auto s3 = (*p3)->sealing_root();
  ASSERT_TRUE(s3.ok());
  EXPECT_FALSE(ct_equal(s1->view(), s3->view()));
}

TEST_F(SimFixture, KeyFileRules) {
  ProviderOptions no_create = opts;
  no_create.sim_create_key = false;
  auto missing = make_provider("sim", no_create);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(make_provider("sim", opts).ok());
  ::chmod(opts.sim_platform_key.c_str(), 0644);
  auto loose = make_provider("sim", no_create);
  ASSERT_FALSE(loose.ok());
  EXPECT_EQ(loose.error().code(), ErrorCode::kSecurity);
  EXPECT_FALSE(make_provider("sgx", opts).ok());
}

}  // namespace
}  // namespace veil::attest
