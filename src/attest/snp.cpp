// AMD SEV-SNP attestation report verification. Order of checks and spec sections: docs/attestation.md.
#include "attest/snp.h"

#include <algorithm>
#include <cstring>

#include "attest/pki.h"
#include "crypto/crypto.h"

namespace veil::attest {

namespace {

// SHA-256 of the DER encoding of each product's AMD Root Key (self-signed, RSA-4096, RSASSA-PSS).
struct ArkPin {
  SnpProduct product;
  const char* sha256;
};
constexpr ArkPin kArkPins[] = {
    {SnpProduct::kMilan, "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"},
    {SnpProduct::kGenoa, "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"},
    {SnpProduct::kTurin, "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"},
};

constexpr const char* kAmdOid = "1.3.6.1.4.1.3704.1.";

uint32_t le32(ByteView b, size_t o) {
  return static_cast<uint32_t>(b[o]) | (static_cast<uint32_t>(b[o + 1]) << 8) | (static_cast<uint32_t>(b[o + 2]) << 16) |
         (static_cast<uint32_t>(b[o + 3]) << 24);
}
uint64_t le64(ByteView b, size_t o) { return static_cast<uint64_t>(le32(b, o)) | (static_cast<uint64_t>(le32(b, o + 4)) << 32); }
Bytes slice(ByteView b, size_t o, size_t n) { return Bytes(b.begin() + o, b.begin() + o + n); }

Error refuse(std::string why) { return Error(ErrorCode::kSecurity, "SEV-SNP report: " + why); }
Error corrupt(std::string_view field, size_t offset, std::string_view why) {
  return Error(ErrorCode::kCorrupt, fmt::format("SEV-SNP report: field '{}' at byte 0x{:x}: {}", field, offset, why));
}

bool all_zero(ByteView b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t v) { return v == 0; });
}

// An AMD certificate extension's value: INTEGER -> number, IA5String / OCTET STRING -> bytes.
Result<std::optional<uint64_t>> amd_int_ext(X509* cert, const std::string& suffix, std::string_view what) {
  auto v = pki::extension_value(cert, (std::string(kAmdOid) + suffix).c_str());
  if (!v) return std::optional<uint64_t>();
  ByteView in(*v);
  VEIL_ASSIGN_OR_RETURN(auto tlv, pki::der_next(in, what));
  if (tlv.tag != 0x02) return make_error(ErrorCode::kCorrupt, "{}: extension {}{} is not an INTEGER", what, kAmdOid, suffix);
  VEIL_ASSIGN_OR_RETURN(uint64_t n, pki::der_uint(tlv.content, what));
  return std::optional<uint64_t>(n);
}

Result<std::optional<Bytes>> amd_bytes_ext(X509* cert, const std::string& suffix, std::string_view what) {
  auto v = pki::extension_value(cert, (std::string(kAmdOid) + suffix).c_str());
  if (!v) return std::optional<Bytes>();
  // AMD's hwID extension value is the raw chip id (64 bytes, 8 on Turin), not DER; accept a DER
  // OCTET STRING wrapping as well.
  ByteView in(*v);
  if (v->size() != 64 && v->size() != 8) {
    auto tlv = pki::der_next(in, what);
    if (tlv.ok() && tlv->tag == 0x04 && in.empty()) return std::optional<Bytes>(Bytes(tlv->content.begin(), tlv->content.end()));
  }
  return std::optional<Bytes>(*v);
}

bool product_name_matches(std::string_view name, SnpProduct p) {
  switch (p) {
    case SnpProduct::kMilan: return name.starts_with("Milan");
    case SnpProduct::kGenoa: return name.starts_with("Genoa");
    case SnpProduct::kTurin: return name.starts_with("Turin");
    default: return false;
  }
}

}  // namespace

const char* snp_product_name(SnpProduct p) {
  switch (p) {
    case SnpProduct::kMilan: return "Milan";
    case SnpProduct::kGenoa: return "Genoa";
    case SnpProduct::kTurin: return "Turin";
    default: return "unknown";
  }
}

