// TPM 2.0 quotes: the real GCE vTPM vectors (go-tpm-tools, nonce 9009 and empty), their AK certificate
// chain and event log, trustee's swtpm quote, parsers' bounds, and single-byte mutations.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "attest/formats.h"
#include "attest/tpm_bundle.h"
#include "attest/tpm_eventlog.h"
#include "attest/tpm_quote.h"
#include "attest/tpm_structs.h"
#include "attest/tpm_x509.h"

namespace veil::attest::tpm {
namespace {

const std::filesystem::path kTpm = std::filesystem::path(VEIL_SHARED_DIR) / "testdata/attestation/tpm";
// 2025-09-01T00:00:00Z, the manifest's pinned time for these vectors.
const auto kPinned = std::chrono::system_clock::time_point(std::chrono::seconds(1756684800));

Bytes load(const std::filesystem::path& p) {
  auto r = read_file(p);
  EXPECT_TRUE(r.ok()) << p;
  return r.ok() ? *r : Bytes{};
}

PcrBank load_pcrs(const std::filesystem::path& p) {
  PcrBank bank;
  std::ifstream in(p);
  uint32_t idx;
  std::string hex;
  while (in >> idx >> hex) bank[idx] = *from_hex(hex);
  return bank;
}

struct Vector {
  std::string dir;
  Bytes nonce;
};
const Vector kVectors[] = {{"extracted-gce-cos-85-nonce9009", {0x90, 0x09}}, {"extracted-gce-cos-85-no-nonce", {}}};
const std::pair<uint16_t, const char*> kBanks[] = {{kAlgSha1, "quote0_bank0004"},
                                                   {kAlgSha256, "quote1_bank000b"},
                                                   {kAlgSha384, "quote2_bank000c"}};

AkKey gce_ak(const std::string& dir) {
  auto pub = parse_public(load(kTpm / "go-tpm-tools" / dir / "ak_pub.tpmt_public"));
  EXPECT_TRUE(pub.ok()) << (pub.ok() ? "" : pub.error().message());
  auto ak = ak_from_public(*pub);
  EXPECT_TRUE(ak.ok());
  return *ak;
}

TEST(TpmQuote, GceVectorsVerifyInEveryBank) {
  for (const auto& v : kVectors) {
    AkKey ak = gce_ak(v.dir);
    for (const auto& [bank, stem] : kBanks) {
      auto d = kTpm / "go-tpm-tools" / v.dir;
      auto sig = parse_signature(load(d / (std::string(stem) + ".tpmt_signature")));
      ASSERT_TRUE(sig.ok()) << sig.error().message();
      EXPECT_EQ(sig->sig_alg, kAlgRsassa);
      EXPECT_EQ(sig->hash_alg, kAlgSha256);
      PcrBanks pcrs{{bank, load_pcrs(d / (std::string(stem) + "_pcrs.txt"))}};
      auto q = verify_quote(load(d / (std::string(stem) + ".tpms_attest")), *sig, ak, v.nonce, pcrs);
      ASSERT_TRUE(q.ok()) << v.dir << " " << stem << ": " << q.error().message();
      EXPECT_EQ(q->quoted.at(bank).size(), 24u);
      if (bank == kAlgSha256) {
        EXPECT_EQ(to_hex(q->quoted.at(bank).at(0)), "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf");
      }
      // A different nonce is refused.
      Bytes other = v.nonce;
      other.push_back(0x01);
      auto bad = verify_quote(load(d / (std::string(stem) + ".tpms_attest")), *sig, ak, other, pcrs);
      ASSERT_FALSE(bad.ok());
      EXPECT_EQ(bad.error().code(), ErrorCode::kSecurity);
      EXPECT_NE(bad.error().message().find("extraData"), std::string::npos);
    }
  }
}

TEST(TpmQuote, GceAkCertificateChainsToTheGoogleRoot) {
  for (const auto& v : kVectors) {
    auto d = kTpm / "go-tpm-tools" / v.dir;
    auto cert = x509::parse_der(load(d / "ak_cert.der"), "ak_cert");
    ASSERT_TRUE(cert.ok()) << cert.error().message();
    auto inter = x509::parse_bundle(load(kTpm / "go-tpm-tools/ca-certs/tpm_ek_intermediate_2.crt"), "inter");
    auto root = x509::parse_bundle(load(kTpm / "go-tpm-tools/ca-certs/tpm_ek_root_1.cer"), "root");
    ASSERT_TRUE(inter.ok() && root.ok());
    Status st = x509::verify_chain(cert->get(), {(*inter)[0].get()}, (*root)[0].get(), kPinned, "ak_cert");
    ASSERT_TRUE(st.ok()) << st.error().message();
    auto key = x509::public_key(cert->get());
    auto from_cert = ak_from_pkey(key.get(), "ak_cert");
    ASSERT_TRUE(from_cert.ok());
    EXPECT_TRUE(same_key(*from_cert, gce_ak(v.dir)));
    // Without the intermediate, or against another root, the chain is refused.
    EXPECT_FALSE(x509::verify_chain(cert->get(), {}, (*root)[0].get(), kPinned, "ak_cert").ok());
    auto other = x509::parse_bundle(load(kTpm / "go-tpm-tools/ca-certs/gcp_ek_ak_ca_root.crt"), "other");
    ASSERT_TRUE(other.ok());
    EXPECT_FALSE(x509::verify_chain(cert->get(), {(*inter)[0].get()}, (*other)[0].get(), kPinned, "ak_cert").ok());
  }
}

TEST(TpmEventLog, GceLogReplaysToQuotedPcrsInAllBanks) {
  for (const auto& v : kVectors) {
    auto d = kTpm / "go-tpm-tools" / v.dir;
    auto log = parse_event_log(load(d / "event_log.bin"));
    ASSERT_TRUE(log.ok()) << log.error().message();
    PcrBanks quoted;
    for (const auto& [bank, stem] : kBanks) quoted[bank] = load_pcrs(d / (std::string(stem) + "_pcrs.txt"));
    Status st = check_event_log(*log, quoted);
    ASSERT_TRUE(st.ok()) << st.error().message();
    for (const auto& [bank, stem] : kBanks) {
      auto replayed = replay(*log, bank);
      ASSERT_TRUE(replayed.ok());
      for (uint32_t i = 0; i <= 9; ++i) {
        ASSERT_TRUE(replayed->count(i)) << "PCR " << i;
        EXPECT_EQ(replayed->at(i), quoted[bank][i]) << "PCR " << i << " bank " << bank;
      }
    }
    // A changed PCR value no longer matches the replay.
    quoted[kAlgSha256][4][0] ^= 1;
    EXPECT_FALSE(check_event_log(*log, quoted).ok());
  }
}

TEST(TpmEventLog, OtherRealLogsParseAndReplay) {
  for (const char* name : {"ubuntu-2404-amd-sevsnp.bin", "cos-101-amd-sev.bin", "confidential-gke-debug-251000_eventlog.bin"}) {
    auto log = parse_event_log(load(kTpm / "go-tpm-tools/eventlogs" / name));
    ASSERT_TRUE(log.ok()) << name << ": " << log.error().message();
    EXPECT_GT(log->events.size(), 10u);
    for (const auto& [alg, size] : log->digest_sizes) {
      auto r = replay(*log, alg);
      ASSERT_TRUE(r.ok()) << name << ": " << r.error().message();
      EXPECT_FALSE(r->empty());
    }
  }
  Bytes log = load(kTpm / "go-tpm-tools/extracted-gce-cos-85-nonce9009/event_log.bin");
  for (size_t n : {0ul, 8ul, 31ul, 40ul, 100ul, log.size() - 1}) {
    EXPECT_FALSE(parse_event_log(ByteView(log.data(), n)).ok()) << n;
  }
}

TEST(TpmQuote, TrusteeSwtpmQuoteVerifiesWithItsAk) {
  auto j = nlohmann::json::parse(as_chars(load(kTpm / "trustee_tpm_evidence.json")));
  auto spki = base64_decode(j["ak_public"].get<std::string>());
  auto msg = base64_decode(j["tpm_quote"]["message"].get<std::string>());
  auto sigb = base64_decode(j["tpm_quote"]["signature"].get<std::string>());
  ASSERT_TRUE(spki.ok() && msg.ok() && sigb.ok());
  auto ak = ak_from_spki(*spki);
  ASSERT_TRUE(ak.ok()) << ak.error().message();
  auto sig = parse_signature(*sigb);
  ASSERT_TRUE(sig.ok()) << sig.error().message();
  PcrBank bank;
  uint32_t i = 0;
  for (const auto& h : j["tpm_quote"]["pcrs"]) bank[i++] = *from_hex(h.get<std::string>());
  auto attest = parse_attest(*msg);
  ASSERT_TRUE(attest.ok());
  EXPECT_EQ(attest->firmware_version, 0x2019102300163636u);  // libtpms / swtpm
  auto q = verify_quote(*msg, *sig, *ak, attest->extra_data, {{kAlgSha256, bank}});
  ASSERT_TRUE(q.ok()) << q.error().message();
}

TEST(TpmQuote, EverySingleByteFlipOfSignedDataIsRefused) {
  const auto& v = kVectors[0];
  AkKey ak = gce_ak(v.dir);
  auto d = kTpm / "go-tpm-tools" / v.dir;
  for (const auto& [bank, stem] : kBanks) {
    Bytes attest = load(d / (std::string(stem) + ".tpms_attest"));
    Bytes sigb = load(d / (std::string(stem) + ".tpmt_signature"));
    PcrBanks pcrs{{bank, load_pcrs(d / (std::string(stem) + "_pcrs.txt"))}};
    auto sig = parse_signature(sigb);
    ASSERT_TRUE(sig.ok());
    ASSERT_TRUE(verify_quote(attest, *sig, ak, v.nonce, pcrs).ok());
    for (size_t i = 0; i < attest.size(); ++i) {
      Bytes m = attest;
      m[i] ^= 0x01;
      EXPECT_FALSE(verify_quote(m, *sig, ak, v.nonce, pcrs).ok()) << stem << " attest byte " << i;
    }
    for (size_t i = 0; i < sigb.size(); ++i) {
      Bytes m = sigb;
      m[i] ^= 0x01;
      auto s = parse_signature(m);
      EXPECT_FALSE(s.ok() && verify_quote(attest, *s, ak, v.nonce, pcrs).ok()) << stem << " signature byte " << i;
    }
    for (auto& [idx, value] : pcrs[bank]) {
      for (size_t i = 0; i < value.size(); i += 5) {
        PcrBanks m = pcrs;
        m[bank][idx][i] ^= 0x01;
        EXPECT_FALSE(verify_quote(attest, *sig, ak, v.nonce, m).ok()) << stem << " PCR " << idx << " byte " << i;
      }
    }
    // The AK's key: any changed modulus byte breaks the signature. (Its other TPMT_PUBLIC fields are
    // bound by the AK certificate or the pinned AK, checked by the tpm verifier, see tpm_verifier_test.)
    Bytes pub = load(d / "ak_pub.tpmt_public");
    for (size_t i = pub.size() - 256; i < pub.size(); ++i) {
      Bytes m = pub;
      m[i] ^= 0x01;
      auto p = parse_public(m);
      if (!p.ok()) continue;
      auto k = ak_from_public(*p);
      if (!k.ok()) continue;
      EXPECT_FALSE(verify_quote(attest, *sig, *k, v.nonce, pcrs).ok()) << "ak_pub byte " << i;
    }
  }
}

TEST(TpmStructs, ParsersRefuseMalformedInput) {
  Bytes attest = load(kTpm / "go-tpm-tools/extracted-gce-cos-85-nonce9009/quote1_bank000b.tpms_attest");
  for (size_t n = 0; n < attest.size(); ++n) {
    auto r = parse_attest(ByteView(attest.data(), n));
    ASSERT_FALSE(r.ok()) << n;
  }
  Bytes extra = attest;
  extra.push_back(0);
  auto t = parse_attest(extra);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message().find("trailing"), std::string::npos);
  Bytes badmagic = attest;
  badmagic[0] = 0;
  EXPECT_EQ(parse_attest(badmagic).error().code(), ErrorCode::kSecurity);
  Bytes pub = load(kTpm / "go-tpm-tools/extracted-gce-cos-85-nonce9009/ak_pub.tpmt_public");
  for (size_t n = 0; n < pub.size(); ++n) ASSERT_FALSE(parse_public(ByteView(pub.data(), n)).ok()) << n;
  auto p = parse_public(pub);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->key_bits, 2048);
  // An unrestricted key is not accepted as an AK.
  Public unrestricted = *p;
  unrestricted.attributes &= ~kAttrRestricted;
  EXPECT_EQ(ak_from_public(unrestricted).error().code(), ErrorCode::kSecurity);
}

}  // namespace
}  // namespace veil::attest::tpm

