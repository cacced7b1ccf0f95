// Intel TDX DCAP quote v4/v5 verification. Order of checks and spec sections: docs/attestation.md.
#include "attest/tdx.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "attest/pki.h"
#include "crypto/crypto.h"

namespace veil::attest {

namespace {

using json = nlohmann::json;

constexpr size_t kHeaderSize = 0x30;
constexpr size_t kTd10Size = 584;
constexpr size_t kTd15Size = 648;
constexpr size_t kQeReportSize = 384;
constexpr uint8_t kIntelQeVendor[16] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                        0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};
// SHA-256 of the DER encoding of the Intel SGX Root CA (CN=Intel SGX Root CA, 2018-05-21 .. 2049-12-31).
constexpr const char* kIntelRootSha256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";
constexpr const char* kSgxExtensionOid = "1.2.840.113741.1.13.1";

uint16_t le16(ByteView b, size_t o) { return static_cast<uint16_t>(b[o] | (b[o + 1] << 8)); }
uint32_t le32(ByteView b, size_t o) {
  return static_cast<uint32_t>(b[o]) | (static_cast<uint32_t>(b[o + 1]) << 8) | (static_cast<uint32_t>(b[o + 2]) << 16) |
         (static_cast<uint32_t>(b[o + 3]) << 24);
}
Bytes slice(ByteView b, size_t o, size_t n) { return Bytes(b.begin() + o, b.begin() + o + n); }

Error corrupt(std::string_view field, size_t offset, std::string_view why) {
  return Error(ErrorCode::kCorrupt, fmt::format("TDX quote: field '{}' at byte {}: {}", field, offset, why));
}
Error refuse(std::string why) { return Error(ErrorCode::kSecurity, "TDX quote: " + why); }

// ---- collateral JSON: the exact signed bytes of "tcbInfo" / "enclaveIdentity" ------------------------

// Skips one JSON value starting at s[i] (after whitespace); returns the index after it or npos.
size_t skip_ws(std::string_view s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  return i;
}
size_t skip_value(std::string_view s, size_t i) {
  i = skip_ws(s, i);
  if (i >= s.size()) return std::string_view::npos;
  int depth = 0;
  bool in_string = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') {
        in_string = false;
        if (depth == 0) return i + 1;
      }
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') ++depth;
    else if (c == '}' || c == ']') {
      if (--depth < 0) return std::string_view::npos;
      if (depth == 0) return i + 1;
    } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
      return i;
    }
  }
  return depth == 0 && !in_string ? i : std::string_view::npos;
}

// The raw text of the value of top-level key `key` in a JSON object, or nullopt.
std::optional<std::string_view> raw_member(std::string_view s, std::string_view key) {
  size_t i = skip_ws(s, 0);
  if (i >= s.size() || s[i] != '{') return std::nullopt;
  ++i;
  while (true) {
    i = skip_ws(s, i);
    if (i >= s.size() || s[i] != '"') return std::nullopt;
    size_t kend = skip_value(s, i);
    if (kend == std::string_view::npos) return std::nullopt;
    std::string_view k = s.substr(i + 1, kend - i - 2);
    i = skip_ws(s, kend);
    if (i >= s.size() || s[i] != ':') return std::nullopt;
    size_t vstart = skip_ws(s, i + 1);
    size_t vend = skip_value(s, vstart);
    if (vend == std::string_view::npos) return std::nullopt;
    if (k == key) return s.substr(vstart, vend - vstart);
    i = skip_ws(s, vend);
    if (i < s.size() && s[i] == ',') {
      ++i;
      continue;
    }
    return std::nullopt;
  }
}

struct SignedJson {
  std::string body;   // exact signed bytes
  Bytes signature;    // 64 bytes r || s
  json value;         // parsed body
};

// Reads a signed collateral document: either the body in item `name` with its signature in
// `name`_signature, or Intel PCS's response {"<key>": {...}, "signature": "hex"} in item `name`.
Result<SignedJson> load_signed_json(const Collateral& c, const char* name, const char* sig_name, const char* pcs_key) {
  const Bytes* doc = c.find(name);
  if (doc == nullptr) return make_error(ErrorCode::kSecurity, "TDX collateral item '{}' is missing", name);
  SignedJson out;
  std::string_view text = as_chars(*doc);
  const Bytes* sig = c.find(sig_name);
  if (sig == nullptr) {
    auto body = raw_member(text, pcs_key);
    auto sig_text = raw_member(text, "signature");
    if (!body || !sig_text || sig_text->size() < 2)
      return make_error(ErrorCode::kCorrupt, "TDX collateral item '{}': no '{}' and 'signature' members and no item '{}'", name,
                        pcs_key, sig_name);
    out.body = std::string(*body);
    auto s = from_hex(sig_text->substr(1, sig_text->size() - 2));
    if (!s.ok()) return make_error(ErrorCode::kCorrupt, "TDX collateral item '{}': field 'signature' is not hex", name);
    out.signature = std::move(*s);
  } else {
    out.body = std::string(text);
    if (sig->size() == 128) {
      auto s = from_hex(as_chars(*sig));
      if (s.ok()) out.signature = std::move(*s);
    }
    if (out.signature.empty()) out.signature = *sig;
  }
  if (out.signature.size() != 64)
    return make_error(ErrorCode::kCorrupt, "TDX collateral item '{}': signature is {} bytes, expected 64 (r || s)", sig_name,
                      out.signature.size());
  out.value = json::parse(out.body, nullptr, false);
  if (out.value.is_discarded() || !out.value.is_object())
    return make_error(ErrorCode::kCorrupt, "TDX collateral item '{}': not a JSON object", name);
  return out;
}

