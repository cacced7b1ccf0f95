#include "attest/tpm_quote.h"

#include <openssl/err.h>

#include "attest/tpm_x509.h"

namespace veil::attest::tpm {

Result<AkKey> ak_from_public(const Public& pub) {
  constexpr uint32_t kNeeded = kAttrFixedTpm | kAttrRestricted | kAttrSign;
  if ((pub.attributes & kNeeded) != kNeeded) {
    return make_error(ErrorCode::kSecurity,
                      "TPM AK: objectAttributes 0x{:08x} lack fixedTPM, restricted or sign (not an attestation key)",
                      pub.attributes);
  }
  AkKey ak;
  ak.scheme = pub.scheme;
  ak.scheme_hash = pub.scheme_hash;
  VEIL_ASSIGN_OR_RETURN(Bytes name, object_name(pub));
  ak.name = name;
  if (pub.type == kAlgRsa) {
    ak.rsa = true;
    ak.modulus = pub.modulus;
    uint32_t e = pub.exponent == 0 ? 65537u : pub.exponent;
    Bytes eb;
    for (int shift = 24; shift >= 0; shift -= 8) {
      uint8_t b = static_cast<uint8_t>(e >> shift);
      if (!eb.empty() || b != 0) eb.push_back(b);
    }
    ak.exponent = eb;
  } else {
    ak.rsa = false;
    ak.curve = pub.curve == kEccNistP256 ? crypto::EcCurve::kP256 : crypto::EcCurve::kP384;
    ak.point = {0x04};
    ak.point.insert(ak.point.end(), pub.x.begin(), pub.x.end());
    ak.point.insert(ak.point.end(), pub.y.begin(), pub.y.end());
  }
  return ak;
}

Result<AkKey> ak_from_pkey(EVP_PKEY* key, std::string_view what) {
  AkKey ak;
  if (key && EVP_PKEY_base_id(key) == EVP_PKEY_RSA) {
    VEIL_ASSIGN_OR_RETURN(auto ne, x509::rsa_numbers(key, what));
    ak.rsa = true;
    ak.modulus = ne.first;
    ak.exponent = ne.second;
    return ak;
  }
  VEIL_ASSIGN_OR_RETURN(auto pt, x509::ec_point(key, what));
  ak.rsa = false;
  if (pt.first == "P-256") ak.curve = crypto::EcCurve::kP256;
  else if (pt.first == "P-384") ak.curve = crypto::EcCurve::kP384;
  else return make_error(ErrorCode::kUnsupported, "{}: EC curve {} is not supported", what, pt.first);
  ak.point = pt.second;
  return ak;
}

Result<AkKey> ak_from_spki(ByteView der) {
  if (der.empty() || der.size() > 4096) return make_error(ErrorCode::kCorrupt, "AK public key: {} bytes", der.size());
  const unsigned char* p = der.data();
  x509::PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  ERR_clear_error();
  if (!key || static_cast<size_t>(p - der.data()) != der.size()) {
    return make_error(ErrorCode::kCorrupt, "AK public key: not a DER SubjectPublicKeyInfo");
  }
  return ak_from_pkey(key.get(), "AK public key");
}

bool same_key(const AkKey& a, const AkKey& b) {
  if (a.rsa != b.rsa) return false;
  auto strip = [](const Bytes& v) {
    size_t i = 0;
    while (i < v.size() && v[i] == 0) ++i;
    return Bytes(v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  };
  if (a.rsa) return strip(a.modulus) == strip(b.modulus) && strip(a.exponent) == strip(b.exponent);
  return a.curve == b.curve && a.point == b.point;
}

Result<VerifiedQuote> verify_quote(ByteView attest_bytes, const Signature& sig, const AkKey& ak,
                                   ByteView expected_nonce, const PcrBanks& pcrs) {
  VEIL_ASSIGN_OR_RETURN(Attest attest, parse_attest(attest_bytes));
  // Signature.
  if (ak.scheme != kAlgNull && (sig.sig_alg != ak.scheme || sig.hash_alg != ak.scheme_hash)) {
    return make_error(ErrorCode::kSecurity,
                      "TPM quote: signature scheme 0x{:04x}/0x{:04x} differs from the AK's scheme 0x{:04x}/0x{:04x}",
                      sig.sig_alg, sig.hash_alg, ak.scheme, ak.scheme_hash);
  }
  VEIL_ASSIGN_OR_RETURN(auto halg, digest_alg(sig.hash_alg));
  if (halg == crypto::DigestAlg::kSha1) {
    return make_error(ErrorCode::kSecurity, "TPM quote: SHA-1 signatures are refused");
  }
  Bytes digest = crypto::digest(halg, attest_bytes);
  Status st;
  if (sig.sig_alg == kAlgRsassa || sig.sig_alg == kAlgRsapss) {
    if (!ak.rsa) return make_error(ErrorCode::kSecurity, "TPM quote: RSA signature but the AK is an EC key");
    st = crypto::rsa_verify_digest(sig.sig_alg == kAlgRsassa ? crypto::RsaPadding::kPkcs1v15 : crypto::RsaPadding::kPss,
                                   ak.modulus, ak.exponent, halg, digest, sig.rsa);
  } else if (sig.sig_alg == kAlgEcdsa) {
    if (ak.rsa) return make_error(ErrorCode::kSecurity, "TPM quote: ECDSA signature but the AK is an RSA key");
    size_t n = crypto::ec_curve_bytes(ak.curve);
    if (sig.ecc_r.size() > n || sig.ecc_s.size() > n) {
      return make_error(ErrorCode::kSecurity, "TPM quote: ECDSA signature components are too long for the AK's curve");
    }
    Bytes r(n - sig.ecc_r.size(), 0), s(n - sig.ecc_s.size(), 0);
    r.insert(r.end(), sig.ecc_r.begin(), sig.ecc_r.end());
    s.insert(s.end(), sig.ecc_s.begin(), sig.ecc_s.end());
    st = crypto::ecdsa_verify_digest(ak.curve, ak.point, digest, r, s);
  } else {
    return make_error(ErrorCode::kUnsupported, "TPM quote: signature algorithm 0x{:04x}", sig.sig_alg);
  }
  if (!st.ok()) {
    return make_error(ErrorCode::kSecurity, "TPM quote: signature over TPMS_ATTEST does not verify with the AK ({})",
                      st.error().message());
  }
  // qualifiedSigner is the AK's Qualified Name (Part 1 §16: it hashes in every ancestor's name), which
  // the verifier cannot recompute without the hierarchy; the signature check above identifies the AK.
  // Freshness.
  if (attest.extra_data.size() != expected_nonce.size() || !ct_equal(attest.extra_data, expected_nonce)) {
    return make_error(ErrorCode::kSecurity, "TPM quote: extraData ({} bytes) does not equal the expected nonce ({} bytes)",
                      attest.extra_data.size(), expected_nonce.size());
  }
  // PCR digest over the values given, in selection order.
  VerifiedQuote out;
  Bytes concat;
  for (const PcrSelection& sel : attest.selections) {
    VEIL_ASSIGN_OR_RETURN(auto bank_alg, digest_alg(sel.hash_alg));
    auto bank = pcrs.find(sel.hash_alg);
    for (uint32_t idx : sel.pcrs) {
      const Bytes* value = nullptr;
      if (bank != pcrs.end()) {
        auto it = bank->second.find(idx);
        if (it != bank->second.end()) value = &it->second;
      }
      if (!value) {
        return make_error(ErrorCode::kCorrupt, "TPM quote: the evidence lacks the value of quoted PCR {} ({} bank)", idx,
                          bank_name(sel.hash_alg));
      }
      if (value->size() != crypto::digest_size(bank_alg)) {
        return make_error(ErrorCode::kCorrupt, "TPM quote: PCR {} ({} bank) value has {} bytes, expected {}", idx,
                          bank_name(sel.hash_alg), value->size(), crypto::digest_size(bank_alg));
      }
      concat.insert(concat.end(), value->begin(), value->end());
      out.quoted[sel.hash_alg][idx] = *value;
    }
  }
  Bytes pcr_digest = crypto::digest(halg, concat);
  if (pcr_digest != attest.pcr_digest) {
    return make_error(ErrorCode::kSecurity,
                      "TPM quote: pcrDigest does not match the {} digest of the PCR values in the evidence",
                      bank_name(sig.hash_alg));
  }
  out.attest = std::move(attest);
  return out;
}

Status check_event_log(const EventLog& log, const PcrBanks& quoted) {
  size_t shared = 0;
  for (const auto& [bank, values] : quoted) {
    if (!log.digest_sizes.count(bank)) continue;
    ++shared;
    VEIL_ASSIGN_OR_RETURN(auto replayed, replay(log, bank));
    for (const auto& [idx, value] : replayed) {
      auto q = values.find(idx);
      if (q == values.end()) continue;  // not quoted: the log says nothing verified about it
      if (q->second != value) {
        return make_error(ErrorCode::kSecurity, "TPM event log: replay of PCR {} ({} bank) does not match the quote",
                          idx, bank_name(bank));
      }
    }
  }
  if (shared == 0) {
    return make_error(ErrorCode::kSecurity, "TPM event log: no PCR bank of the log is covered by the quote");
  }
  return ok_status();
}

}  // namespace veil::attest::tpm
