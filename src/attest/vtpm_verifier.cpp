// Azure confidential VM vTPM verifiers (az-snp-vtpm, az-tdx-vtpm); format and order of checks in
// vtpm_azure.h and docs/attestation-nitro-tpm.md.
#include <nlohmann/json.hpp>

#include "attest/tdx.h"
#include "attest/vtpm_azure.h"
#include "crypto/tpm_crypto.h"

namespace veil::attest::vtpm {
namespace {

using json = nlohmann::json;
using tpm::AkKey;

uint32_t le32(ByteView d, size_t off) {
  return uint32_t{d[off]} | uint32_t{d[off + 1]} << 8 | uint32_t{d[off + 2]} << 16 | uint32_t{d[off + 3]} << 24;
}

// base64 or base64url, padding optional.
Result<Bytes> b64_any(std::string_view text, std::string_view field) {
  std::string s(text);
  for (char& c : s) {
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
  }
  while (s.size() % 4 != 0) s.push_back('=');
  auto r = base64_decode(s);
  if (!r.ok()) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {}: not base64", field);
  return std::move(*r);
}

// A byte field: an array of 0..255 numbers, or a string in the given text encoding.
enum class Text { kHex, kBase64, kPemOrBase64 };
Result<Bytes> byte_field(const json& v, std::string_view field, Text text, size_t max) {
  Bytes out;
  if (v.is_array()) {
    if (v.size() > max) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {}: more than {} bytes", field, max);
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number_unsigned() || v[i].get<uint64_t>() > 255) {
        return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {}[{}] is not a byte", field, i);
      }
      out.push_back(static_cast<uint8_t>(v[i].get<uint64_t>()));
    }
    return out;
  }
  if (!v.is_string()) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {} is not bytes", field);
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > 2 * max + 64) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {} is too long", field);
  if (text == Text::kPemOrBase64 && s.find("-----BEGIN") != std::string::npos) return to_bytes(s);
  if (text == Text::kHex) {
    auto h = from_hex(s);
    if (!h.ok()) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: field {}: {}", field, h.error().message());
    return std::move(*h);
  }
  return b64_any(s, field);
}

Status check_keys(const json& obj, std::initializer_list<const char*> allowed, std::string_view where) {
  for (const auto& [key, _] : obj.items()) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || key == a;
    if (!ok) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: unknown field '{}{}'", where, key.substr(0, 32));
  }
  return ok_status();
}

// The vTPM AK from the runtime data's JWK set: keys[kid == "HCLAkPub"], kty RSA, n and e base64url.
Result<AkKey> ak_from_runtime_data(ByteView var_data) {
  json j = json::parse(as_chars(var_data), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(ErrorCode::kCorrupt, "HCL runtime data at byte offset 0x4D4 is not a JSON object");
  }
  auto keys = j.find("keys");
  if (keys == j.end() || !keys->is_array()) return make_error(ErrorCode::kCorrupt, "HCL runtime data: no \"keys\" array");
  const json* found = nullptr;
  for (const auto& k : *keys) {
    if (k.is_object() && k.contains("kid") && k["kid"] == "HCLAkPub") {
      if (found) return make_error(ErrorCode::kSecurity, "HCL runtime data: two HCLAkPub keys");
      found = &k;
    }
  }
  if (!found) return make_error(ErrorCode::kSecurity, "HCL runtime data: no key with kid \"HCLAkPub\"");
  if (!found->contains("kty") || (*found)["kty"] != "RSA" || !(*found)["n"].is_string() || !(*found)["e"].is_string()) {
    return make_error(ErrorCode::kUnsupported, "HCL runtime data: HCLAkPub is not an RSA JWK with n and e");
  }
  AkKey ak;
  ak.rsa = true;
  VEIL_ASSIGN_OR_RETURN(ak.modulus, b64_any((*found)["n"].get<std::string>(), "HCLAkPub.n"));
  VEIL_ASSIGN_OR_RETURN(ak.exponent, b64_any((*found)["e"].get<std::string>(), "HCLAkPub.e"));
  ak.scheme = tpm::kAlgRsassa;
  ak.scheme_hash = tpm::kAlgSha256;
  return ak;
}

}  // namespace