// Verifies a signed collateral document against its issuer chain (signing cert -> pinned root).
Status verify_signed_json(const SignedJson& doc, const Collateral& c, const char* name, const char* chain_name, X509_CRL* root_crl,
                          TimePoint now) {
  const Bytes* chain_pem = c.find(chain_name);
  if (chain_pem == nullptr) return make_error(ErrorCode::kSecurity, "TDX collateral item '{}' is missing", chain_name);
  VEIL_ASSIGN_OR_RETURN(auto chain, pki::parse_pem_chain(*chain_pem, fmt::format("TDX collateral item '{}'", chain_name)));
  if (chain.size() < 2) return make_error(ErrorCode::kSecurity, "TDX collateral item '{}': expected the signing certificate and the root", chain_name);
  X509* root = chain.back().get();
  if (to_hex(pki::cert_sha256(root)) != kIntelRootSha256)
    return make_error(ErrorCode::kSecurity, "TDX collateral item '{}' does not end in the Intel SGX Root CA (fingerprint mismatch)", chain_name);
  std::vector<X509*> inter;
  for (size_t i = 1; i + 1 < chain.size(); ++i) inter.push_back(chain[i].get());
  std::vector<X509_CRL*> crls;
  if (root_crl != nullptr) crls.push_back(root_crl);
  VEIL_TRY(pki::verify_chain(chain[0].get(), inter, root, crls, now, fmt::format("TDX collateral item '{}'", chain_name)));
  VEIL_ASSIGN_OR_RETURN(Bytes key, pki::ec_public_point(chain[0].get(), 32, chain_name));
  auto digest = crypto::sha256(as_bytes(doc.body));
  if (!crypto::ecdsa_verify_digest(crypto::EcCurve::kP256, key, digest, ByteView(doc.signature).subspan(0, 32),
                                   ByteView(doc.signature).subspan(32, 32))
           .ok())
    return make_error(ErrorCode::kSecurity, "TDX collateral item '{}': signature does not verify with the '{}' certificate", name,
                      chain_name);
  return ok_status();
}

Result<std::string> jstr(const json& j, const char* key, std::string_view where) {
  if (!j.contains(key) || !j[key].is_string())
    return make_error(ErrorCode::kCorrupt, "TDX collateral {}: field '{}' missing or not a string", where, key);
  return j[key].get<std::string>();
}
Result<uint64_t> juint(const json& j, const char* key, std::string_view where) {
  if (!j.contains(key) || !j[key].is_number_unsigned())
    return make_error(ErrorCode::kCorrupt, "TDX collateral {}: field '{}' missing or not an unsigned integer", where, key);
  return j[key].get<uint64_t>();
}
Result<Bytes> jhex(const json& j, const char* key, std::string_view where, size_t len) {
  VEIL_ASSIGN_OR_RETURN(std::string s, jstr(j, key, where));
  auto b = from_hex(s);
  if (!b.ok() || b->size() != len)
    return make_error(ErrorCode::kCorrupt, "TDX collateral {}: field '{}' is not {} bytes of hex", where, key, len);
  return std::move(*b);
}

Status check_validity(const json& j, std::string_view where, TimePoint now) {
  VEIL_ASSIGN_OR_RETURN(std::string issue, jstr(j, "issueDate", where));
  VEIL_ASSIGN_OR_RETURN(std::string next, jstr(j, "nextUpdate", where));
  auto ti = parse_time(issue);
  auto tn = parse_time(next);
  if (!ti.ok() || !tn.ok()) return make_error(ErrorCode::kCorrupt, "TDX collateral {}: bad issueDate or nextUpdate", where);
  if (now < *ti) return make_error(ErrorCode::kSecurity, "TDX collateral {} is not yet valid (issueDate {}, now {})", where, issue, format_time(now));
  if (now >= *tn) return make_error(ErrorCode::kSecurity, "TDX collateral {} has expired (nextUpdate {}, now {})", where, next, format_time(now));
  return ok_status();
}

// ---- PCK certificate SGX extension ---------------------------------------------------------------