SnpTcb decode_snp_tcb(uint64_t raw, SnpProduct product) {
  auto byte = [&](int i) { return static_cast<uint8_t>(raw >> (8 * i)); };
  SnpTcb t;
  if (product == SnpProduct::kTurin) {
    t.fmc = byte(0);
    t.bootloader = byte(1);
    t.tee = byte(2);
    t.snp = byte(3);
  } else {
    t.bootloader = byte(0);
    t.tee = byte(1);
    t.snp = byte(6);
  }
  t.microcode = byte(7);
  return t;
}

SnpProduct SnpReport::cpuid_product() const {
  if (!has_cpuid) return SnpProduct::kUnknown;
  if (cpuid_fam == 0x19 && cpuid_mod <= 0x0F) return SnpProduct::kMilan;
  if (cpuid_fam == 0x19 && ((cpuid_mod >= 0x10 && cpuid_mod <= 0x1F) || (cpuid_mod >= 0xA0 && cpuid_mod <= 0xAF)))
    return SnpProduct::kGenoa;
  if (cpuid_fam == 0x1A && cpuid_mod <= 0x11) return SnpProduct::kTurin;
  return SnpProduct::kUnknown;
}

Result<SnpReport> parse_snp_report(ByteView d) {
  if (d.size() != kSnpReportSize)
    return Error(ErrorCode::kCorrupt, fmt::format("SEV-SNP report: {} bytes, expected {}", d.size(), kSnpReportSize));
  SnpReport r;
  r.version = le32(d, 0x00);
  if (r.version < 2 || r.version > 5)
    return Error(ErrorCode::kUnsupported, fmt::format("SEV-SNP report: version {} at byte 0 (2 to 5 supported)", r.version));
  r.guest_svn = le32(d, 0x04);
  r.policy = le64(d, 0x08);
  r.family_id = slice(d, 0x10, 16);
  r.image_id = slice(d, 0x20, 16);
  r.vmpl = le32(d, 0x30);
  r.signature_algo = le32(d, 0x34);
  r.current_tcb = le64(d, 0x38);
  r.platform_info = le64(d, 0x40);
  r.signer_info = le32(d, 0x48);
  std::memcpy(r.report_data.data(), d.data() + 0x50, 64);
  r.measurement = slice(d, 0x90, 48);
  r.host_data = slice(d, 0xC0, 32);
  r.id_key_digest = slice(d, 0xE0, 48);
  r.author_key_digest = slice(d, 0x110, 48);
  r.report_id = slice(d, 0x140, 32);
  r.report_id_ma = slice(d, 0x160, 32);
  r.reported_tcb = le64(d, 0x180);
  if (r.version >= 3) {
    r.has_cpuid = true;
    r.cpuid_fam = d[0x188];
    r.cpuid_mod = d[0x189];
    r.cpuid_step = d[0x18A];
  }
  r.chip_id = slice(d, 0x1A0, 64);
  r.committed_tcb = le64(d, 0x1E0);
  r.launch_tcb = le64(d, 0x1F0);
  r.sig_r = slice(d, 0x2A0, 72);
  r.sig_s = slice(d, 0x2E8, 72);
  r.signed_region = d.subspan(0, kSnpSignedSize);
  if (r.signature_algo != 1)
    return Error(ErrorCode::kUnsupported,
                 fmt::format("SEV-SNP report: signature_algo {} at byte 0x34 (1 = ECDSA P-384 with SHA-384 supported)", r.signature_algo));
  if (!all_zero(d.subspan(0x330, kSnpReportSize - 0x330))) return corrupt("reserved", 0x330, "not zero after the signature");
  return r;
}

