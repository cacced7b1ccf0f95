#include "attest/tpm_structs.h"

namespace veil::attest::tpm {
namespace {

// Big-endian reader that names the structure and offset of the first failure.
class Reader {
 public:
  Reader(ByteView data, std::string_view what) : d_(data), what_(what) {}
  size_t pos() const { return pos_; }
  size_t left() const { return d_.size() - pos_; }
  Error fail(std::string_view field, std::string_view why) const {
    return make_error(ErrorCode::kCorrupt, "{}: field {} at byte offset {}: {}", what_, field, pos_, why);
  }
  Result<uint64_t> be(std::string_view field, size_t n) {
    if (left() < n) return fail(field, fmt::format("needs {} bytes, {} remain", n, left()));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | d_[pos_ + i];
    pos_ += n;
    return v;
  }
  Result<uint16_t> u16(std::string_view f) { VEIL_ASSIGN_OR_RETURN(auto v, be(f, 2)); return static_cast<uint16_t>(v); }
  Result<uint32_t> u32(std::string_view f) { VEIL_ASSIGN_OR_RETURN(auto v, be(f, 4)); return static_cast<uint32_t>(v); }
  Result<uint64_t> u64(std::string_view f) { return be(f, 8); }
  Result<uint8_t> u8(std::string_view f) { VEIL_ASSIGN_OR_RETURN(auto v, be(f, 1)); return static_cast<uint8_t>(v); }
  Result<Bytes> raw(std::string_view field, size_t n) {
    if (left() < n) return fail(field, fmt::format("needs {} bytes, {} remain", n, left()));
    Bytes out(d_.begin() + static_cast<std::ptrdiff_t>(pos_), d_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return out;
  }
  // TPM2B_*: u16 size then bytes, size at most `max`.
  Result<Bytes> tpm2b(std::string_view field, size_t max) {
    size_t at = pos_;
    VEIL_ASSIGN_OR_RETURN(uint16_t n, u16(field));
    if (n > max) {
      pos_ = at;
      return fail(field, fmt::format("size {} exceeds the maximum {}", n, max));
    }
    return raw(field, n);
  }
  Status done() const {
    if (left() != 0) {
      return make_error(ErrorCode::kCorrupt, "{}: {} trailing bytes at byte offset {}", what_, left(), pos_);
    }
    return ok_status();
  }

 private:
  ByteView d_;
  std::string_view what_;
  size_t pos_ = 0;
};

bool known_hash(uint16_t alg) {
  return alg == kAlgSha1 || alg == kAlgSha256 || alg == kAlgSha384 || alg == kAlgSha512;
}

Result<std::vector<PcrSelection>> read_selection(Reader& r) {
  VEIL_ASSIGN_OR_RETURN(uint32_t count, r.u32("pcrSelect.count"));
  if (count == 0 || count > 16) return r.fail("pcrSelect.count", fmt::format("{} banks (1..16 accepted)", count));
  std::vector<PcrSelection> out;
  for (uint32_t i = 0; i < count; ++i) {
    PcrSelection s;
    VEIL_ASSIGN_OR_RETURN(s.hash_alg, r.u16("pcrSelections.hash"));
    if (!known_hash(s.hash_alg)) return r.fail("pcrSelections.hash", fmt::format("unknown bank 0x{:04x}", s.hash_alg));
    for (const auto& prev : out) {
      if (prev.hash_alg == s.hash_alg) return r.fail("pcrSelections.hash", "bank listed twice");
    }
    VEIL_ASSIGN_OR_RETURN(uint8_t size, r.u8("pcrSelections.sizeofSelect"));
    if (size < 3 || size > 4) return r.fail("pcrSelections.sizeofSelect", fmt::format("{} (3..4 accepted)", size));
    VEIL_ASSIGN_OR_RETURN(Bytes bitmap, r.raw("pcrSelections.pcrSelect", size));
    for (uint32_t pcr = 0; pcr < size * 8u; ++pcr) {
      if (bitmap[pcr / 8] & (1u << (pcr % 8))) s.pcrs.push_back(pcr);
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

Result<crypto::DigestAlg> digest_alg(uint16_t tpm_alg) {
  switch (tpm_alg) {
    case kAlgSha1: return crypto::DigestAlg::kSha1;
    case kAlgSha256: return crypto::DigestAlg::kSha256;
    case kAlgSha384: return crypto::DigestAlg::kSha384;
    case kAlgSha512: return crypto::DigestAlg::kSha512;
    default: return make_error(ErrorCode::kUnsupported, "TPM hash algorithm 0x{:04x} is not supported", tpm_alg);
  }
}

const char* bank_name(uint16_t tpm_alg) {
  switch (tpm_alg) {
    case kAlgSha1: return "sha1";
    case kAlgSha256: return "sha256";
    case kAlgSha384: return "sha384";
    case kAlgSha512: return "sha512";
    default: return "unknown";
  }
}

Result<Attest> parse_attest(ByteView data) {
  if (data.size() > 4096) return make_error(ErrorCode::kCorrupt, "TPMS_ATTEST: {} bytes is too large", data.size());
  Reader r(data, "TPMS_ATTEST");
  Attest a;
  VEIL_ASSIGN_OR_RETURN(a.magic, r.u32("magic"));
  if (a.magic != kGenerated) {
    return make_error(ErrorCode::kSecurity, "TPMS_ATTEST: magic 0x{:08x} at byte offset 0 is not TPM_GENERATED_VALUE",
                      a.magic);
  }
  VEIL_ASSIGN_OR_RETURN(a.type, r.u16("type"));
  if (a.type != kStAttestQuote) {
    return make_error(ErrorCode::kSecurity, "TPMS_ATTEST: type 0x{:04x} at byte offset 4 is not TPM_ST_ATTEST_QUOTE",
                      a.type);
  }
  VEIL_ASSIGN_OR_RETURN(a.qualified_signer, r.tpm2b("qualifiedSigner", 2 + 64));
  VEIL_ASSIGN_OR_RETURN(a.extra_data, r.tpm2b("extraData", 64));
  VEIL_ASSIGN_OR_RETURN(a.clock, r.u64("clockInfo.clock"));
  VEIL_ASSIGN_OR_RETURN(a.reset_count, r.u32("clockInfo.resetCount"));
  VEIL_ASSIGN_OR_RETURN(a.restart_count, r.u32("clockInfo.restartCount"));
  VEIL_ASSIGN_OR_RETURN(a.safe, r.u8("clockInfo.safe"));
  if (a.safe > 1) return r.fail("clockInfo.safe", "must be 0 or 1");
  VEIL_ASSIGN_OR_RETURN(a.firmware_version, r.u64("firmwareVersion"));
  VEIL_ASSIGN_OR_RETURN(a.selections, read_selection(r));
  VEIL_ASSIGN_OR_RETURN(a.pcr_digest, r.tpm2b("pcrDigest", 64));
  if (a.pcr_digest.empty()) return r.fail("pcrDigest", "empty");
  VEIL_TRY(r.done());
  return a;
}

Result<Signature> parse_signature(ByteView data) {
  if (data.size() > 2048) return make_error(ErrorCode::kCorrupt, "TPMT_SIGNATURE: {} bytes is too large", data.size());
  Reader r(data, "TPMT_SIGNATURE");
  Signature s;
  VEIL_ASSIGN_OR_RETURN(s.sig_alg, r.u16("sigAlg"));
  VEIL_ASSIGN_OR_RETURN(s.hash_alg, r.u16("hash"));
  if (!known_hash(s.hash_alg)) return r.fail("hash", fmt::format("unsupported hash 0x{:04x}", s.hash_alg));
  switch (s.sig_alg) {
    case kAlgRsassa:
    case kAlgRsapss: {
      VEIL_ASSIGN_OR_RETURN(s.rsa, r.tpm2b("sig", 512));
      if (s.rsa.empty()) return r.fail("sig", "empty RSA signature");
      break;
    }
    case kAlgEcdsa: {
      VEIL_ASSIGN_OR_RETURN(s.ecc_r, r.tpm2b("signatureR", 66));
      VEIL_ASSIGN_OR_RETURN(s.ecc_s, r.tpm2b("signatureS", 66));
      if (s.ecc_r.empty() || s.ecc_s.empty()) return r.fail("signatureR/S", "empty ECDSA component");
      break;
    }
    default:
      return make_error(ErrorCode::kUnsupported, "TPMT_SIGNATURE: sigAlg 0x{:04x} at byte offset 0 is not supported",
                        s.sig_alg);
  }
  VEIL_TRY(r.done());
  return s;
}

Result<Public> parse_public(ByteView data) {
  if (data.size() > 2048) return make_error(ErrorCode::kCorrupt, "TPMT_PUBLIC: {} bytes is too large", data.size());
  Reader r(data, "TPMT_PUBLIC");
  Public p;
  VEIL_ASSIGN_OR_RETURN(p.type, r.u16("type"));
  VEIL_ASSIGN_OR_RETURN(p.name_alg, r.u16("nameAlg"));
  if (!known_hash(p.name_alg)) return r.fail("nameAlg", fmt::format("unsupported 0x{:04x}", p.name_alg));
  VEIL_ASSIGN_OR_RETURN(p.attributes, r.u32("objectAttributes"));
  VEIL_ASSIGN_OR_RETURN(Bytes policy, r.tpm2b("authPolicy", 64));
  (void)policy;
  if (p.type != kAlgRsa && p.type != kAlgEcc) {
    return make_error(ErrorCode::kUnsupported, "TPMT_PUBLIC: type 0x{:04x} at byte offset 0 is not RSA or ECC", p.type);
  }
  VEIL_ASSIGN_OR_RETURN(uint16_t sym, r.u16("parameters.symmetric"));
  if (sym != kAlgNull) return r.fail("parameters.symmetric", "a signing key has no symmetric algorithm");
  VEIL_ASSIGN_OR_RETURN(p.scheme, r.u16("parameters.scheme"));
  if (p.scheme != kAlgNull) {
    if (p.scheme != kAlgRsassa && p.scheme != kAlgRsapss && p.scheme != kAlgEcdsa) {
      return r.fail("parameters.scheme", fmt::format("unsupported scheme 0x{:04x}", p.scheme));
    }
    VEIL_ASSIGN_OR_RETURN(p.scheme_hash, r.u16("parameters.scheme.hashAlg"));
    if (!known_hash(p.scheme_hash)) return r.fail("parameters.scheme.hashAlg", "unsupported hash");
  }
  if (p.type == kAlgRsa) {
    if (p.scheme == kAlgEcdsa) return r.fail("parameters.scheme", "ECDSA scheme on an RSA key");
    VEIL_ASSIGN_OR_RETURN(p.key_bits, r.u16("parameters.keyBits"));
    if (p.key_bits != 2048 && p.key_bits != 3072 && p.key_bits != 4096) {
      return r.fail("parameters.keyBits", fmt::format("{} (2048, 3072 or 4096 accepted)", p.key_bits));
    }
    VEIL_ASSIGN_OR_RETURN(p.exponent, r.u32("parameters.exponent"));
    VEIL_ASSIGN_OR_RETURN(p.modulus, r.tpm2b("unique.rsa", 512));
    if (p.modulus.size() * 8 != p.key_bits) return r.fail("unique.rsa", "modulus size does not match keyBits");
  } else {
    if (p.scheme == kAlgRsassa || p.scheme == kAlgRsapss) return r.fail("parameters.scheme", "RSA scheme on an ECC key");
    VEIL_ASSIGN_OR_RETURN(p.curve, r.u16("parameters.curveID"));
    if (p.curve != kEccNistP256 && p.curve != kEccNistP384) {
      return r.fail("parameters.curveID", fmt::format("curve 0x{:04x} (NIST P-256 or P-384 accepted)", p.curve));
    }
    VEIL_ASSIGN_OR_RETURN(uint16_t kdf, r.u16("parameters.kdf"));
    if (kdf != kAlgNull) return r.fail("parameters.kdf", "a signing key has no KDF");
    size_t n = p.curve == kEccNistP256 ? 32 : 48;
    VEIL_ASSIGN_OR_RETURN(p.x, r.tpm2b("unique.ecc.x", n));
    VEIL_ASSIGN_OR_RETURN(p.y, r.tpm2b("unique.ecc.y", n));
    if (p.x.size() != n || p.y.size() != n) return r.fail("unique.ecc", "point coordinates have the wrong size");
  }
  VEIL_TRY(r.done());
  p.raw.assign(data.begin(), data.end());
  return p;
}

Result<Public> parse_public_any(ByteView data) {
  if (data.size() >= 2 && ((size_t{data[0]} << 8) | data[1]) == data.size() - 2) {
    auto inner = parse_public(data.subspan(2));
    if (inner.ok()) return inner;
  }
  return parse_public(data);
}

Result<Bytes> object_name(const Public& pub) {
  VEIL_ASSIGN_OR_RETURN(auto alg, digest_alg(pub.name_alg));
  Bytes name = {static_cast<uint8_t>(pub.name_alg >> 8), static_cast<uint8_t>(pub.name_alg)};
  Bytes h = crypto::digest(alg, pub.raw);
  name.insert(name.end(), h.begin(), h.end());
  return name;
}

}  // namespace veil::attest::tpm