struct PckTcb {
  Bytes ppid, fmspc, pce_id;
  std::array<uint64_t, 16> comp{};
  uint64_t pce_svn = 0;
  bool have_tcb = false;
};

Result<PckTcb> parse_pck_extension(X509* leaf) {
  auto ext = pki::extension_value(leaf, kSgxExtensionOid);
  constexpr std::string_view what = "PCK certificate SGX extension";
  if (!ext) return refuse("PCK certificate has no SGX extension (1.2.840.113741.1.13.1)");
  ByteView in(*ext);
  VEIL_ASSIGN_OR_RETURN(auto seq, pki::der_next(in, what));
  if (seq.tag != 0x30) return make_error(ErrorCode::kCorrupt, "{}: not a SEQUENCE", what);
  PckTcb out;
  ByteView items = seq.content;
  const std::string base = kSgxExtensionOid;
  while (!items.empty()) {
    VEIL_ASSIGN_OR_RETURN(auto entry, pki::der_next(items, what));
    ByteView e = entry.content;
    VEIL_ASSIGN_OR_RETURN(auto oid, pki::der_next(e, what));
    VEIL_ASSIGN_OR_RETURN(auto val, pki::der_next(e, what));
    if (oid.tag != 0x06) return make_error(ErrorCode::kCorrupt, "{}: entry without an OID", what);
    std::string o = pki::der_oid_text(oid.content);
    if (o == base + ".1") out.ppid.assign(val.content.begin(), val.content.end());
    else if (o == base + ".3") out.pce_id.assign(val.content.begin(), val.content.end());
    else if (o == base + ".4") out.fmspc.assign(val.content.begin(), val.content.end());
    else if (o == base + ".2") {
      ByteView tcb = val.content;
      std::array<bool, 17> seen{};
      while (!tcb.empty()) {
        VEIL_ASSIGN_OR_RETURN(auto t, pki::der_next(tcb, what));
        ByteView te = t.content;
        VEIL_ASSIGN_OR_RETURN(auto toid, pki::der_next(te, what));
        VEIL_ASSIGN_OR_RETURN(auto tval, pki::der_next(te, what));
        std::string to = pki::der_oid_text(toid.content);
        std::string prefix = base + ".2.";
        if (!to.starts_with(prefix)) continue;
        int idx = std::atoi(to.c_str() + prefix.size());
        if (idx >= 1 && idx <= 17) {
          if (tval.tag != 0x02) return make_error(ErrorCode::kCorrupt, "{}: TCB component {} is not an INTEGER", what, idx);
          VEIL_ASSIGN_OR_RETURN(uint64_t v, pki::der_uint(tval.content, what));
          if (idx == 17) out.pce_svn = v;
          else out.comp[idx - 1] = v;
          seen[idx - 1] = true;
        }
      }
      out.have_tcb = std::all_of(seen.begin(), seen.end(), [](bool b) { return b; });
    }
  }
  if (out.fmspc.size() != 6 || !out.have_tcb || out.pce_id.size() != 2)
    return make_error(ErrorCode::kCorrupt, "{}: FMSPC, PCE-ID or TCB components missing", what);
  return out;
}

// ---- TCB status ------------------------------------------------------------------------------------

int status_rank(const std::string& s) {
  static const char* kOrder[] = {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                                 "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"};
  for (int i = 0; i < 7; ++i)
    if (s == kOrder[i]) return i;
  return -1;
}

// Folds the QE identity status or the TDX module status into the platform TCB status (Intel QVL).
std::string merge_status(const std::string& platform, const std::string& other) {
  if (other == "UpToDate") return platform;
  if (other == "Revoked" || platform == "Revoked") return "Revoked";
  if (other == "OutOfDate") {
    if (platform == "ConfigurationNeeded" || platform == "ConfigurationAndSWHardeningNeeded" ||
        platform == "OutOfDateConfigurationNeeded")
      return "OutOfDateConfigurationNeeded";
    return "OutOfDate";
  }
  return status_rank(other) > status_rank(platform) ? other : platform;
}

Result<std::string> level_status(const json& level, std::string_view where) {
  VEIL_ASSIGN_OR_RETURN(std::string s, jstr(level, "tcbStatus", where));
  if (status_rank(s) < 0) return make_error(ErrorCode::kCorrupt, "TDX collateral {}: unknown tcbStatus '{}'", where, s.substr(0, 40));
  return s;
}

Result<std::array<uint64_t, 16>> components(const json& tcb, const char* key, std::string_view where) {
  std::array<uint64_t, 16> out{};
  if (!tcb.contains(key) || !tcb[key].is_array() || tcb[key].size() != 16)
    return make_error(ErrorCode::kCorrupt, "TDX collateral {}: '{}' is not an array of 16 components", where, key);
  for (size_t i = 0; i < 16; ++i) {
    const json& c = tcb[key][i];
    if (!c.is_object()) return make_error(ErrorCode::kCorrupt, "TDX collateral {}: '{}[{}]' is not an object", where, key, i);
    VEIL_ASSIGN_OR_RETURN(out[i], juint(c, "svn", where));
  }
  return out;
}

