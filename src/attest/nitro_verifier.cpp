// AWS Nitro Enclaves attestation document verifier (see nitro_document.h for the format and
// docs/attestation-nitro-tpm.md for the order of checks).
#include <openssl/evp.h>

#include "attest/cbor_value.h"
#include "attest/formats.h"
#include "attest/nitro_document.h"
#include "attest/tpm_x509.h"
#include "crypto/crypto.h"

namespace veil::attest::nitro {
namespace {

using cbor::Kind;
using cbor::Value;

constexpr std::string_view kWhat = "nitro document";

Error field_error(std::string_view field, const Value& v, std::string_view why) {
  return make_error(ErrorCode::kCorrupt, "{}: field '{}' at byte offset {}: {}", kWhat, field, v.offset, why);
}

Result<const Value*> require(const Value& map, std::string_view key, Kind kind) {
  const Value* v = map.find(key);
  if (!v) return make_error(ErrorCode::kCorrupt, "{}: payload field '{}' is missing", kWhat, key);
  if (v->kind != kind) {
    return field_error(key, *v, fmt::format("is a {}, expected a {}", cbor::kind_name(v->kind), cbor::kind_name(kind)));
  }
  return v;
}

Result<std::optional<Bytes>> optional_bytes(const Value& map, std::string_view key) {
  const Value* v = map.find(key);
  if (!v || v->kind == Kind::kNull) return std::optional<Bytes>();
  if (v->kind != Kind::kBytes) return field_error(key, *v, "must be a byte string or null");
  if (v->bytes.size() > kMaxOptionalField) {
    return field_error(key, *v, fmt::format("{} bytes exceeds the limit of {}", v->bytes.size(), kMaxOptionalField));
  }
  return std::optional<Bytes>(Bytes(v->bytes.begin(), v->bytes.end()));
}

Status check_protected(ByteView prot, size_t base) {
  if (prot.empty()) return make_error(ErrorCode::kCorrupt, "{}: protected header is empty (alg is required)", kWhat);
  auto hdr = cbor::parse(prot, "nitro document protected header", cbor::Limits{1024, 4, 32});
  if (!hdr.ok()) return hdr.error();
  if (hdr->kind != Kind::kMap) {
    return make_error(ErrorCode::kCorrupt, "{}: protected header at byte offset {} is not a map", kWhat, base);
  }
  for (size_t i = 0; i + 1 < hdr->items.size(); i += 2) {
    const Value& k = hdr->items[i];
    const Value& v = hdr->items[i + 1];
    if (k.kind == Kind::kUint && k.num == 1) {
      if (!(v.kind == Kind::kNegint && v.num == static_cast<uint64_t>(-kCoseAlgEs384 - 1))) {
        return make_error(ErrorCode::kSecurity, "{}: protected header alg is not ES384 (-35)", kWhat);
      }
    } else if (k.kind == Kind::kUint && k.num == 2) {
      return make_error(ErrorCode::kUnsupported, "{}: protected header has critical parameters", kWhat);
    }
  }
  if (!hdr->find_int(1)) return make_error(ErrorCode::kCorrupt, "{}: protected header has no alg", kWhat);
  return ok_status();
}

}  // namespace

Result<Document> parse_document(ByteView data) {
  if (data.size() > kMaxDocumentSize) {
    return make_error(ErrorCode::kCorrupt, "{}: {} bytes exceeds the limit of {}", kWhat, data.size(),
                      kMaxDocumentSize);
  }
  VEIL_ASSIGN_OR_RETURN(Value top, cbor::parse(data, kWhat, cbor::Limits{kMaxDocumentSize, 8, 512}));
  Document doc;
  const Value* sign1 = &top;
  if (top.kind == Kind::kTag) {
    if (top.num != kCoseSign1Tag) {
      return make_error(ErrorCode::kCorrupt, "{}: CBOR tag {} at byte offset 0, expected 18 (COSE_Sign1)", kWhat,
                        top.num);
    }
    doc.tagged = true;
    sign1 = &top.items[0];
  }
  if (sign1->kind != Kind::kArray || sign1->items.size() != 4) {
    return make_error(ErrorCode::kCorrupt, "{}: byte offset {}: COSE_Sign1 must be an array of 4 items", kWhat,
                      sign1->offset);
  }
  const Value& prot = sign1->items[0];
  const Value& unprot = sign1->items[1];
  const Value& payload = sign1->items[2];
  const Value& sig = sign1->items[3];
  if (prot.kind != Kind::kBytes) return field_error("protected", prot, "must be a byte string");
  if (unprot.kind != Kind::kMap) return field_error("unprotected", unprot, "must be a map");
  if (unprot.find_int(1)) return field_error("unprotected", unprot, "must not carry alg (it is not signed)");
  if (payload.kind != Kind::kBytes) return field_error("payload", payload, "must be a byte string (not detached)");
  if (sig.kind != Kind::kBytes || sig.bytes.size() != 96) {
    return field_error("signature", sig, "must be a 96-byte ES384 signature (r || s)");
  }
  VEIL_TRY(check_protected(prot.bytes, prot.offset));
  doc.protected_header.assign(prot.bytes.begin(), prot.bytes.end());
  doc.payload.assign(payload.bytes.begin(), payload.bytes.end());
  doc.signature.assign(sig.bytes.begin(), sig.bytes.end());

  // The payload's offsets are relative to the payload; report them as such.
  VEIL_ASSIGN_OR_RETURN(Value map, cbor::parse(payload.bytes, "nitro document payload",
                                               cbor::Limits{kMaxDocumentSize, 4, 256}));
  if (map.kind != Kind::kMap) return make_error(ErrorCode::kCorrupt, "{}: payload is not a CBOR map", kWhat);
  static const char* const kKnown[] = {"module_id", "digest", "timestamp", "pcrs", "certificate",
                                       "cabundle", "public_key", "user_data", "nonce"};
  for (size_t i = 0; i < map.items.size(); i += 2) {
    const Value& k = map.items[i];
    if (k.kind != Kind::kText) return field_error("payload", k, "map keys must be text");
    bool known = false;
    for (const char* name : kKnown) known = known || k.text() == name;
    if (!known) return field_error("payload", k, "unknown field (not in the AWS attestation document format)");
  }
  VEIL_ASSIGN_OR_RETURN(const Value* module_id, require(map, "module_id", Kind::kText));
  if (module_id->bytes.empty() || module_id->bytes.size() > 256) {
    return field_error("module_id", *module_id, "must be 1..256 bytes");
  }
  doc.module_id = std::string(module_id->text());
  VEIL_ASSIGN_OR_RETURN(const Value* digest, require(map, "digest", Kind::kText));
  doc.digest = std::string(digest->text());
  if (doc.digest != "SHA384") return field_error("digest", *digest, "must be \"SHA384\"");
  VEIL_ASSIGN_OR_RETURN(const Value* ts, require(map, "timestamp", Kind::kUint));
  if (ts->num == 0 || ts->num > (uint64_t{1} << 50)) return field_error("timestamp", *ts, "out of range");
  doc.timestamp_ms = ts->num;
  VEIL_ASSIGN_OR_RETURN(const Value* pcrs, require(map, "pcrs", Kind::kMap));
  if (pcrs->map_size() == 0 || pcrs->map_size() > 32) return field_error("pcrs", *pcrs, "must hold 1..32 PCRs");
  for (size_t i = 0; i < pcrs->items.size(); i += 2) {
    const Value& k = pcrs->items[i];
    const Value& v = pcrs->items[i + 1];
    if (k.kind != Kind::kUint || k.num > 31) return field_error("pcrs", k, "PCR index must be an integer 0..31");
    if (v.kind != Kind::kBytes || v.bytes.size() != 48) {
      return field_error("pcrs", v, fmt::format("PCR{} must be a 48-byte SHA-384 value", k.num));
    }
    doc.pcrs[static_cast<uint32_t>(k.num)] = Bytes(v.bytes.begin(), v.bytes.end());
  }
  VEIL_ASSIGN_OR_RETURN(const Value* cert, require(map, "certificate", Kind::kBytes));
  if (cert->bytes.empty() || cert->bytes.size() > x509::kMaxCertSize) {
    return field_error("certificate", *cert, "size out of range");
  }
  doc.certificate.assign(cert->bytes.begin(), cert->bytes.end());
  VEIL_ASSIGN_OR_RETURN(const Value* cab, require(map, "cabundle", Kind::kArray));
  if (cab->items.empty() || cab->items.size() > kMaxCabundle) {
    return field_error("cabundle", *cab, fmt::format("must hold 1..{} certificates", kMaxCabundle));
  }
  for (const Value& c : cab->items) {
    if (c.kind != Kind::kBytes || c.bytes.empty() || c.bytes.size() > x509::kMaxCertSize) {
      return field_error("cabundle", c, "entries must be DER certificates (byte strings)");
    }
    doc.cabundle.emplace_back(c.bytes.begin(), c.bytes.end());
  }
  VEIL_ASSIGN_OR_RETURN(doc.public_key, optional_bytes(map, "public_key"));
  VEIL_ASSIGN_OR_RETURN(doc.user_data, optional_bytes(map, "user_data"));
  VEIL_ASSIGN_OR_RETURN(doc.nonce, optional_bytes(map, "nonce"));
  return doc;
}

Bytes sig_structure(const Document& doc) {
  Bytes out;
  out.reserve(doc.protected_header.size() + doc.payload.size() + 32);
  cbor::encode_array_head(out, 4);
  cbor::encode_text(out, "Signature1");
  cbor::encode_bytes(out, doc.protected_header);
  cbor::encode_bytes(out, {});
  cbor::encode_bytes(out, doc.payload);
  return out;
}

Result<Claims> verify_document(ByteView data, ByteView root_der, std::chrono::system_clock::time_point now) {
  VEIL_ASSIGN_OR_RETURN(Document doc, parse_document(data));
  // 1. ES384 signature over the Sig_structure by the leaf certificate's P-384 key.
  VEIL_ASSIGN_OR_RETURN(x509::CertPtr leaf, x509::parse_der(doc.certificate, "nitro document certificate"));
  x509::PkeyPtr leaf_key = x509::public_key(leaf.get());
  VEIL_ASSIGN_OR_RETURN(auto point, x509::ec_point(leaf_key.get(), "nitro document certificate"));
  if (point.first != "P-384") {
    return make_error(ErrorCode::kSecurity, "{}: leaf certificate key is on {}, not P-384", kWhat, point.first);
  }
  auto digest = crypto::sha384(sig_structure(doc));
  ByteView sig(doc.signature);
  if (Status st = crypto::ecdsa_verify_digest(crypto::EcCurve::kP384, point.second, digest, sig.subspan(0, 48),
                                              sig.subspan(48, 48));
      !st.ok()) {
    return make_error(ErrorCode::kSecurity, "{}: COSE_Sign1 ES384 signature does not verify with the leaf certificate",
                      kWhat);
  }
  // 2. The chain: cabundle[0] is the trusted root; each entry signed by the previous; the leaf by the last.
  VEIL_ASSIGN_OR_RETURN(x509::CertPtr root, x509::parse_der(root_der, "nitro root"));
  if (ByteView(doc.cabundle[0]).size() != root_der.size() || !ct_equal(doc.cabundle[0], root_der)) {
    return make_error(ErrorCode::kSecurity, "{}: cabundle[0] is not the trusted AWS Nitro root", kWhat);
  }
  std::vector<x509::CertPtr> cas;
  for (size_t i = 0; i < doc.cabundle.size(); ++i) {
    VEIL_ASSIGN_OR_RETURN(x509::CertPtr c, x509::parse_der(doc.cabundle[i], fmt::format("nitro cabundle[{}]", i)));
    X509* issuer = i == 0 ? root.get() : cas.back().get();
    if (!x509::signed_by(c.get(), issuer)) {
      return make_error(ErrorCode::kSecurity, "{}: cabundle[{}] is not signed by cabundle[{}]", kWhat, i,
                        i == 0 ? 0 : i - 1);
    }
    cas.push_back(std::move(c));
  }
  if (!x509::signed_by(leaf.get(), cas.back().get())) {
    return make_error(ErrorCode::kSecurity, "{}: certificate is not signed by the last cabundle entry", kWhat);
  }
  std::vector<X509*> inter;
  for (size_t i = 1; i < cas.size(); ++i) inter.push_back(cas[i].get());
  VEIL_TRY(x509::verify_chain(leaf.get(), inter, root.get(), now, "nitro document certificate"));

  // 3. Claims.
  Claims claims;
  claims.type = TeeType::kNitro;
  for (const auto& [idx, value] : doc.pcrs) claims.measurements[fmt::format("pcr{}", idx)] = value;
  if (doc.user_data) claims.measurements["user_data"] = *doc.user_data;
  if (doc.nonce) claims.measurements["nonce"] = *doc.nonce;
  if (doc.public_key) claims.measurements["public_key"] = *doc.public_key;
  if (doc.user_data && doc.user_data->size() == claims.report_data.size()) {
    std::copy(doc.user_data->begin(), doc.user_data->end(), claims.report_data.begin());
  }
  // Debug-mode enclaves report PCR0, PCR1 and PCR2 as all zero.
  bool debug = true;
  for (uint32_t i = 0; i < 3; ++i) {
    auto it = doc.pcrs.find(i);
    if (it == doc.pcrs.end()) { debug = false; break; }
    for (uint8_t b : it->second) debug = debug && b == 0;
  }
  claims.debug = debug;
  claims.platform_id = to_bytes(doc.module_id);
  claims.issued_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(doc.timestamp_ms));
  return claims;
}