namespace veil::attest::tpm {
namespace {

// The tpm verifier's AK-certificate path with the GCE vector: the AK certificate chains to the Google
// CA, so verification proceeds to the nonce, which is GCE's "9009" rather than SHA-256(report_data).
TEST(TpmVerifier, AkCertificatePathAndFailClosedOrder) {
  auto d = kTpm / "go-tpm-tools/extracted-gce-cos-85-nonce9009";
  Bundle b;
  b.ak_public = load(d / "ak_pub.tpmt_public");
  b.ak_cert = load(d / "ak_cert.der");
  b.quotes.push_back({load(d / "quote1_bank000b.tpms_attest"), load(d / "quote1_bank000b.tpmt_signature")});
  b.pcrs[kAlgSha256] = load_pcrs(d / "quote1_bank000b_pcrs.txt");
  b.event_log = load(d / "event_log.bin");
  Evidence ev{TeeType::kTpm, to_bytes(bundle_to_json(b))};
  auto round = bundle_from_json(as_chars(ev.data));
  ASSERT_TRUE(round.ok()) << round.error().message();
  EXPECT_EQ(round->ak_public, b.ak_public);

  const Verifier* v = verifier_for(TeeType::kTpm);
  ASSERT_NE(v, nullptr);
  Collateral ca;
  ca.items[kAkCaItem] = load(kTpm / "go-tpm-tools/ca-certs/tpm_ek_root_1.cer");
  Bytes inter = load(kTpm / "go-tpm-tools/ca-certs/tpm_ek_intermediate_2.crt");
  // The intermediate is PEM or DER; give the verifier a PEM bundle of both.
  auto certs_root = x509::parse_bundle(ca.items[kAkCaItem], "root");
  auto certs_inter = x509::parse_bundle(inter, "inter");
  ASSERT_TRUE(certs_root.ok() && certs_inter.ok());
  std::string pem;
  for (X509* c : {(*certs_root)[0].get(), (*certs_inter)[0].get()}) {
    Bytes der = x509::to_der(c);
    pem += "-----BEGIN CERTIFICATE-----\n" + base64_encode(der) + "\n-----END CERTIFICATE-----\n";
  }
  Collateral good;
  good.items[kAkCaItem] = to_bytes(pem);
  auto r = v->verify(ev, good, kPinned);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("extraData"), std::string::npos) << r.error().message();