struct TcbResult {
  std::string status;
  uint64_t eval_number = 0;
};

Result<TcbResult> tdx_tcb_status(const json& info, const PckTcb& pck, const TdxQuote& q) {
  constexpr std::string_view where = "tcb_info";
  TcbResult r;
  VEIL_ASSIGN_OR_RETURN(r.eval_number, juint(info, "tcbEvaluationDataNumber", where));
  if (!info.contains("tcbLevels") || !info["tcbLevels"].is_array())
    return make_error(ErrorCode::kCorrupt, "TDX collateral tcb_info: 'tcbLevels' missing");
  std::string platform;
  for (const json& level : info["tcbLevels"]) {
    if (!level.is_object() || !level.contains("tcb") || !level["tcb"].is_object())
      return make_error(ErrorCode::kCorrupt, "TDX collateral tcb_info: a tcbLevel has no 'tcb' object");
    const json& tcb = level["tcb"];
    VEIL_ASSIGN_OR_RETURN(auto sgx, components(tcb, "sgxtcbcomponents", where));
    VEIL_ASSIGN_OR_RETURN(auto tdx, components(tcb, "tdxtcbcomponents", where));
    VEIL_ASSIGN_OR_RETURN(uint64_t pcesvn, juint(tcb, "pcesvn", where));
    bool match = pck.pce_svn >= pcesvn;
    for (size_t i = 0; i < 16 && match; ++i) match = pck.comp[i] >= sgx[i];
    // With a TDX module version (TEE_TCB_SVN[1] > 0) the module's own SVN bytes 0..1 are judged by
    // its tdxModuleIdentities entry below (Intel QVL TcbLevelCheck), not by the platform levels.
    for (size_t i = q.tee_tcb_svn[1] > 0 ? 2 : 0; i < 16 && match; ++i) match = q.tee_tcb_svn[i] >= tdx[i];
    if (match) {
      VEIL_ASSIGN_OR_RETURN(platform, level_status(level, where));
      break;
    }
  }
  if (platform.empty())
    return refuse(fmt::format("TCB status: no matching TCB level in tcb_info for FMSPC {} (platform TCB is below every level)",
                              to_hex(pck.fmspc)));
  // TDX module: identity of the running module (TDX Module Identity, TCB Info v3).
  auto check_module = [&](const json& m, std::string_view mwhere) -> Status {
    VEIL_ASSIGN_OR_RETURN(Bytes mrsigner, jhex(m, "mrsigner", mwhere, 48));
    VEIL_ASSIGN_OR_RETURN(Bytes attrs, jhex(m, "attributes", mwhere, 8));
    VEIL_ASSIGN_OR_RETURN(Bytes mask, jhex(m, "attributesMask", mwhere, 8));
    if (mrsigner != q.mr_signer_seam) return refuse(fmt::format("MRSIGNERSEAM does not match the {} of tcb_info", mwhere));
    for (size_t i = 0; i < 8; ++i)
      if ((q.seam_attributes[i] & mask[i]) != attrs[i])
        return refuse(fmt::format("SEAMATTRIBUTES do not match the {} of tcb_info", mwhere));
    return ok_status();
  };
  uint8_t module_version = q.tee_tcb_svn[1];
  if (module_version == 0) {
    if (!info.contains("tdxModule") || !info["tdxModule"].is_object())
      return make_error(ErrorCode::kCorrupt, "TDX collateral tcb_info: 'tdxModule' missing");
    VEIL_TRY(check_module(info["tdxModule"], "tdxModule"));
    r.status = platform;
  } else {
    std::string id = fmt::format("TDX_{:02X}", module_version);
    const json* ident = nullptr;
    if (info.contains("tdxModuleIdentities") && info["tdxModuleIdentities"].is_array())
      for (const json& m : info["tdxModuleIdentities"])
        if (m.is_object() && m.contains("id") && m["id"].is_string() && m["id"].get<std::string>() == id) ident = &m;
    if (ident == nullptr) return refuse(fmt::format("TCB status: tcb_info has no TDX module identity {}", id));
    VEIL_TRY(check_module(*ident, "tdxModuleIdentities " + id));
    std::string module_status;
    if ((*ident).contains("tcbLevels") && (*ident)["tcbLevels"].is_array())
      for (const json& level : (*ident)["tcbLevels"]) {
        if (!level.is_object() || !level.contains("tcb") || !level["tcb"].is_object()) continue;
        VEIL_ASSIGN_OR_RETURN(uint64_t isvsvn, juint(level["tcb"], "isvsvn", "tdxModuleIdentities"));
        if (q.tee_tcb_svn[0] >= isvsvn) {
          VEIL_ASSIGN_OR_RETURN(module_status, level_status(level, "tdxModuleIdentities"));
          break;
        }
      }
    if (module_status.empty()) return refuse(fmt::format("TCB status: no matching TCB level for TDX module {}", id));
    r.status = merge_status(platform, module_status);
  }
  return r;
}

