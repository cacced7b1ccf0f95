// Intel TDX quote verification against the real vectors in ../shared/testdata/attestation/tdx
// (NOTES.md section 2): every vector gives its stated outcome at its pinned time.
#include <gtest/gtest.h>

#include <filesystem>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/tdx.h"

namespace veil::attest {
namespace {

namespace fs = std::filesystem;

fs::path tdx_dir() { return fs::path(VEIL_SHARED_DIR) / "testdata" / "attestation" / "tdx"; }

Bytes load(const fs::path& rel) {
  auto b = read_file(tdx_dir() / rel);
  EXPECT_TRUE(b.ok()) << (tdx_dir() / rel);
  return b.ok() ? *b : Bytes{};
}

Collateral load_collateral(const fs::path& rel) {
  auto text = read_text_file(tdx_dir() / rel);
  EXPECT_TRUE(text.ok());
  auto c = collateral_from_json(*text);
  EXPECT_TRUE(c.ok()) << c.error().message();
  return c.ok() ? *c : Collateral{};
}

TimePoint at(const char* t) { return *parse_time(t); }

void expect_hex(const Claims& c, const char* name, std::string_view hex) {
  auto it = c.measurements.find(name);
  ASSERT_NE(it, c.measurements.end()) << name;
  EXPECT_EQ(to_hex(it->second), hex) << name;
}

#define SKIP_WITHOUT_SHARED()                                                   \
  if (!fs::exists(tdx_dir())) GTEST_SKIP() << "no ../shared test data"

// ---- parsing ------------------------------------------------------------------------------------------

TEST(TdxParse, V4QuoteFieldsAndTrailingBytes) {
  SKIP_WITHOUT_SHARED();
  Bytes quote = load("go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
  auto q = parse_tdx_quote(quote);
  ASSERT_TRUE(q.ok()) << q.error().message();
  EXPECT_EQ(q->version, 4);
  EXPECT_EQ(q->signed_end, 0x278u);
  EXPECT_EQ(to_hex(q->mr_td),
            "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb");
  EXPECT_EQ(to_hex(q->report_data),
            "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d76"
            "6c66f6f29f8acb281f1113");
  EXPECT_EQ(to_hex(q->td_attributes), "0000004000000000");
  EXPECT_FALSE(q->debug());
  // 39 trailing bytes after the signature data are ignored.
  EXPECT_EQ(quote.size() - q->total_size, 39u);
}

TEST(TdxParse, V5Td15Body) {
  SKIP_WITHOUT_SHARED();
  auto q = parse_tdx_quote(load("go-tdx-guest/quote_v5_sample.dat"));
  ASSERT_TRUE(q.ok()) << q.error().message();
  EXPECT_EQ(q->version, 5);
  EXPECT_EQ(q->body_type, 3);
  EXPECT_EQ(q->signed_end, 0x36u + 648u);
  EXPECT_EQ(to_hex(q->mr_td),
            "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876");
  EXPECT_EQ(to_hex(ByteView(q->tee_tcb_svn).subspan(0, 3)), "0b0104");
  EXPECT_EQ(to_hex(ByteView(q->tee_tcb_svn2).subspan(0, 3)), "0d0104");
}

TEST(TdxParse, RejectsMalformed) {
  SKIP_WITHOUT_SHARED();
  Bytes quote = load("dcap-qvl/tdx_quote");
  for (size_t cut : {size_t{0}, size_t{10}, size_t{0x30}, size_t{0x200}, size_t{0x27a}, size_t{0x300}, size_t{0x500}}) {
    auto q = parse_tdx_quote(ByteView(quote).subspan(0, cut));
    EXPECT_FALSE(q.ok()) << cut;
  }
  Bytes v3 = quote;
  v3[0] = 3;
  auto r = parse_tdx_quote(v3);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
  Bytes big = quote;
  big[0x278] = 0xff;
  big[0x279] = 0xff;  // signature data length far beyond the buffer
  r = parse_tdx_quote(big);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("signature_data_len"), std::string::npos);
}

// ---- full verification with collateral ---------------------------------------------------------------

TEST(TdxVerify, DcapQvlV4UpToDate) {
  SKIP_WITHOUT_SHARED();
  auto claims = verify_tdx_quote(load("dcap-qvl/tdx_quote"), load_collateral("dcap-qvl/tdx_quote_collateral.json"),
                                 at("2025-07-19T10:00:34Z"));
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_EQ(claims->tcb_status, "UpToDate");
  EXPECT_EQ(claims->svns.at("qe_svn"), 6u);
  EXPECT_FALSE(claims->debug);
  expect_hex(*claims, "mrtd", "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7");
  // Any time in the window works; outside it the collateral has expired.
  EXPECT_TRUE(verify_tdx_quote(load("dcap-qvl/tdx_quote"), load_collateral("dcap-qvl/tdx_quote_collateral.json"),
                               at("2025-06-20T00:00:00Z")).ok());
  auto late = verify_tdx_quote(load("dcap-qvl/tdx_quote"), load_collateral("dcap-qvl/tdx_quote_collateral.json"),
                               at("2025-08-01T00:00:00Z"));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code(), ErrorCode::kSecurity);
}

TEST(TdxVerify, GoTdxGuestV4NoMatchingTcbLevel) {
  SKIP_WITHOUT_SHARED();
  auto r = verify_tdx_quote(load("go-tdx-guest/tdx_prod_quote_SPR_E4.dat"),
                            load_collateral("go-tdx-guest/collateral_bundle.derived.json"), at("2023-07-01T01:00:00Z"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("no matching TCB level"), std::string::npos) << r.error().message();
  // Everything before the TCB status passed: signatures, chain, CRLs.
  EXPECT_TRUE(verify_tdx_quote_signatures(load("go-tdx-guest/tdx_prod_quote_SPR_E4.dat"), at("2023-07-01T01:00:00Z")).ok());
}

TEST(TdxVerify, GoTdxGuestPcsResponseFormsAccepted) {
  SKIP_WITHOUT_SHARED();
  // The same collateral as Intel PCS serves it: {"tcbInfo": {...}, "signature": "..."}, DER CRLs, PEM chains.
  Collateral c;
  c.items[item::kTcbInfo] = load("go-tdx-guest/sample_tcbInfo_response");
  c.items[item::kQeIdentity] = load("go-tdx-guest/sample_qeIdentity_response");
  c.items[item::kTcbInfoIssuerChain] = load("go-tdx-guest/tcb_signing_issuer_chain.pem");
  c.items[item::kQeIdentityIssuerChain] = load("go-tdx-guest/tcb_signing_issuer_chain.pem");
  c.items[item::kPckCrl] = load("go-tdx-guest/pckcrl");
  c.items[item::kRootCaCrl] = load("go-tdx-guest/rootcrl.der");
  auto r = verify_tdx_quote(load("go-tdx-guest/tdx_prod_quote_SPR_E4.dat"), c, at("2023-07-01T01:00:00Z"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("no matching TCB level"), std::string::npos) << r.error().message();
}

TEST(TdxVerify, DcapQvlV5OutdatedNoMatchingTcbLevel) {
  SKIP_WITHOUT_SHARED();
  auto r = verify_tdx_quote(load("dcap-qvl/tdx_quote_outdated"), load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"),
                            at("2026-03-01T00:00:00Z"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("no matching TCB level"), std::string::npos) << r.error().message();
  EXPECT_TRUE(verify_tdx_quote_signatures(load("dcap-qvl/tdx_quote_outdated"), at("2026-03-01T00:00:00Z")).ok());
}

TEST(TdxVerify, GoTdxGuestV5UpToDateWithCrossSourceCollateral) {
  SKIP_WITHOUT_SHARED();
  auto claims = verify_tdx_quote(load("go-tdx-guest/quote_v5_sample.dat"),
                                 load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"), at("2026-03-01T00:00:00Z"));
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_EQ(claims->tcb_status, "UpToDate");
  EXPECT_EQ(claims->svns.at("qe_svn"), 7u);
  expect_hex(*claims, "mrtd", "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876");
  EXPECT_TRUE(claims->measurements.contains("mrservicetd"));
}

TEST(TdxVerify, SignatureOnlyVectors) {
  SKIP_WITHOUT_SHARED();
  // No Intel collateral exists for these: the cryptographic core verifies, the verifier refuses.
  struct V {
    const char* file;
    const char* time;
  } vectors[] = {
      {"go-tdx-guest/ccel/cos-113-tdx-quote.dat", "2025-01-01T00:00:00Z"},
      {"trustee/tdx_quote_4.dat", "2025-01-01T00:00:00Z"},
      {"trustee/tdx_quote_5.dat", "2025-01-01T00:00:00Z"},
  };
  for (const auto& v : vectors) {
    Bytes quote = load(v.file);
    Status st = verify_tdx_quote_signatures(quote, at(v.time));
    EXPECT_TRUE(st.ok()) << v.file << ": " << st.error().message();
    auto full = verify_tdx_quote(quote, Collateral{}, at(v.time));
    ASSERT_FALSE(full.ok()) << v.file;
    EXPECT_EQ(full.error().code(), ErrorCode::kSecurity);
  }
  auto q = parse_tdx_quote(load("go-tdx-guest/ccel/cos-113-tdx-quote.dat"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(to_hex(q->report_data), std::string(128, '0'));
}

// ---- negative cases ---------------------------------------------------------------------------------

TEST(TdxVerify, MissingOrWrongCollateralRefused) {
  SKIP_WITHOUT_SHARED();
  Bytes quote = load("dcap-qvl/tdx_quote");
  Collateral good = load_collateral("dcap-qvl/tdx_quote_collateral.json");
  TimePoint t = at("2025-07-01T00:00:00Z");
  for (const char* name : {item::kPckCrl, item::kRootCaCrl, item::kTcbInfo, item::kTcbInfoIssuerChain, item::kQeIdentity,
                           item::kQeIdentitySignature}) {
    Collateral c = good;
    c.items.erase(name);
    auto r = verify_tdx_quote(quote, c, t);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_NE(r.error().message().find(name), std::string::npos) << r.error().message();
  }
  // Collateral for another platform (FMSPC mismatch).
  auto other = verify_tdx_quote(quote, load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"), at("2026-03-01T00:00:00Z"));
  ASSERT_FALSE(other.ok());
  // A tampered TCB info body breaks its signature.
  Collateral bad = good;
  Bytes& info = bad.items[item::kTcbInfo];
  auto pos = std::string(info.begin(), info.end()).find("UpToDate");
  ASSERT_NE(pos, std::string::npos);
  info[pos] = 'u';
  auto r = verify_tdx_quote(quote, bad, t);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("signature"), std::string::npos) << r.error().message();
  // The 2018 TCB signing certificate expired on 2025-05-21: go-tdx-guest's v5 TCB info signed by the
  // same key verifies only with the re-issued 2025 certificate.
  Collateral v5;
  v5.items = load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json").items;
  v5.items[item::kTcbInfo] = load("go-tdx-guest/sample_tcbinfo_response_v5");
  v5.items.erase(item::kTcbInfoSignature);
  v5.items[item::kTcbInfoIssuerChain] = load("go-tdx-guest/tcb_signing_issuer_chain.pem");
  auto expired = verify_tdx_quote(load("go-tdx-guest/quote_v5_sample.dat"), v5, at("2026-02-20T00:00:00Z"));
  ASSERT_FALSE(expired.ok());
  EXPECT_NE(expired.error().message().find("expired"), std::string::npos) << expired.error().message();
  v5.items[item::kTcbInfoIssuerChain] = load("intel_tcb_signing_chain_2025.pem");
  auto fresh = verify_tdx_quote(load("go-tdx-guest/quote_v5_sample.dat"), v5, at("2026-02-20T00:00:00Z"));
  EXPECT_TRUE(fresh.ok()) << fresh.error().message();
}

TEST(TdxVerify, DebugAttributeSurfacesAndPolicyRefuses) {
  SKIP_WITHOUT_SHARED();
  auto claims = verify_tdx_quote(load("dcap-qvl/tdx_quote"), load_collateral("dcap-qvl/tdx_quote_collateral.json"),
                                 at("2025-07-01T00:00:00Z"));
  ASSERT_TRUE(claims.ok());
  Policy p = *parse_policy(R"({"allowed_types": ["tdx"]})");
  Claims dbg = *claims;
  dbg.debug = true;
  EXPECT_FALSE(check_policy(p, dbg, claims->report_data, at("2025-07-01T00:00:00Z")).ok());
  EXPECT_TRUE(check_policy(p, *claims, claims->report_data, at("2025-07-01T00:00:00Z")).ok());
}

TEST(TdxVerify, ThroughVerifyEvidenceWithPinnedMrtd) {
  SKIP_WITHOUT_SHARED();
  Evidence ev{TeeType::kTdx, load("dcap-qvl/tdx_quote")};
  auto q = parse_tdx_quote(ev.data);
  ASSERT_TRUE(q.ok());
  Policy p = *parse_policy(
      R"({"allowed_types": ["tdx"], "expected_measurements": {"tdx": {"mrtd": ["91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"]}}})");
  auto c = load_collateral("dcap-qvl/tdx_quote_collateral.json");
  EXPECT_TRUE(verify_evidence(ev, c, p, q->report_data, at("2025-07-01T00:00:00Z")).ok());
  ReportData other = q->report_data;
  other[0] ^= 1;
  EXPECT_FALSE(verify_evidence(ev, c, p, other, at("2025-07-01T00:00:00Z")).ok());
}

// ---- mutation: every byte of the signed region of each positive vector matters ------------------------

void mutate_all(const Bytes& quote, const Collateral& c, TimePoint t) {
  auto q = parse_tdx_quote(quote);
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE(verify_tdx_quote(quote, c, t).ok());
  size_t failures = 0;
  for (size_t i = 0; i < q->signed_end; ++i) {
    Bytes m = quote;
    m[i] ^= 0x01;
    if (verify_tdx_quote(m, c, t).ok()) ADD_FAILURE() << "flipping byte " << i << " still verifies";
    else ++failures;
  }
  EXPECT_EQ(failures, q->signed_end);
}

TEST(TdxMutation, DcapQvlV4EveryByteOfSignedRegion) {
  SKIP_WITHOUT_SHARED();
  mutate_all(load("dcap-qvl/tdx_quote"), load_collateral("dcap-qvl/tdx_quote_collateral.json"), at("2025-07-01T00:00:00Z"));
}

TEST(TdxMutation, GoTdxGuestV5EveryByteOfSignedRegion) {
  SKIP_WITHOUT_SHARED();
  mutate_all(load("go-tdx-guest/quote_v5_sample.dat"), load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"),
             at("2026-03-01T00:00:00Z"));
}

TEST(TdxMutation, SignatureDataFlipsRefused) {
  SKIP_WITHOUT_SHARED();
  // The signature, attestation key, QE report and its signature are covered too.
  Bytes quote = load("dcap-qvl/tdx_quote");
  Collateral c = load_collateral("dcap-qvl/tdx_quote_collateral.json");
  auto q = parse_tdx_quote(quote);
  ASSERT_TRUE(q.ok());
  size_t start = q->signed_end + 4;
  for (size_t i = start; i < start + 128 + 6 + 384 + 64; i += 7) {
    Bytes m = quote;
    m[i] ^= 0x80;
    EXPECT_FALSE(verify_tdx_quote(m, c, at("2025-07-01T00:00:00Z")).ok()) << "byte " << i;
  }
  // Trailing bytes are not signed and are ignored.
  Bytes m = quote;
  m.back() ^= 0xff;
  EXPECT_TRUE(verify_tdx_quote(m, c, at("2025-07-01T00:00:00Z")).ok());
}

}  // namespace
}  // namespace veil::attest

namespace veil::attest {
namespace {

TEST(TdxPrepared, SameVerdictAsOneShotAndReusable) {
  if (!fs::exists(tdx_dir())) GTEST_SKIP() << "no ../shared test data";
  TimePoint t = at("2026-03-01T00:00:00Z");
  auto prepared = prepare_tdx_collateral(load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"), t);
  ASSERT_TRUE(prepared.ok()) << prepared.error().message();
  auto good = verify_tdx_quote_prepared(load("go-tdx-guest/quote_v5_sample.dat"), **prepared, t);
  ASSERT_TRUE(good.ok()) << good.error().message();
  EXPECT_EQ(good->tcb_status, "UpToDate");
  auto outdated = verify_tdx_quote_prepared(load("dcap-qvl/tdx_quote_outdated"), **prepared, t);
  ASSERT_FALSE(outdated.ok());
  EXPECT_NE(outdated.error().message().find("no matching TCB level"), std::string::npos);
  // Expired collateral cannot be prepared.
  EXPECT_FALSE(prepare_tdx_collateral(load_collateral("dcap-qvl/tdx_quote_outdated_collateral.json"), at("2026-04-01T00:00:00Z")).ok());
}

}  // namespace
}  // namespace veil::attest
