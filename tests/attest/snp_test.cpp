// AMD SEV-SNP report verification against the real vectors in ../shared/testdata/attestation/sev-snp
// (NOTES.md section 3), all at the one pinned time 2025-09-01T00:00:00Z unless stated.
#include <gtest/gtest.h>

#include <filesystem>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/snp.h"

namespace veil::attest {
namespace {

namespace fs = std::filesystem;

fs::path snp_dir() { return fs::path(VEIL_SHARED_DIR) / "testdata" / "attestation" / "sev-snp"; }

Bytes load(const std::string& rel) {
  auto b = read_file(snp_dir() / rel);
  EXPECT_TRUE(b.ok()) << rel;
  if (!b.ok()) return {};
  if (rel.ends_with(".hex")) {
    std::string hex;
    for (uint8_t c : *b)
      if (!std::isspace(c)) hex.push_back(static_cast<char>(c));
    auto d = from_hex(hex);
    EXPECT_TRUE(d.ok());
    return d.ok() ? *d : Bytes{};
  }
  return *b;
}

TimePoint at(const char* t) { return *parse_time(t); }
const TimePoint kPinned = *parse_time("2025-09-01T00:00:00Z");

struct Vector {
  const char* name;
  const char* report;
  const char* cert;
  const char* chain;
  bool vlek;
  const char* measurement;  // hex prefix
};

const Vector kVectors[] = {
    {"go-sev-guest v2 Milan (debug)", "go-sev-guest/attestation.bin", "go-sev-guest/vcek.testcer", "go-sev-guest/ask_ark_milan.pem",
     false, "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"},
    {"virtee v2 Milan", "virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der", "go-sev-guest/ask_ark_milan.pem", false,
     "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"},
    {"trustee v2 Milan id-block", "trustee/test-report.bin", "trustee/test-vcek.der", "go-sev-guest/ask_ark_milan.pem", false,
     "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"},
    {"trustee v3 Milan VLEK (AWS)", "trustee/test-vlek-report.bin", "trustee/test-vlek.der", "go-sev-guest/ask_ark_milan_vlek.pem",
     true, "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"},
    {"oak v5 Genoa", "oak/genoa_report.bin", "oak/genoa_vcek.der", "go-sev-guest/ask_ark_genoa.pem", false,
     "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc"},
    {"oak v5 Turin", "oak/turin_report.bin", "oak/turin_vcek.der", "go-sev-guest/ask_ark_turin_vcek.pem", false,
     "f924dd18f168df60fbea937f0b086284d51b1b376de872bac43694f61134d57967c318018de7335503023dbb50dee624"},
    {"oak v3 Milan", "oak/milan_report.bin", "oak/milan_vcek.der", "go-sev-guest/ask_ark_milan.pem", false,
     "195b01b74976a1faba13bd85eaf787958f0a46e6dddd45c5bdbf8673522777842b8057ae5d866b75416efb62012deaa3"},
};

Collateral collateral_for(const Vector& v) {
  Collateral c;
  c.items[v.vlek ? item::kVlek : item::kVcek] = load(v.cert);
  c.items[v.vlek ? item::kAsvkArk : item::kAskArk] = load(v.chain);
  return c;
}

#define SKIP_WITHOUT_SHARED() \
  if (!fs::exists(snp_dir())) GTEST_SKIP() << "no ../shared test data"

TEST(SnpVerify, EveryVectorVerifiesWithItsMeasurement) {
  SKIP_WITHOUT_SHARED();
  for (const auto& v : kVectors) {
    auto claims = verify_snp_report(load(v.report), collateral_for(v), kPinned);
    ASSERT_TRUE(claims.ok()) << v.name << ": " << claims.error().message();
    EXPECT_EQ(to_hex(claims->measurements.at("measurement")), v.measurement) << v.name;
    EXPECT_EQ(claims->svns.at("signing_key"), v.vlek ? 1u : 0u) << v.name;
  }
}

TEST(SnpVerify, GoSevGuestFieldsAndDebugRefusedByPolicy) {
  SKIP_WITHOUT_SHARED();
  const Vector& v = kVectors[0];
  auto claims = verify_snp_report(load(v.report), collateral_for(v), kPinned);
  ASSERT_TRUE(claims.ok());
  EXPECT_TRUE(claims->debug);
  EXPECT_EQ(to_hex(ByteView(claims->report_data).subspan(0, 6)), "010203040500");
  EXPECT_EQ(claims->svns.at("bootloader"), 2u);
  EXPECT_EQ(claims->svns.at("tee"), 0u);
  EXPECT_EQ(claims->svns.at("snp"), 5u);
  EXPECT_EQ(claims->svns.at("microcode"), 68u);
  EXPECT_EQ(to_hex(ByteView(claims->platform_id).subspan(0, 4)), "3ac3fe21");
  Evidence ev{TeeType::kSevSnp, load(v.report)};
  Policy p = *parse_policy(R"({"allowed_types": ["sev-snp"]})");
  auto r = verify_evidence(ev, collateral_for(v), p, claims->report_data, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("debug"), std::string::npos) << r.error().message();
  p.allow_debug = true;
  EXPECT_TRUE(verify_evidence(ev, collateral_for(v), p, claims->report_data, kPinned).ok());
}

TEST(SnpVerify, TrusteeIdBlockAndVlekFields) {
  SKIP_WITHOUT_SHARED();
  auto id = verify_snp_report(load(kVectors[2].report), collateral_for(kVectors[2]), kPinned);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->svns.at("guest_svn"), 4u);
  EXPECT_EQ(to_hex(id->measurements.at("id_key_digest")),
            "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3");
  EXPECT_FALSE(id->debug);
  auto vlek = verify_snp_report(load(kVectors[3].report), collateral_for(kVectors[3]), kPinned);
  ASSERT_TRUE(vlek.ok());
  EXPECT_EQ(vlek->svns.at("vmpl"), 1u);
  EXPECT_EQ(vlek->svns.at("report_version"), 3u);
  // A policy limiting VMPL to 0 refuses the VMPL-1 report.
  Policy p = *parse_policy(R"({"allowed_types": ["sev-snp"], "max_svns": {"sev-snp": {"vmpl": 0}}})");
  auto r = check_policy(p, *vlek, vlek->report_data, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("vmpl"), std::string::npos);
}

TEST(SnpVerify, TurinLayoutTcb) {
  SKIP_WITHOUT_SHARED();
  auto c = verify_snp_report(load(kVectors[5].report), collateral_for(kVectors[5]), kPinned);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->svns.at("fmc"), 0u);
  EXPECT_EQ(c->svns.at("bootloader"), 1u);
  EXPECT_EQ(c->svns.at("tee"), 0u);
  EXPECT_EQ(c->svns.at("snp"), 2u);
  EXPECT_EQ(c->svns.at("microcode"), 71u);
  EXPECT_EQ(to_hex(ByteView(c->platform_id).subspan(0, 8)), "3b42092f69c656d3");
}