Result<std::string> qe_identity_status(const json& qi, const Bytes& qe_report, uint16_t* isvsvn_out) {
  constexpr std::string_view where = "qe_identity";
  VEIL_ASSIGN_OR_RETURN(std::string id, jstr(qi, "id", where));
  if (id != "TD_QE") return refuse(fmt::format("qe_identity id is '{}', expected TD_QE", id.substr(0, 20)));
  VEIL_ASSIGN_OR_RETURN(Bytes mrsigner, jhex(qi, "mrsigner", where, 32));
  VEIL_ASSIGN_OR_RETURN(uint64_t prodid, juint(qi, "isvprodid", where));
  VEIL_ASSIGN_OR_RETURN(Bytes misc, jhex(qi, "miscselect", where, 4));
  VEIL_ASSIGN_OR_RETURN(Bytes misc_mask, jhex(qi, "miscselectMask", where, 4));
  VEIL_ASSIGN_OR_RETURN(Bytes attrs, jhex(qi, "attributes", where, 16));
  VEIL_ASSIGN_OR_RETURN(Bytes attrs_mask, jhex(qi, "attributesMask", where, 16));
  ByteView r(qe_report);
  if (!std::equal(mrsigner.begin(), mrsigner.end(), r.begin() + 0x80)) return refuse("QE report MRSIGNER does not match qe_identity");
  if (le16(r, 0x100) != prodid) return refuse("QE report ISVPRODID does not match qe_identity");
  // miscselect is a little-endian u32 in the report and big-endian hex in the identity.
  uint32_t misc_v = (uint32_t{misc[0]} << 24) | (uint32_t{misc[1]} << 16) | (uint32_t{misc[2]} << 8) | misc[3];
  uint32_t mask_v = (uint32_t{misc_mask[0]} << 24) | (uint32_t{misc_mask[1]} << 16) | (uint32_t{misc_mask[2]} << 8) | misc_mask[3];
  if ((le32(r, 0x10) & mask_v) != misc_v) return refuse("QE report MISCSELECT does not match qe_identity");
  for (size_t i = 0; i < 16; ++i)
    if ((r[0x30 + i] & attrs_mask[i]) != attrs[i]) return refuse("QE report ATTRIBUTES do not match qe_identity");
  uint16_t isvsvn = le16(r, 0x102);
  *isvsvn_out = isvsvn;
  if (!qi.contains("tcbLevels") || !qi["tcbLevels"].is_array())
    return make_error(ErrorCode::kCorrupt, "TDX collateral qe_identity: 'tcbLevels' missing");
  for (const json& level : qi["tcbLevels"]) {
    if (!level.is_object() || !level.contains("tcb") || !level["tcb"].is_object()) continue;
    VEIL_ASSIGN_OR_RETURN(uint64_t lv, juint(level["tcb"], "isvsvn", where));
    if (isvsvn >= lv) return level_status(level, where);
  }
  return refuse(fmt::format("QE identity: no matching TCB level for QE ISVSVN {}", isvsvn));
}


// Quote signature by the attestation key, QE report signature by the PCK leaf, and the QE report's
// binding of the attestation key.
Status check_quote_crypto(const TdxQuote& q, X509* pck_leaf) {
  Bytes att_key(65);
  att_key[0] = 0x04;
  std::memcpy(att_key.data() + 1, q.attestation_key.data(), 64);
  auto digest = crypto::sha256(q.signed_region);
  if (!crypto::ecdsa_verify_digest(crypto::EcCurve::kP256, att_key, digest, ByteView(q.signature).subspan(0, 32),
                                   ByteView(q.signature).subspan(32, 32)).ok())
    return refuse("quote signature does not verify with the attestation key");
  VEIL_ASSIGN_OR_RETURN(Bytes pck_key, pki::ec_public_point(pck_leaf, 32, "PCK certificate"));
  auto qe_digest = crypto::sha256(q.qe_report);
  if (!crypto::ecdsa_verify_digest(crypto::EcCurve::kP256, pck_key, qe_digest, ByteView(q.qe_report_signature).subspan(0, 32),
                                   ByteView(q.qe_report_signature).subspan(32, 32)).ok())
    return refuse("QE report signature does not verify with the PCK certificate key");
  Bytes bound(q.attestation_key);
  bound.insert(bound.end(), q.qe_auth_data.begin(), q.qe_auth_data.end());
  auto expect = crypto::sha256(bound);
  ByteView qe_rd = ByteView(q.qe_report).subspan(0x140, 64);
  if (!std::equal(expect.begin(), expect.end(), qe_rd.begin()) ||
      !std::all_of(qe_rd.begin() + 32, qe_rd.end(), [](uint8_t v) { return v == 0; }))
    return refuse("QE report data does not bind the attestation key (SHA-256(key || auth data) mismatch)");
  return ok_status();
}