namespace {

class NitroVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kNitro; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral,
                        std::chrono::system_clock::time_point now) const override {
    if (evidence.type != TeeType::kNitro) {
      return make_error(ErrorCode::kInvalidArgument, "nitro verifier: evidence type is {}",
                        tee_type_name(evidence.type));
    }
    const Bytes* root_item = collateral.find(kRootItem);
    if (!root_item) {
      return make_error(ErrorCode::kSecurity,
                        "nitro verifier: collateral '{}' (the AWS Nitro Enclaves Root G1 certificate) is missing",
                        kRootItem);
    }
    VEIL_ASSIGN_OR_RETURN(auto roots, x509::parse_bundle(*root_item, "collateral nitro_root"));
    if (roots.size() != 1) {
      return make_error(ErrorCode::kCorrupt, "collateral nitro_root: expected one certificate, found {}", roots.size());
    }
    Bytes der = x509::to_der(roots[0].get());
    auto fp = crypto::sha256(der);
    VEIL_ASSIGN_OR_RETURN(Bytes pinned, from_hex(kAwsRootG1Sha256));
    if (!ct_equal(fp, pinned)) {
      return make_error(ErrorCode::kSecurity,
                        "collateral nitro_root: SHA-256 fingerprint {} is not the AWS Nitro Enclaves Root G1", to_hex(fp));
    }
    return verify_document(evidence.data, der, now);
  }
};

}  // namespace
}  // namespace veil::attest::nitro

namespace veil::attest {
std::unique_ptr<Verifier> make_nitro_verifier() { return std::make_unique<nitro::NitroVerifier>(); }
}  // namespace veil::attest