Result<Claims> verify_snp_report(ByteView data, const Collateral& collateral, TimePoint now) {
  VEIL_ASSIGN_OR_RETURN(SnpReport r, parse_snp_report(data));
  // 1. Which key signed: VCEK (per chip and TCB) or VLEK (per cloud provider).
  uint32_t key_kind = r.signing_key();
  if (key_kind != 0 && key_kind != 1)
    return refuse(fmt::format("signer_info SIGNING_KEY {} at byte 0x48: the report is not signed by a VCEK or VLEK", key_kind));
  const bool vlek = key_kind == 1;
  const char* key_item = vlek ? item::kVlek : item::kVcek;
  const Bytes* key_b = collateral.find(key_item);
  if (key_b == nullptr) return refuse(fmt::format("collateral item '{}' is missing", key_item));
  std::vector<pki::CertPtr> certs;
  if (std::string_view(as_chars(*key_b)).find("-----BEGIN") != std::string_view::npos) {
    VEIL_ASSIGN_OR_RETURN(certs, pki::parse_pem_chain(*key_b, fmt::format("collateral item '{}'", key_item)));
  } else {
    VEIL_ASSIGN_OR_RETURN(auto c, pki::parse_cert(*key_b, fmt::format("collateral item '{}'", key_item)));
    certs.push_back(std::move(c));
  }
  // The issuing chain: ASK (or ASVK) then ARK, from "ask_ark"/"asvk_ark" or appended to the key item.
  std::vector<pki::CertPtr> chain;
  std::vector<const char*> chain_items = {item::kAskArk};
  if (vlek) chain_items = {item::kAsvkArk, item::kAskArk};
  for (const char* name : chain_items) {
    if (const Bytes* b = collateral.find(name)) {
      VEIL_ASSIGN_OR_RETURN(chain, pki::parse_pem_chain(*b, fmt::format("collateral item '{}'", name)));
      break;
    }
  }
  if (chain.empty()) {
    for (size_t i = 1; i < certs.size(); ++i) chain.push_back(std::move(certs[i]));
  }
  if (chain.size() != 2)
    return refuse(fmt::format("collateral item '{}' must hold the {} and the ARK ({} certificate(s) found)",
                              vlek ? "asvk_ark" : "ask_ark", vlek ? "ASVK" : "ASK", chain.size()));
  X509* leaf = certs[0].get();
  X509* ask = chain[0].get();
  X509* ark = chain[1].get();
  // 2. The ARK is one of AMD's pinned product roots; that decides the product.
  std::string ark_fp = to_hex(pki::cert_sha256(ark));
  SnpProduct product = SnpProduct::kUnknown;
  for (const auto& pin : kArkPins)
    if (ark_fp == pin.sha256) product = pin.product;
  if (product == SnpProduct::kUnknown) return refuse("the ARK in the collateral is not a pinned AMD root key (Milan, Genoa, Turin)");
  // 3. Chain: VCEK/VLEK <- ASK/ASVK <- ARK (RSASSA-PSS), valid at `now`.
  std::vector<X509_CRL*> crls;
  pki::CrlPtr ark_crl;
  if (const Bytes* crl_b = collateral.find(item::kArkCrl)) {
    VEIL_ASSIGN_OR_RETURN(ark_crl, pki::parse_crl(*crl_b, "collateral item 'ark_crl'"));
    crls.push_back(ark_crl.get());
  }
  VEIL_TRY(pki::verify_chain(leaf, {ask}, ark, {}, now, fmt::format("SEV-SNP {} certificate chain", vlek ? "VLEK" : "VCEK")));
  if (ark_crl) {
    // AMD's CRL lists revoked ASKs/ASVKs; it is signed by the ARK.
    VEIL_TRY(pki::verify_chain(ask, {}, ark, crls, now, "SEV-SNP ASK revocation check"));
  }
  // 4. Product consistency: certificate productName and, from v3, the report's CPUID.
  auto pname = pki::extension_value(leaf, "1.3.6.1.4.1.3704.1.2");
  if (pname) {
    ByteView in(*pname);
    auto tlv = pki::der_next(in, "productName");
    std::string name = tlv.ok() ? std::string(as_chars(tlv->content)) : std::string(as_chars(*pname));
    if (!product_name_matches(name, product))
      return refuse(fmt::format("{} productName '{}' does not match the {} ARK", vlek ? "VLEK" : "VCEK", name.substr(0, 32),
                                snp_product_name(product)));
  }
  if (r.has_cpuid && r.cpuid_product() != SnpProduct::kUnknown && r.cpuid_product() != product)
    return refuse(fmt::format("report CPUID family 0x{:x} model 0x{:x} is a {} but the chain is {}", r.cpuid_fam, r.cpuid_mod,
                              snp_product_name(r.cpuid_product()), snp_product_name(product)));
  // 5. Report signature: ECDSA P-384 / SHA-384 over bytes 0..0x2A0; r and s are little-endian, 72 bytes.
  if (!all_zero(ByteView(r.sig_r).subspan(48)) || !all_zero(ByteView(r.sig_s).subspan(48)))
    return refuse("signature r or s at byte 0x2A0 exceeds 48 bytes");
  Bytes rb(48), sb(48);
  std::reverse_copy(r.sig_r.begin(), r.sig_r.begin() + 48, rb.begin());
  std::reverse_copy(r.sig_s.begin(), r.sig_s.begin() + 48, sb.begin());
  VEIL_ASSIGN_OR_RETURN(Bytes pub, pki::ec_public_point(leaf, 48, vlek ? "VLEK" : "VCEK"));
  auto digest = crypto::sha384(r.signed_region);
  if (!crypto::ecdsa_verify_digest(crypto::EcCurve::kP384, pub, digest, rb, sb).ok())
    return refuse(fmt::format("signature does not verify with the {}", vlek ? "VLEK" : "VCEK"));
  // 6. Reported TCB must equal the TCB the certificate was issued for.
  std::string what = vlek ? "VLEK certificate" : "VCEK certificate";
  SnpTcb tcb = decode_snp_tcb(r.reported_tcb, product);
  struct TcbExt {
    const char* suffix;
    const char* name;
    uint8_t value;
  };
  std::vector<TcbExt> exts = {{"3.1", "bootloader", tcb.bootloader}, {"3.2", "tee", tcb.tee}, {"3.3", "snp", tcb.snp},
                              {"3.8", "microcode", tcb.microcode}};
  if (product == SnpProduct::kTurin) exts.push_back({"3.9", "fmc", tcb.fmc});
  for (const auto& e : exts) {
    VEIL_ASSIGN_OR_RETURN(auto v, amd_int_ext(leaf, e.suffix, what));
    if (!v) return refuse(fmt::format("{} has no {} SPL extension {}{}", what, e.name, kAmdOid, e.suffix));
    if (*v != e.value)
      return refuse(fmt::format("reported_tcb {} SPL {} differs from the {}'s {}", e.name, e.value, what, *v));
  }
  // 7. The VCEK belongs to this chip (hwID = chip_id; Turin uses the first 8 bytes).
  if (!vlek && !all_zero(r.chip_id)) {
    VEIL_ASSIGN_OR_RETURN(auto hwid, amd_bytes_ext(leaf, "4", what));
    if (!hwid) return refuse("VCEK certificate has no hwID extension");
    size_t n = product == SnpProduct::kTurin ? 8 : 64;
    if (hwid->size() != n || !std::equal(hwid->begin(), hwid->end(), r.chip_id.begin()))
      return refuse("chip_id at byte 0x1A0 does not match the VCEK hwID");
  }

  Claims c;
  c.type = TeeType::kSevSnp;
  c.measurements["measurement"] = r.measurement;
  c.measurements["host_data"] = r.host_data;
  c.measurements["id_key_digest"] = r.id_key_digest;
  c.measurements["author_key_digest"] = r.author_key_digest;
  c.measurements["family_id"] = r.family_id;
  c.measurements["image_id"] = r.image_id;
  c.report_data = r.report_data;
  c.debug = r.debug();
  c.migration_agent = r.migrate_ma();
  c.svns["bootloader"] = tcb.bootloader;
  c.svns["tee"] = tcb.tee;
  c.svns["snp"] = tcb.snp;
  c.svns["microcode"] = tcb.microcode;
  if (product == SnpProduct::kTurin) c.svns["fmc"] = tcb.fmc;
  c.svns["guest_svn"] = r.guest_svn;
  c.svns["vmpl"] = r.vmpl;
  c.svns["report_version"] = r.version;
  c.svns["policy_abi_major"] = (r.policy >> 8) & 0xff;
  c.svns["policy_abi_minor"] = r.policy & 0xff;
  c.svns["signing_key"] = key_kind;
  c.platform_id = r.chip_id;
  return c;
}

namespace {
class SnpVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kSevSnp; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral, TimePoint now) const override {
    if (evidence.type != TeeType::kSevSnp) return Error(ErrorCode::kInvalidArgument, "sev-snp verifier: evidence is not of type sev-snp");
    return verify_snp_report(evidence.data, collateral, now);
  }
};
}  // namespace

std::unique_ptr<Verifier> make_snp_verifier() { return std::make_unique<SnpVerifier>(); }

}  // namespace veil::attest