// What every TDX verification starts with: the quote parses, its QE is Intel's, its PCK chain (leaf, CA, root) ends
// in the pinned Intel SGX Root CA, and the quote and QE report signatures hold with the chain's leaf.
struct SignedQuote {
  TdxQuote q;
  std::vector<pki::CertPtr> chain;  // leaf first, root last
  X509* leaf() const { return chain.front().get(); }
  X509* root() const { return chain.back().get(); }
  std::vector<X509*> intermediates() const {
    std::vector<X509*> v;
    for (size_t i = 1; i + 1 < chain.size(); ++i) v.push_back(chain[i].get());
    return v;
  }
};

Result<SignedQuote> check_signed_quote(ByteView quote) {
  SignedQuote s;
  VEIL_ASSIGN_OR_RETURN(s.q, parse_tdx_quote(quote));
  if (!std::equal(s.q.qe_vendor_id.begin(), s.q.qe_vendor_id.end(), kIntelQeVendor))
    return refuse("QE vendor id at byte 12 is not Intel's");
  VEIL_ASSIGN_OR_RETURN(s.chain, pki::parse_pem_chain(s.q.pck_chain_pem, "TDX quote PCK certificate chain"));
  if (s.chain.size() < 3)
    return refuse(fmt::format("PCK certificate chain has {} certificates, expected leaf, CA and root", s.chain.size()));
  if (to_hex(pki::cert_sha256(s.root())) != kIntelRootSha256)
    return refuse("PCK certificate chain does not end in the Intel SGX Root CA (fingerprint mismatch)");
  // Quote signature, QE report signature, attestation-key binding.
  VEIL_TRY(check_quote_crypto(s.q, s.leaf()));
  return s;
}

}  // namespace

Result<TdxQuote> parse_tdx_quote(ByteView d) {
  TdxQuote q;
  if (d.size() < kHeaderSize) return corrupt("header", 0, fmt::format("quote is {} bytes, shorter than the 48-byte header", d.size()));
  q.version = le16(d, 0);
  q.att_key_type = le16(d, 2);
  q.tee_type = le32(d, 4);
  q.qe_vendor_id = slice(d, 12, 16);
  if (q.version != 4 && q.version != 5) return Error(ErrorCode::kUnsupported, fmt::format("TDX quote: version {} at byte 0 (4 or 5 supported)", q.version));
  if (q.tee_type != 0x81) return corrupt("tee_type", 4, fmt::format("0x{:x} is not TDX (0x81)", q.tee_type));
  if (q.att_key_type != 2) return Error(ErrorCode::kUnsupported, fmt::format("TDX quote: attestation key type {} at byte 2 (2 = ECDSA-P256 supported)", q.att_key_type));
  size_t body_size = kTd10Size;
  if (q.version == 4) {
    q.body_offset = kHeaderSize;
  } else {
    if (d.size() < kHeaderSize + 6) return corrupt("body_type", 0x30, "truncated");
    q.body_type = le16(d, 0x30);
    uint32_t size = le32(d, 0x32);
    if (q.body_type == 2) body_size = kTd10Size;
    else if (q.body_type == 3) body_size = kTd15Size;
    else return Error(ErrorCode::kUnsupported, fmt::format("TDX quote: body type {} at byte 48 (2 = TD 1.0, 3 = TD 1.5 supported)", q.body_type));
    if (size != body_size) return corrupt("body_size", 0x32, fmt::format("{} does not match body type {} ({} bytes)", size, q.body_type, body_size));
    q.body_offset = kHeaderSize + 6;
  }
  q.signed_end = q.body_offset + body_size;
  if (d.size() < q.signed_end + 4) return corrupt("body", q.body_offset, "quote truncated inside the TD report body");
  size_t b = q.body_offset;
  std::memcpy(q.tee_tcb_svn.data(), d.data() + b, 16);
  q.mr_seam = slice(d, b + 0x10, 48);
  q.mr_signer_seam = slice(d, b + 0x40, 48);
  q.seam_attributes = slice(d, b + 0x70, 8);
  q.td_attributes = slice(d, b + 0x78, 8);
  q.xfam = slice(d, b + 0x80, 8);
  q.mr_td = slice(d, b + 0x88, 48);
  q.mr_config_id = slice(d, b + 0xB8, 48);
  q.mr_owner = slice(d, b + 0xE8, 48);
  q.mr_owner_config = slice(d, b + 0x118, 48);
  for (size_t i = 0; i < 4; ++i) q.rtmr[i] = slice(d, b + 0x148 + 48 * i, 48);
  std::memcpy(q.report_data.data(), d.data() + b + 0x208, 64);
  if (body_size == kTd15Size) {
    std::memcpy(q.tee_tcb_svn2.data(), d.data() + b + 0x248, 16);
    q.mr_servicetd = slice(d, b + 0x258, 48);
  }
  q.signed_region = d.subspan(0, q.signed_end);
  size_t s = q.signed_end;
  uint32_t sig_len = le32(d, s);
  s += 4;
  if (sig_len > d.size() - s) return corrupt("signature_data_len", q.signed_end, fmt::format("{} exceeds the {} bytes left", sig_len, d.size() - s));
  q.total_size = s + sig_len;
  ByteView sd = d.subspan(s, sig_len);
  size_t o = 0;
  auto need = [&](size_t n, const char* field) -> Status {
    if (n > sd.size() - o) return corrupt(field, s + o, "truncated signature data");
    return ok_status();
  };
  VEIL_TRY(need(64 + 64 + 6, "signature"));
  q.signature = slice(sd, 0, 64);
  q.attestation_key = slice(sd, 64, 64);
  o = 128;
  uint16_t cert_type = le16(sd, o);
  uint32_t cert_size = le32(sd, o + 2);
  if (cert_type != 6) return corrupt("certification_data_type", s + o, fmt::format("{} (6 = QE report certification data expected)", cert_type));
  o += 6;
  if (cert_size > sd.size() - o) return corrupt("certification_data_size", s + o - 4, "exceeds the signature data");
  ByteView cd = sd.subspan(o, cert_size);
  size_t base = s + o;
  size_t c = 0;
  auto cneed = [&](size_t n, const char* field) -> Status {
    if (n > cd.size() - c) return corrupt(field, base + c, "truncated QE certification data");
    return ok_status();
  };
  VEIL_TRY(cneed(kQeReportSize + 64 + 2, "qe_report"));
  q.qe_report = slice(cd, 0, kQeReportSize);
  q.qe_report_signature = slice(cd, kQeReportSize, 64);
  c = kQeReportSize + 64;
  uint16_t auth_len = le16(cd, c);
  c += 2;
  VEIL_TRY(cneed(auth_len, "qe_auth_data"));
  q.qe_auth_data = slice(cd, c, auth_len);
  c += auth_len;
  VEIL_TRY(cneed(6, "qe_certification_data_type"));
  q.qe_cert_type = le16(cd, c);
  uint32_t chain_len = le32(cd, c + 2);
  c += 6;
  if (q.qe_cert_type != 5)
    return Error(ErrorCode::kUnsupported, fmt::format("TDX quote: QE certification data type {} at byte {} (5 = PCK chain supported)", q.qe_cert_type, base + c - 6));
  VEIL_TRY(cneed(chain_len, "pck_cert_chain"));
  q.pck_chain_pem = slice(cd, c, chain_len);
  return q;
}