TEST(SnpVerify, InvalidVcekFailsAskSignature) {
  SKIP_WITHOUT_SHARED();
  for (const char* bad : {"trustee/test-vcek-invalid-legacy.der", "trustee/test-vcek-invalid-new.der"}) {
    Collateral c = collateral_for(kVectors[2]);
    c.items[item::kVcek] = load(bad);
    auto r = verify_snp_report(load(kVectors[2].report), c, kPinned);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
    EXPECT_NE(r.error().message().find("certificate chain rejected"), std::string::npos) << r.error().message();
  }
}

TEST(SnpVerify, WrongChainRefused) {
  SKIP_WITHOUT_SHARED();
  // A Milan report and VCEK with the Genoa ASK/ARK.
  Collateral c = collateral_for(kVectors[1]);
  c.items[item::kAskArk] = load("go-sev-guest/ask_ark_genoa.pem");
  auto r = verify_snp_report(load(kVectors[1].report), c, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("chain"), std::string::npos) << r.error().message();
  // Another chip's VCEK of the same product: chain fine, signature not.
  Collateral other = collateral_for(kVectors[1]);
  other.items[item::kVcek] = load("trustee/test-vcek.der");
  auto s = verify_snp_report(load(kVectors[1].report), other, kPinned);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kSecurity);
  // The VLEK report with the VCEK chain (ASK instead of ASVK).
  Collateral vl = collateral_for(kVectors[3]);
  vl.items.erase(item::kAsvkArk);
  vl.items[item::kAskArk] = load("go-sev-guest/ask_ark_milan.pem");
  EXPECT_FALSE(verify_snp_report(load(kVectors[3].report), vl, kPinned).ok());
  // Missing collateral.
  EXPECT_FALSE(verify_snp_report(load(kVectors[1].report), Collateral{}, kPinned).ok());
}

