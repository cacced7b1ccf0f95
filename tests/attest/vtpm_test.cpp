// Azure confidential VM vTPM evidence as trustee records it (../shared/testdata/attestation/tpm/
// trustee-az-{snp,tdx}-vtpm): hardware report -> HCL runtime data -> HCLAkPub -> TPM quote.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "attest/formats.h"
#include "attest/tdx.h"
#include "attest/vtpm_azure.h"

namespace veil::attest::vtpm {
namespace {

namespace fs = std::filesystem;
const fs::path kTpm = fs::path(VEIL_SHARED_DIR) / "testdata/attestation/tpm";
const fs::path kSnp = fs::path(VEIL_SHARED_DIR) / "testdata/attestation/sev-snp/go-sev-guest";
const auto kPinned = std::chrono::system_clock::time_point(std::chrono::seconds(1756684800));  // 2025-09-01

Bytes load(const fs::path& p) {
  auto r = read_file(p);
  EXPECT_TRUE(r.ok()) << p;
  return r.ok() ? *r : Bytes{};
}

ReportData padded(ByteView nonce) {
  ReportData rd{};
  std::copy(nonce.begin(), nonce.end(), rd.begin());
  return rd;
}

Collateral ask_ark(const char* product) {
  Collateral c;
  c.items[item::kAskArk] = load(kSnp / (std::string("ask_ark_") + product + ".pem"));
  return c;
}

// Re-encodes parsed evidence in trustee's v1 shape (hex quote, base64url HCL report).
std::string to_v1(const AzEvidence& ev) {
  nlohmann::json j;
  j["version"] = 1;
  std::vector<std::string> pcrs;
  for (const auto& p : ev.pcrs) pcrs.push_back(to_hex(p));
  j["tpm_quote"] = {{"signature", to_hex(ev.tpm_signature)}, {"message", to_hex(ev.tpm_message)}, {"pcrs", pcrs}};
  j["hcl_report"] = base64_encode(ev.hcl_report);
  if (ev.vcek) j["vcek"] = std::string(as_chars(*ev.vcek).substr(0, 10)) == "-----BEGIN" ? std::string(as_chars(*ev.vcek))
                                                                                        : base64_encode(*ev.vcek);
  if (ev.td_quote) j["td_quote"] = base64_encode(*ev.td_quote);
  if (ev.report_data) j["report_data"] = to_hex(*ev.report_data);
  return j.dump();
}

struct SnpVector {
  const char* file;
  const char* product;
  std::string nonce_hex;
  const char* pcr0;
};
const SnpVector kSnpVectors[] = {
    {"evidence-v0.json", "milan", "6368616c6c656e6765", "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"},
    {"evidence-v1.json", "milan", "6368616c6c656e6765", "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"},
    {"evidence-v2.json", "milan",
     "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef",
     "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"},
    {"evidence-genoa.json", "genoa",
     "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f",
     "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"},
};

TEST(AzSnpVtpm, TrusteeEvidenceVerifiesWithHardwareAndTpmClaims) {
  auto v = make_az_snp_vtpm_verifier();
  for (const auto& vec : kSnpVectors) {
    Evidence ev{TeeType::kAzSnpVtpm, load(kTpm / "trustee-az-snp-vtpm" / vec.file)};
    auto claims = v->verify(ev, ask_ark(vec.product), kPinned);
    ASSERT_TRUE(claims.ok()) << vec.file << ": " << claims.error().message();
    EXPECT_EQ(claims->type, TeeType::kAzSnpVtpm);
    EXPECT_EQ(to_hex(claims->measurements.at("pcr0")), vec.pcr0) << vec.file;
    EXPECT_EQ(claims->measurements.count("pcr23"), 1u);
    EXPECT_EQ(claims->measurements.count("measurement"), 1u) << "hardware measurement carried";
    EXPECT_EQ(claims->report_data, padded(*from_hex(vec.nonce_hex))) << vec.file;
    EXPECT_FALSE(claims->debug);
  }
}

TEST(AzSnpVtpm, SeparateFilesVectorVerifies) {
  auto q = nlohmann::json::parse(as_chars(load(kTpm / "trustee-az-snp-vtpm/tpm-quote-v1.json")));
  nlohmann::json j = {{"version", 1}, {"tpm_quote", q},
                      {"hcl_report", base64_encode(load(kTpm / "trustee-az-snp-vtpm/hcl-report.bin"))},
                      {"vcek", std::string(as_chars(load(kTpm / "trustee-az-snp-vtpm/vcek.pem")))}};
  auto claims = make_az_snp_vtpm_verifier()->verify(Evidence{TeeType::kAzSnpVtpm, to_bytes(j.dump())}, {}, kPinned);
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_EQ(to_hex(claims->measurements.at("pcr0")), "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be");
  EXPECT_EQ(claims->report_data, padded(as_bytes("challenge")));
}

TEST(AzSnpVtpm, RefusalsFailClosed) {
  auto v = make_az_snp_vtpm_verifier();
  Bytes raw = load(kTpm / "trustee-az-snp-vtpm/evidence-v0.json");
  // No ASK/ARK: the VCEK cannot be chained to a pinned AMD root.
  auto no_chain = v->verify(Evidence{TeeType::kAzSnpVtpm, raw}, {}, kPinned);
  ASSERT_FALSE(no_chain.ok());
  EXPECT_EQ(no_chain.error().code(), ErrorCode::kSecurity);
  // A Veil report_data the quote does not bind (its extraData is "challenge") is refused.
  auto ev = parse_evidence(raw);
  ASSERT_TRUE(ev.ok());
  ev->report_data = padded(as_bytes("challenge"));
  auto bound = v->verify(Evidence{TeeType::kAzSnpVtpm, to_bytes(to_v1(*ev))}, ask_ark("milan"), kPinned);
  ASSERT_FALSE(bound.ok());
  EXPECT_NE(bound.error().message().find("extraData"), std::string::npos) << bound.error().message();
  // Unknown fields are refused.
  auto j = nlohmann::json::parse(as_chars(raw));
  j["extra"] = 1;
  EXPECT_EQ(v->verify(Evidence{TeeType::kAzSnpVtpm, to_bytes(j.dump())}, ask_ark("milan"), kPinned).error().code(),
            ErrorCode::kCorrupt);
}

TEST(AzSnpVtpm, EverySingleByteFlipOfTheBoundDataIsRefused) {
  auto v = make_az_snp_vtpm_verifier();
  auto ev = parse_evidence(load(kTpm / "trustee-az-snp-vtpm/evidence-v1.json"));
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  Collateral coll = ask_ark("milan");
  ASSERT_TRUE(v->verify(Evidence{TeeType::kAzSnpVtpm, to_bytes(to_v1(*ev))}, coll, kPinned).ok());
  auto refused = [&](const AzEvidence& m) {
    return !v->verify(Evidence{TeeType::kAzSnpVtpm, to_bytes(to_v1(m))}, coll, kPinned).ok();
  };
  for (size_t i = 0; i < ev->tpm_message.size(); ++i) {
    AzEvidence m = *ev;
    m.tpm_message[i] ^= 0x01;
    EXPECT_TRUE(refused(m)) << "TPMS_ATTEST byte " << i;
  }
  for (size_t i = 0; i < ev->tpm_signature.size(); i += 3) {
    AzEvidence m = *ev;
    m.tpm_signature[i] ^= 0x01;
    EXPECT_TRUE(refused(m)) << "quote signature byte " << i;
  }
  for (size_t p = 0; p < ev->pcrs.size(); ++p) {
    AzEvidence m = *ev;
    m.pcrs[p][p] ^= 0x01;
    EXPECT_TRUE(refused(m)) << "PCR " << p;
  }
  auto hcl = parse_hcl_report(ev->hcl_report);
  ASSERT_TRUE(hcl.ok());
  size_t var_end = kHclVarDataOffset + hcl->var_data.size();
  // The runtime data (HCLAkPub lives here) and the signed part of the SNP report.
  for (size_t i = kHclVarDataOffset; i < var_end; ++i) {
    AzEvidence m = *ev;
    m.hcl_report[i] ^= 0x01;
    EXPECT_TRUE(refused(m)) << "HCL runtime data byte " << i;
  }
  for (size_t i = kHclHwReportOffset; i < kHclHwReportOffset + 0x2A0; i += 7) {
    AzEvidence m = *ev;
    m.hcl_report[i] ^= 0x01;
    EXPECT_TRUE(refused(m)) << "SNP report byte " << i - kHclHwReportOffset;
  }
}

TEST(AzTdxVtpm, TrusteeEvidenceChainVerifies) {
  for (const char* file : {"evidence-v0.json", "evidence-v1.json"}) {
    auto ev = parse_evidence(load(kTpm / "trustee-az-tdx-vtpm" / file));
    ASSERT_TRUE(ev.ok()) << file << ": " << ev.error().message();
    ASSERT_TRUE(ev->td_quote.has_value());
    auto hcl = parse_hcl_report(ev->hcl_report);
    ASSERT_TRUE(hcl.ok()) << hcl.error().message();
    EXPECT_EQ(hcl->report_type, 4u);
    // No Intel collateral exists for this quote: the hardware step is the signature core only.
    Status sigs = verify_tdx_quote_signatures(*ev->td_quote, kPinned);
    ASSERT_TRUE(sigs.ok()) << sigs.error().message();
    auto quote = parse_tdx_quote(*ev->td_quote);
    ASSERT_TRUE(quote.ok());
    EXPECT_EQ(to_hex(quote->report_data),
              "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839" + std::string(64, '0'));
    EXPECT_EQ(to_hex(hcl->hw_report.subspan(0x80, 64)), to_hex(quote->report_data));
    auto claims = verify_after_hardware(*ev, *hcl, quote->report_data);
    ASSERT_TRUE(claims.ok()) << claims.error().message();
    EXPECT_EQ(to_hex(claims->measurements.at("pcr0")), "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273");
    EXPECT_EQ(claims->report_data, padded(as_bytes("challenge")));
    // A report_data that is not the runtime data's hash is refused.
    ReportData wrong = quote->report_data;
    wrong[0] ^= 1;
    EXPECT_EQ(verify_after_hardware(*ev, *hcl, wrong).error().code(), ErrorCode::kSecurity);
  }
  // The verifier is fail-closed: without the TCB collateral the TD quote is not accepted.
  auto r = make_az_tdx_vtpm_verifier()->verify(
      Evidence{TeeType::kAzTdxVtpm, load(kTpm / "trustee-az-tdx-vtpm/evidence-v1.json")}, {}, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("TD quote"), std::string::npos) << r.error().message();
}

TEST(AzVtpm, HclParserBounds) {
  Bytes hcl = load(kTpm / "trustee-az-snp-vtpm/hcl-report.bin");
  ASSERT_TRUE(parse_hcl_report(hcl).ok());
  for (size_t n : {0ul, 4ul, 0x4C0ul, 0x4D3ul}) EXPECT_FALSE(parse_hcl_report(ByteView(hcl.data(), n)).ok()) << n;
  Bytes big = hcl;
  big[kHclIgvmOffset + 16] = 0xFF;  // var_size past the end
  big[kHclIgvmOffset + 17] = 0xFF;
  EXPECT_EQ(parse_hcl_report(big).error().code(), ErrorCode::kCorrupt);
  Bytes magic = hcl;
  magic[0] = 'X';
  EXPECT_FALSE(parse_hcl_report(magic).ok());
}

}  // namespace
}  // namespace veil::attest::vtpm