struct PreparedTdxCollateral {
  pki::CrlPtr pck_crl, root_crl;
  json tcb_info, qe_identity;
};

Result<std::shared_ptr<const PreparedTdxCollateral>> prepare_tdx_collateral(const Collateral& collateral, TimePoint now) {
  auto p = std::make_shared<PreparedTdxCollateral>();
  const Bytes* pck_crl_b = collateral.find(item::kPckCrl);
  const Bytes* root_crl_b = collateral.find(item::kRootCaCrl);
  if (pck_crl_b == nullptr) return refuse("collateral item 'pck_crl' is missing");
  if (root_crl_b == nullptr) return refuse("collateral item 'root_ca_crl' is missing");
  VEIL_ASSIGN_OR_RETURN(p->pck_crl, pki::parse_crl(*pck_crl_b, "TDX collateral item 'pck_crl'"));
  VEIL_ASSIGN_OR_RETURN(p->root_crl, pki::parse_crl(*root_crl_b, "TDX collateral item 'root_ca_crl'"));
  // TCB info and QE identity: signatures, issuer chains to the pinned root, validity.
  VEIL_ASSIGN_OR_RETURN(SignedJson tcb_doc, load_signed_json(collateral, item::kTcbInfo, item::kTcbInfoSignature, "tcbInfo"));
  VEIL_TRY(verify_signed_json(tcb_doc, collateral, item::kTcbInfo, item::kTcbInfoIssuerChain, p->root_crl.get(), now));
  VEIL_ASSIGN_OR_RETURN(SignedJson qe_doc, load_signed_json(collateral, item::kQeIdentity, item::kQeIdentitySignature, "enclaveIdentity"));
  VEIL_TRY(verify_signed_json(qe_doc, collateral, item::kQeIdentity, item::kQeIdentityIssuerChain, p->root_crl.get(), now));
  const json& info = tcb_doc.value;
  VEIL_ASSIGN_OR_RETURN(std::string info_id, jstr(info, "id", "tcb_info"));
  if (info_id != "TDX") return refuse(fmt::format("tcb_info id is '{}', expected TDX", info_id.substr(0, 20)));
  VEIL_ASSIGN_OR_RETURN(uint64_t info_version, juint(info, "version", "tcb_info"));
  if (info_version != 3) return Error(ErrorCode::kUnsupported, fmt::format("TDX collateral tcb_info: version {} (3 supported)", info_version));
  VEIL_TRY(check_validity(info, "tcb_info", now));
  VEIL_TRY(check_validity(qe_doc.value, "qe_identity", now));
  p->tcb_info = std::move(tcb_doc.value);
  p->qe_identity = std::move(qe_doc.value);
  return std::shared_ptr<const PreparedTdxCollateral>(std::move(p));
}

