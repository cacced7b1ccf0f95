// AWS Nitro attestation documents: the real evervault vectors (../shared/testdata/attestation/nitro),
// strict parsing, the chain to the pinned root, time, and single-byte mutations of the signed region.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "attest/cbor_value.h"
#include "attest/formats.h"
#include "attest/nitro_document.h"
#include "attest/tpm_x509.h"

namespace veil::attest {
namespace {

using namespace std::chrono;
const std::filesystem::path kDir = std::filesystem::path(VEIL_SHARED_DIR) / "testdata/attestation/nitro";

system_clock::time_point at_ms(int64_t ms) { return system_clock::time_point(milliseconds(ms)); }
constexpr int64_t kValidTs = 1665651482136;  // 2022-10-13T08:58:02.136Z, the document timestamp
constexpr int64_t kDebugTs = 1665582606081;  // 2022-10-12T13:50:06.081Z

Bytes load(const std::string& rel) {
  auto r = read_file(kDir / rel);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
  return r.ok() ? *r : Bytes{};
}

Bytes root_der() {
  auto certs = x509::parse_bundle(load("root.pem"), "root.pem");
  EXPECT_TRUE(certs.ok());
  return x509::to_der((*certs)[0].get());
}

std::string hex_of(const Claims& c, const std::string& name) {
  auto it = c.measurements.find(name);
  return it == c.measurements.end() ? "<absent>" : to_hex(it->second);
}

TEST(NitroDocument, ValidVectorVerifiesWithExpectedClaims) {
  Bytes doc = load("evervault/valid-attestation-doc-bytes");
  ASSERT_EQ(doc.size(), 4654u);
  auto claims = nitro::verify_document(doc, root_der(), at_ms(kValidTs));
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_EQ(claims->type, TeeType::kNitro);
  EXPECT_EQ(hex_of(*claims, "pcr0"),
            "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b");
  EXPECT_EQ(hex_of(*claims, "pcr1"),
            "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f");
  EXPECT_EQ(hex_of(*claims, "pcr2"),
            "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a");
  EXPECT_EQ(hex_of(*claims, "pcr8"),
            "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb");
  ASSERT_TRUE(claims->measurements.count("nonce"));
  EXPECT_EQ(claims->measurements.at("nonce").size(), 256u);
  EXPECT_FALSE(claims->measurements.count("user_data"));
  EXPECT_FALSE(claims->measurements.count("public_key"));
  EXPECT_FALSE(claims->debug);
  EXPECT_FALSE(claims->platform_id.empty());
  ASSERT_TRUE(claims->issued_at.has_value());
  EXPECT_EQ(*claims->issued_at, at_ms(kValidTs));
  EXPECT_EQ(claims->report_data, ReportData{});  // no 64-byte user_data: nothing bound
}

TEST(NitroDocument, DebugVectorVerifiesAndIsMarkedDebug) {
  auto claims = nitro::verify_document(load("evervault/debug-mode-attestation-doc-bytes"), root_der(), at_ms(kDebugTs));
  ASSERT_TRUE(claims.ok()) << claims.error().message();
  EXPECT_TRUE(claims->debug);
  EXPECT_EQ(hex_of(*claims, "pcr0"), std::string(96, '0'));
  EXPECT_EQ(as_chars(claims->measurements.at("public_key")), "my super secret key");
  EXPECT_EQ(as_chars(claims->measurements.at("user_data")), "hello, world!");
}

TEST(NitroDocument, TaggedFormVerifies) {
  Bytes doc = load("evervault/valid-attestation-doc-bytes");
  doc.insert(doc.begin(), 0xD2);  // tag 18
  auto parsed = nitro::parse_document(doc);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  EXPECT_TRUE(parsed->tagged);
  EXPECT_TRUE(nitro::verify_document(doc, root_der(), at_ms(kValidTs)).ok());
  doc[0] = 0xD1;  // tag 17 (COSE_Mac0) is refused
  auto bad = nitro::parse_document(doc);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
}

TEST(NitroDocument, RefusedOutsideCertificateValidity) {
  Bytes doc = load("evervault/valid-attestation-doc-bytes");
  // The leaf lives 08:57:59Z .. 11:58:02Z.
  auto late = nitro::verify_document(doc, root_der(), at_ms(kValidTs) + hours(4));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(late.error().message().find("expired"), std::string::npos) << late.error().message();
  auto early = nitro::verify_document(doc, root_der(), at_ms(kValidTs) - minutes(10));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code(), ErrorCode::kSecurity);
}

TEST(NitroDocument, RefusedWithAnotherRoot) {
  auto other = read_file(std::filesystem::path(VEIL_SHARED_DIR) /
                         "testdata/attestation/tpm/go-tpm-tools/ca-certs/tpm_ek_root_1.cer");
  ASSERT_TRUE(other.ok());
  auto r = nitro::verify_document(load("evervault/valid-attestation-doc-bytes"), *other, at_ms(kValidTs));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("cabundle[0]"), std::string::npos) << r.error().message();
}