Result<AzEvidence> parse_evidence(ByteView data) {
  if (data.size() > kMaxEvidenceSize) {
    return make_error(ErrorCode::kCorrupt, "az vTPM evidence: {} bytes exceeds the limit of {}", data.size(),
                      kMaxEvidenceSize);
  }
  json j = json::parse(as_chars(data), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: not a JSON object");
  VEIL_TRY(check_keys(j, {"version", "quote", "tpm_quote", "report", "hcl_report", "vcek", "td_quote", "report_data"}, ""));
  if (j.contains("version") && (!j["version"].is_number_unsigned() || j["version"].get<uint64_t>() > 2)) {
    return make_error(ErrorCode::kUnsupported, "az vTPM evidence: version is not 0, 1 or 2");
  }
  AzEvidence ev;
  const json* quote = j.contains("tpm_quote") ? &j["tpm_quote"] : j.contains("quote") ? &j["quote"] : nullptr;
  if (!quote || !quote->is_object()) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: tpm_quote is missing");
  VEIL_TRY(check_keys(*quote, {"signature", "message", "pcrs"}, "tpm_quote."));
  if (!quote->contains("signature") || !quote->contains("message") || !quote->contains("pcrs")) {
    return make_error(ErrorCode::kCorrupt, "az vTPM evidence: tpm_quote needs signature, message and pcrs");
  }
  VEIL_ASSIGN_OR_RETURN(ev.tpm_signature, byte_field((*quote)["signature"], "tpm_quote.signature", Text::kHex, 512));
  VEIL_ASSIGN_OR_RETURN(ev.tpm_message, byte_field((*quote)["message"], "tpm_quote.message", Text::kHex, 4096));
  const json& pcrs = (*quote)["pcrs"];
  if (!pcrs.is_array() || pcrs.size() != 24) {
    return make_error(ErrorCode::kCorrupt, "az vTPM evidence: tpm_quote.pcrs must list 24 SHA-256 PCRs");
  }
  for (size_t i = 0; i < pcrs.size(); ++i) {
    VEIL_ASSIGN_OR_RETURN(Bytes v, byte_field(pcrs[i], fmt::format("tpm_quote.pcrs[{}]", i), Text::kHex, 32));
    ev.pcrs.push_back(std::move(v));
  }
  const json* hcl = j.contains("hcl_report") ? &j["hcl_report"] : j.contains("report") ? &j["report"] : nullptr;
  if (!hcl) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: hcl_report is missing");
  VEIL_ASSIGN_OR_RETURN(ev.hcl_report, byte_field(*hcl, "hcl_report", Text::kBase64, 16384));
  if (j.contains("vcek")) {
    VEIL_ASSIGN_OR_RETURN(Bytes v, byte_field(j["vcek"], "vcek", Text::kPemOrBase64, 16384));
    ev.vcek = std::move(v);
  }
  if (j.contains("td_quote")) {
    VEIL_ASSIGN_OR_RETURN(Bytes q, byte_field(j["td_quote"], "td_quote", Text::kBase64, 65536));
    ev.td_quote = std::move(q);
  }
  if (j.contains("report_data")) {
    VEIL_ASSIGN_OR_RETURN(Bytes rd, byte_field(j["report_data"], "report_data", Text::kHex, 64));
    if (rd.size() != 64) return make_error(ErrorCode::kCorrupt, "az vTPM evidence: report_data must be 64 bytes");
    ReportData r;
    std::copy(rd.begin(), rd.end(), r.begin());
    ev.report_data = r;
  }
  return ev;
}

Result<HclReport> parse_hcl_report(ByteView d) {
  if (d.size() < kHclVarDataOffset || d.size() > 16384) {
    return make_error(ErrorCode::kCorrupt, "HCL report: {} bytes (at least {} needed)", d.size(), kHclVarDataOffset);
  }
  if (std::string_view(as_chars(d.subspan(0, 4))) != "HCLA") {
    return make_error(ErrorCode::kCorrupt, "HCL report: byte offset 0: signature is not \"HCLA\"");
  }
  HclReport h;
  h.version = le32(d, 4);
  uint32_t data_size = le32(d, kHclIgvmOffset);
  h.report_type = le32(d, kHclIgvmOffset + 8);
  h.hash_type = le32(d, kHclIgvmOffset + 12);
  uint32_t var_size = le32(d, kHclIgvmOffset + 16);
  if (h.report_type != 2 && h.report_type != 4) {
    return make_error(ErrorCode::kUnsupported, "HCL report: byte offset 0x4C8: report_type {} (2 SNP, 4 TDX)", h.report_type);
  }
  if (h.hash_type < 1 || h.hash_type > 3) {
    return make_error(ErrorCode::kUnsupported, "HCL report: byte offset 0x4CC: hash_type {} (1..3)", h.hash_type);
  }
  if (var_size > d.size() - kHclVarDataOffset) {
    return make_error(ErrorCode::kCorrupt, "HCL report: byte offset 0x4D0: var_size {} runs past the report ({} bytes)",
                      var_size, d.size());
  }
  if (data_size != var_size + 20) {
    return make_error(ErrorCode::kCorrupt, "HCL report: byte offset 0x4C0: data_size {} is not var_size + 20", data_size);
  }
  h.hw_report = d.subspan(kHclHwReportOffset, h.report_type == 2 ? 1184 : 1024);
  h.var_data = d.subspan(kHclVarDataOffset, var_size);
  return h;
}

Result<Claims> verify_after_hardware(const AzEvidence& ev, const HclReport& hcl, const ReportData& hw_report_data) {
  // 1. The hardware report binds the runtime data: report_data = H(var_data) || zeros.
  crypto::DigestAlg alg = hcl.hash_type == 1 ? crypto::DigestAlg::kSha256
                          : hcl.hash_type == 2 ? crypto::DigestAlg::kSha384 : crypto::DigestAlg::kSha512;
  Bytes expect = crypto::digest(alg, hcl.var_data);
  expect.resize(64, 0);
  if (!ct_equal(expect, hw_report_data)) {
    return make_error(ErrorCode::kSecurity,
                      "az vTPM: the hardware report's report_data is not the {} of the HCL runtime data",
                      crypto::digest_name(alg));
  }
  // 2. The vTPM AK is the runtime data's HCLAkPub.
  VEIL_ASSIGN_OR_RETURN(AkKey ak, ak_from_runtime_data(hcl.var_data));
  // 3. The quote: RSASSA-PKCS1-v1_5 / SHA-256 by the AK, nonce, PCR digest.
  tpm::Signature sig;
  sig.sig_alg = tpm::kAlgRsassa;
  sig.hash_alg = tpm::kAlgSha256;
  sig.rsa = ev.tpm_signature;
  VEIL_ASSIGN_OR_RETURN(tpm::Attest attest, tpm::parse_attest(ev.tpm_message));
  Bytes nonce = attest.extra_data;
  ReportData report_data{};
  if (ev.report_data) {
    auto h = crypto::sha256(*ev.report_data);
    nonce.assign(h.begin(), h.end());
    report_data = *ev.report_data;
  } else {
    std::copy(attest.extra_data.begin(), attest.extra_data.end(), report_data.begin());  // <= 64 by the parser
  }
  tpm::PcrBanks banks;
  for (size_t i = 0; i < ev.pcrs.size(); ++i) banks[tpm::kAlgSha256][static_cast<uint32_t>(i)] = ev.pcrs[i];
  VEIL_ASSIGN_OR_RETURN(tpm::VerifiedQuote q, tpm::verify_quote(ev.tpm_message, sig, ak, nonce, banks));
  Claims claims;
  claims.report_data = report_data;
  for (const auto& [idx, v] : q.quoted[tpm::kAlgSha256]) claims.measurements[fmt::format("pcr{}", idx)] = v;
  claims.svns["tpm_firmware_version"] = q.attest.firmware_version;
  return claims;
}

namespace {

Result<Claims> merge(Claims hw, Claims tpm_claims, TeeType type) {
  for (auto& [name, v] : tpm_claims.measurements) {
    if (hw.measurements.count(name)) {
      return make_error(ErrorCode::kInternal, "az vTPM: measurement name {} used by both reports", name);
    }
    hw.measurements[name] = std::move(v);
  }
  for (auto& [name, v] : tpm_claims.svns) hw.svns[name] = v;
  hw.type = type;
  hw.report_data = tpm_claims.report_data;
  return hw;
}

class AzSnpVtpmVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kAzSnpVtpm; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral, TimePoint now) const override {
    if (evidence.type != TeeType::kAzSnpVtpm) {
      return make_error(ErrorCode::kInvalidArgument, "az-snp-vtpm verifier: evidence type is {}",
                        tee_type_name(evidence.type));
    }
    VEIL_ASSIGN_OR_RETURN(AzEvidence ev, parse_evidence(evidence.data));
    VEIL_ASSIGN_OR_RETURN(HclReport hcl, parse_hcl_report(ev.hcl_report));
    if (hcl.report_type != 2) return make_error(ErrorCode::kSecurity, "az-snp-vtpm: HCL report is not an SNP report");
    Collateral coll = collateral;
    if (ev.vcek && !coll.find(item::kVcek)) coll.items[item::kVcek] = *ev.vcek;  // chain checked to the pinned ARK
    auto hw = verify_snp_report(hcl.hw_report, coll, now);
    if (!hw.ok()) return Error(hw.error()).wrap("az-snp-vtpm: SNP report in the HCL report");
    VEIL_ASSIGN_OR_RETURN(Claims tpm_claims, verify_after_hardware(ev, hcl, hw->report_data));
    return merge(std::move(*hw), std::move(tpm_claims), TeeType::kAzSnpVtpm);
  }
};

class AzTdxVtpmVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kAzTdxVtpm; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral, TimePoint now) const override {
    if (evidence.type != TeeType::kAzTdxVtpm) {
      return make_error(ErrorCode::kInvalidArgument, "az-tdx-vtpm verifier: evidence type is {}",
                        tee_type_name(evidence.type));
    }
    VEIL_ASSIGN_OR_RETURN(AzEvidence ev, parse_evidence(evidence.data));
    if (!ev.td_quote) return make_error(ErrorCode::kCorrupt, "az-tdx-vtpm evidence: td_quote is missing");
    VEIL_ASSIGN_OR_RETURN(HclReport hcl, parse_hcl_report(ev.hcl_report));
    if (hcl.report_type != 4) return make_error(ErrorCode::kSecurity, "az-tdx-vtpm: HCL report is not a TDX report");
    auto hw = verify_tdx_quote(*ev.td_quote, collateral, now);
    if (!hw.ok()) return Error(hw.error()).wrap("az-tdx-vtpm: TD quote");
    // The TDREPORT in the HCL report (MAC-protected, not checkable off the platform) must agree with
    // the signed quote's report_data.
    if (!ct_equal(hcl.hw_report.subspan(0x80, 64), hw->report_data)) {
      return make_error(ErrorCode::kSecurity, "az-tdx-vtpm: TDREPORT report_data differs from the TD quote's");
    }
    VEIL_ASSIGN_OR_RETURN(Claims tpm_claims, verify_after_hardware(ev, hcl, hw->report_data));
    return merge(std::move(*hw), std::move(tpm_claims), TeeType::kAzTdxVtpm);
  }
};

}  // namespace
}  // namespace veil::attest::vtpm

namespace veil::attest {
std::unique_ptr<Verifier> make_az_snp_vtpm_verifier() { return std::make_unique<vtpm::AzSnpVtpmVerifier>(); }
std::unique_ptr<Verifier> make_az_tdx_vtpm_verifier() { return std::make_unique<vtpm::AzTdxVtpmVerifier>(); }
}  // namespace veil::attest