Result<Claims> verify_tdx_quote(ByteView quote, const Collateral& collateral, TimePoint now) {
  VEIL_TRY(parse_tdx_quote(quote));  // malformed evidence is reported as such before collateral problems
  VEIL_ASSIGN_OR_RETURN(auto prepared, prepare_tdx_collateral(collateral, now));
  return verify_tdx_quote_prepared(quote, *prepared, now);
}

Result<Claims> verify_tdx_quote_prepared(ByteView quote, const PreparedTdxCollateral& prepared, TimePoint now) {
  VEIL_ASSIGN_OR_RETURN(SignedQuote s, check_signed_quote(quote));
  const TdxQuote& q = s.q;
  // PCK chain to the pinned Intel SGX Root CA, with both CRLs.
  VEIL_TRY(pki::verify_chain(s.leaf(), s.intermediates(), s.root(), {prepared.pck_crl.get(), prepared.root_crl.get()},
                             now, "TDX PCK certificate chain"));
  // PCK TCB (from the certificate) against the TCB info.
  const json& info = prepared.tcb_info;
  VEIL_ASSIGN_OR_RETURN(PckTcb pck, parse_pck_extension(s.leaf()));
  VEIL_ASSIGN_OR_RETURN(Bytes fmspc, jhex(info, "fmspc", "tcb_info", 6));
  if (fmspc != pck.fmspc)
    return refuse(fmt::format("tcb_info is for FMSPC {} but the PCK certificate has FMSPC {}", to_hex(fmspc), to_hex(pck.fmspc)));
  VEIL_ASSIGN_OR_RETURN(Bytes pce_id, jhex(info, "pceId", "tcb_info", 2));
  if (pce_id != pck.pce_id) return refuse("tcb_info PCE-ID does not match the PCK certificate");
  uint16_t qe_svn = 0;
  VEIL_ASSIGN_OR_RETURN(std::string qe_status, qe_identity_status(prepared.qe_identity, q.qe_report, &qe_svn));
  VEIL_ASSIGN_OR_RETURN(TcbResult tcb, tdx_tcb_status(info, pck, q));
  std::string status = merge_status(tcb.status, qe_status);
  if (status == "Revoked") return refuse("TCB status: the platform TCB is Revoked");

  Claims c;
  c.type = TeeType::kTdx;
  c.measurements["mrtd"] = q.mr_td;
  for (size_t i = 0; i < 4; ++i) c.measurements[fmt::format("rtmr{}", i)] = q.rtmr[i];
  c.measurements["mrseam"] = q.mr_seam;
  c.measurements["mrsignerseam"] = q.mr_signer_seam;
  c.measurements["mrconfigid"] = q.mr_config_id;
  c.measurements["mrowner"] = q.mr_owner;
  c.measurements["mrownerconfig"] = q.mr_owner_config;
  c.measurements["td_attributes"] = q.td_attributes;
  c.measurements["xfam"] = q.xfam;
  if (!q.mr_servicetd.empty()) c.measurements["mrservicetd"] = q.mr_servicetd;
  c.report_data = q.report_data;
  c.debug = q.debug();
  c.svns["tdx_module_svn"] = q.tee_tcb_svn[0];
  c.svns["tdx_module_version"] = q.tee_tcb_svn[1];
  c.svns["seam_last_patch_svn"] = q.tee_tcb_svn[2];
  c.svns["qe_svn"] = qe_svn;
  c.svns["pce_svn"] = pck.pce_svn;
  c.svns["tcb_eval_num"] = tcb.eval_number;
  c.tcb_status = status;
  c.platform_id = pck.ppid;
  return c;
}

Status verify_tdx_quote_signatures(ByteView quote, TimePoint now) {
  VEIL_ASSIGN_OR_RETURN(SignedQuote s, check_signed_quote(quote));
  return pki::verify_chain(s.leaf(), s.intermediates(), s.root(), {}, now, "TDX PCK certificate chain");
}

namespace {
class TdxVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kTdx; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral, TimePoint now) const override {
    if (evidence.type != TeeType::kTdx) return Error(ErrorCode::kInvalidArgument, "tdx verifier: evidence is not of type tdx");
    return verify_tdx_quote(evidence.data, collateral, now);
  }
};
}  // namespace

std::unique_ptr<Verifier> make_tdx_verifier() { return std::make_unique<TdxVerifier>(); }

}  // namespace veil::attest