TEST(NitroDocument, EverySingleByteFlipOfTheSignedRegionIsRefused) {
  Bytes doc = load("evervault/valid-attestation-doc-bytes");
  auto parsed = nitro::parse_document(doc);
  ASSERT_TRUE(parsed.ok());
  // Signed region: everything before the signature bstr (array head, protected, unprotected, payload).
  size_t sig_start = doc.size() - 96 - 2;  // 0x58 0x60 then 96 bytes
  ASSERT_EQ(doc[sig_start], 0x58);
  ASSERT_EQ(doc[sig_start + 1], 0x60);
  Bytes root = root_der();
  size_t refused = 0;
  for (size_t i = 0; i < sig_start; ++i) {
    Bytes m = doc;
    m[i] ^= 0x01;
    auto r = nitro::verify_document(m, root, at_ms(kValidTs));
    if (!r.ok()) ++refused;
    else ADD_FAILURE() << "flip at byte " << i << " still verifies";
  }
  EXPECT_EQ(refused, sig_start);
  // And the signature itself.
  for (size_t i = sig_start + 2; i < doc.size(); i += 7) {
    Bytes m = doc;
    m[i] ^= 0x80;
    EXPECT_FALSE(nitro::verify_document(m, root, at_ms(kValidTs)).ok()) << "signature byte " << i;
  }
}

TEST(NitroDocument, TruncationsAreCorruptNotCrashes) {
  Bytes doc = load("evervault/valid-attestation-doc-bytes");
  for (size_t n : {0ul, 1ul, 2ul, 10ul, 100ul, 1000ul, doc.size() - 1}) {
    auto r = nitro::parse_document(ByteView(doc.data(), n));
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << n;
  }
  Bytes extra = doc;
  extra.push_back(0);
  auto r = nitro::parse_document(extra);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("trailing"), std::string::npos);
}

TEST(NitroVerifier, UsesPinnedRootFromCollateral) {
  auto v = make_nitro_verifier();
  ASSERT_EQ(v->type(), TeeType::kNitro);
  Evidence ev{TeeType::kNitro, load("evervault/valid-attestation-doc-bytes")};
  Collateral none;
  auto missing = v->verify(ev, none, at_ms(kValidTs));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(missing.error().message().find("nitro_root"), std::string::npos);

  Collateral good;
  good.items["nitro_root"] = load("root.pem");
  auto ok = v->verify(ev, good, at_ms(kValidTs));
  ASSERT_TRUE(ok.ok()) << ok.error().message();

  Collateral wrong;
  wrong.items["nitro_root"] = *read_file(std::filesystem::path(VEIL_SHARED_DIR) /
                                         "testdata/attestation/tpm/go-tpm-tools/ca-certs/tpm_ek_root_1.cer");
  auto bad = v->verify(ev, wrong, at_ms(kValidTs));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(bad.error().message().find("fingerprint"), std::string::npos);
}

// ---- CBOR reader -------------------------------------------------------------------------------------