  // The root alone cannot complete the chain: refused at the AK certificate.
  auto no_inter = v->verify(ev, ca, kPinned);
  ASSERT_FALSE(no_inter.ok());
  EXPECT_NE(no_inter.error().message().find("certificate chain"), std::string::npos) << no_inter.error().message();

  // A pinned AK that differs from the evidence's is refused before any quote is looked at.
  Collateral pinned;
  Bytes other = b.ak_public;
  other.back() ^= 1;
  pinned.items[kAkPublicItem] = other;
  auto p = v->verify(ev, pinned, kPinned);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message().find("pinned AK"), std::string::npos);

  // No anchor at all.
  EXPECT_EQ(v->verify(ev, Collateral{}, kPinned).error().code(), ErrorCode::kSecurity);
  // Malformed evidence is kCorrupt.
  EXPECT_EQ(v->verify(Evidence{TeeType::kTpm, to_bytes("{\"format\": 1}")}, good, kPinned).error().code(),
            ErrorCode::kUnsupported);
  EXPECT_EQ(v->verify(Evidence{TeeType::kTpm, to_bytes("not json")}, good, kPinned).error().code(),
            ErrorCode::kCorrupt);
}

TEST(TpmVerifier, RegistryHasEveryFormatOfThisPart) {
  for (TeeType t : {TeeType::kNitro, TeeType::kTpm, TeeType::kAzSnpVtpm, TeeType::kAzTdxVtpm}) {
    const Verifier* v = verifier_for(t);
    ASSERT_NE(v, nullptr) << tee_type_name(t);
    EXPECT_EQ(v->type(), t);
  }
  ProviderOptions opts;
  opts.nsm_device = "/nonexistent/nsm";
  opts.tpm_tcti = "device:/nonexistent/tpmrm0";
  EXPECT_EQ(make_provider("nitro", opts).error().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(make_provider("tpm", opts).error().code(), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace veil::attest::tpm