TEST(SnpVerify, ExpiredCertificateRefused) {
  SKIP_WITHOUT_SHARED();
  // The AWS VLEK lives one year: 2024-12-10 .. 2025-12-10.
  auto r = verify_snp_report(load(kVectors[3].report), collateral_for(kVectors[3]), at("2026-01-15T00:00:00Z"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("expired"), std::string::npos) << r.error().message();
  auto early = verify_snp_report(load(kVectors[4].report), collateral_for(kVectors[4]), at("2025-01-01T00:00:00Z"));
  ASSERT_FALSE(early.ok());
  EXPECT_NE(early.error().message().find("not yet valid"), std::string::npos) << early.error().message();
}

TEST(SnpVerify, OutdatedTcbRefusedByMinimumSvn) {
  SKIP_WITHOUT_SHARED();
  auto c = verify_snp_report(load(kVectors[1].report), collateral_for(kVectors[1]), kPinned);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->svns.at("snp"), 8u);
  EXPECT_EQ(c->svns.at("microcode"), 115u);
  Policy p = *parse_policy(R"({"allowed_types": ["sev-snp"], "min_svns": {"sev-snp": {"snp": 8, "microcode": 200}}})");
  auto r = check_policy(p, *c, c->report_data, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("microcode"), std::string::npos);
}

TEST(SnpVerify, TcbMismatchWithCertificateRefused) {
  SKIP_WITHOUT_SHARED();
  // Report a different TCB than the VCEK was issued for: the signature fails first (it is signed);
  // parse-level checks catch the rest.
  Bytes rep = load(kVectors[1].report);
  rep[0x180 + 7] ^= 1;
  EXPECT_FALSE(verify_snp_report(rep, collateral_for(kVectors[1]), kPinned).ok());
  Bytes bad_algo = load(kVectors[1].report);
  bad_algo[0x34] = 2;
  auto r = parse_snp_report(bad_algo);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
  EXPECT_FALSE(parse_snp_report(ByteView(rep).subspan(0, 1000)).ok());
  Bytes tail = load(kVectors[1].report);
  tail[0x400] = 1;
  EXPECT_FALSE(parse_snp_report(tail).ok());
}

TEST(SnpMutation, EveryByteOfSignedRegionOfEveryVector) {
  SKIP_WITHOUT_SHARED();
  for (const auto& v : kVectors) {
    Bytes rep = load(v.report);
    Collateral c = collateral_for(v);
    ASSERT_TRUE(verify_snp_report(rep, c, kPinned).ok()) << v.name;
    for (size_t i = 0; i < kSnpSignedSize; ++i) {
      Bytes m = rep;
      m[i] ^= 0x01;
      EXPECT_FALSE(verify_snp_report(m, c, kPinned).ok()) << v.name << ": byte " << i;
    }
    // The signature itself.
    for (size_t i = 0x2A0; i < 0x2A0 + 48; ++i) {
      Bytes m = rep;
      m[i] ^= 0x01;
      EXPECT_FALSE(verify_snp_report(m, c, kPinned).ok()) << v.name << ": signature byte " << i;
    }
  }
}

}  // namespace
}  // namespace veil::attest