TEST(Cbor, ParsesNestedItemsAndRefusesAmbiguity) {
  // {"a": [1, -2, h'0102'], 3: null}
  Bytes ok = {0xA2, 0x61, 'a', 0x83, 0x01, 0x21, 0x42, 0x01, 0x02, 0x03, 0xF6};
  auto v = cbor::parse(ok, "t");
  ASSERT_TRUE(v.ok()) << v.error().message();
  ASSERT_NE(v->find("a"), nullptr);
  EXPECT_EQ(v->find("a")->items.size(), 3u);
  EXPECT_EQ(v->find("a")->items[1].num, 1u);  // -2 = -1 - 1
  ASSERT_NE(v->find_int(3), nullptr);
  EXPECT_EQ(v->find_int(3)->kind, cbor::Kind::kNull);

  Bytes dup = {0xA2, 0x01, 0x01, 0x01, 0x02};
  EXPECT_FALSE(cbor::parse(dup, "t").ok());
  Bytes indef = {0x9F, 0x01, 0xFF};
  EXPECT_FALSE(cbor::parse(indef, "t").ok());
  Bytes flt = {0xF9, 0x3C, 0x00};
  EXPECT_FALSE(cbor::parse(flt, "t").ok());
  Bytes huge_array = {0x9B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  auto h = cbor::parse(huge_array, "t");
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message().find("byte offset 0"), std::string::npos) << h.error().message();
  Bytes long_bstr = {0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00};
  EXPECT_FALSE(cbor::parse(long_bstr, "t").ok());
  Bytes deep(40, 0x81);
  deep.push_back(0x00);
  auto d = cbor::parse(deep, "t");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message().find("nesting"), std::string::npos);
}

TEST(Cbor, EncodersRoundTrip) {
  Bytes out;
  cbor::encode_array_head(out, 3);
  cbor::encode_text(out, "Signature1");
  cbor::encode_bytes(out, Bytes(300, 7));
  cbor::encode_uint(out, 70000);
  auto v = cbor::parse(out, "t");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->items[0].text(), "Signature1");
  EXPECT_EQ(v->items[1].bytes.size(), 300u);
  EXPECT_EQ(v->items[2].num, 70000u);
}

}  // namespace
}  // namespace veil::attest

namespace veil::attest {
namespace {

TEST(NitroProvider, NsmMessagesAndAbsentDevice) {
  ReportData rd{};
  for (size_t i = 0; i < rd.size(); ++i) rd[i] = static_cast<uint8_t>(i);
  Bytes req = nitro::nsm_attestation_request(rd);
  ASSERT_LE(req.size(), nitro::kNsmRequestMax);
  auto v = cbor::parse(req, "request");
  ASSERT_TRUE(v.ok());
  const cbor::Value* att = v->find("Attestation");
  ASSERT_NE(att, nullptr);
  ASSERT_NE(att->find("user_data"), nullptr);
  EXPECT_TRUE(std::equal(rd.begin(), rd.end(), att->find("user_data")->bytes.begin()));
  EXPECT_EQ(att->find("nonce")->kind, cbor::Kind::kNull);

  // Responses: a document, an NSM error, and malformed ones.
  Bytes ok;
  cbor::encode_map_head(ok, 1);
  cbor::encode_text(ok, "Attestation");
  cbor::encode_map_head(ok, 1);
  cbor::encode_text(ok, "document");
  cbor::encode_bytes(ok, Bytes{1, 2, 3});
  auto doc = nitro::nsm_attestation_response(ok);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(*doc, (Bytes{1, 2, 3}));
  Bytes err;
  cbor::encode_map_head(err, 1);
  cbor::encode_text(err, "Error");
  cbor::encode_text(err, "InvalidArgument");
  auto e = nitro::nsm_attestation_response(err);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message().find("InvalidArgument"), std::string::npos);
  EXPECT_FALSE(nitro::nsm_attestation_response(Bytes{0xA0}).ok());
  EXPECT_FALSE(nitro::nsm_attestation_response(Bytes{0xFF}).ok());

  ProviderOptions opts;
  opts.nsm_device = "/nonexistent/nsm";
  auto p = make_nitro_provider(opts);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code(), ErrorCode::kUnsupported);
  // A device node that is not an NSM (here /dev/null) refuses the ioctl: no evidence, no crash.
  opts.nsm_device = "/dev/null";
  auto notnsm = make_nitro_provider(opts);
  ASSERT_TRUE(notnsm.ok());
  auto q = (*notnsm)->quote(rd);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ((*notnsm)->sealing_root().error().code(), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace veil::attest
