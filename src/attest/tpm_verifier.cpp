// The "tpm" verifier: Veil's TPM 2.0 evidence bundle (tpm_bundle.h). Order of checks: bundle
// structure -> AK is a restricted fixedTPM signing key -> AK trusted through the collateral (a pinned
// TPMT_PUBLIC "tpm_ak_public" and/or an AK certificate chaining to "tpm_ak_ca"; neither: refused) ->
// every quote (tpm_quote.h) with extraData = SHA-256(report_data) -> event log replay when present.
#include <openssl/x509v3.h>

#include "attest/formats.h"
#include "attest/tpm_bundle.h"
#include "attest/tpm_x509.h"

namespace veil::attest::tpm {
namespace {

Status check_ak_certificate(const Bundle& bundle, const AkKey& ak, const Bytes& ca_item,
                            std::chrono::system_clock::time_point now) {
  if (!bundle.ak_cert) {
    return make_error(ErrorCode::kSecurity, "tpm verifier: collateral tpm_ak_ca is given but the evidence has no ak_cert");
  }
  VEIL_ASSIGN_OR_RETURN(x509::CertPtr cert, x509::parse_der(*bundle.ak_cert, "tpm evidence ak_cert"));
  VEIL_ASSIGN_OR_RETURN(auto cas, x509::parse_bundle(ca_item, "collateral tpm_ak_ca"));
  std::vector<X509*> roots, inter;
  for (auto& c : cas) {
    (X509_check_issued(c.get(), c.get()) == X509_V_OK ? roots : inter).push_back(c.get());
  }
  if (roots.empty()) return make_error(ErrorCode::kCorrupt, "collateral tpm_ak_ca: no self-signed root certificate");
  Status last = make_error(ErrorCode::kSecurity, "tpm verifier: AK certificate does not chain to tpm_ak_ca");
  bool chained = false;
  for (X509* root : roots) {
    last = x509::verify_chain(cert.get(), inter, root, now, "tpm evidence ak_cert");
    if (last.ok()) { chained = true; break; }
  }
  if (!chained) return last;
  x509::PkeyPtr key = x509::public_key(cert.get());
  VEIL_ASSIGN_OR_RETURN(AkKey cert_key, ak_from_pkey(key.get(), "tpm evidence ak_cert"));
  if (!same_key(cert_key, ak)) {
    return make_error(ErrorCode::kSecurity, "tpm verifier: the AK certificate's key is not the evidence's AK");
  }
  return ok_status();
}

class TpmVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kTpm; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral,
                        std::chrono::system_clock::time_point now) const override {
    if (evidence.type != TeeType::kTpm) {
      return make_error(ErrorCode::kInvalidArgument, "tpm verifier: evidence type is {}", tee_type_name(evidence.type));
    }
    VEIL_ASSIGN_OR_RETURN(Bundle bundle, bundle_from_json(as_chars(evidence.data)));
    VEIL_ASSIGN_OR_RETURN(Public pub, parse_public(bundle.ak_public));
    VEIL_ASSIGN_OR_RETURN(AkKey ak, ak_from_public(pub));
    bool trusted = false;
    if (const Bytes* pinned = collateral.find(kAkPublicItem)) {
      VEIL_ASSIGN_OR_RETURN(Public pinned_pub, parse_public_any(*pinned));
      if (pinned_pub.raw.size() != pub.raw.size() || !ct_equal(pinned_pub.raw, pub.raw)) {
        return make_error(ErrorCode::kSecurity, "tpm verifier: the evidence's AK is not the pinned AK (collateral {})",
                          kAkPublicItem);
      }
      trusted = true;
    }
    if (const Bytes* ca = collateral.find(kAkCaItem)) {
      VEIL_TRY(check_ak_certificate(bundle, ak, *ca, now));
      trusted = true;
    }
    if (!trusted) {
      return make_error(ErrorCode::kSecurity, "tpm verifier: no trust anchor for the AK (collateral {} or {} required)",
                        kAkPublicItem, kAkCaItem);
    }
    Bytes nonce = qualifying_data(bundle.report_data);
    PcrBanks quoted;
    uint64_t firmware = 0;
    for (size_t i = 0; i < bundle.quotes.size(); ++i) {
      auto sig = parse_signature(bundle.quotes[i].signature);
      if (!sig.ok()) return Error(sig.error()).wrap(fmt::format("tpm evidence quotes[{}]", i));
      auto q = verify_quote(bundle.quotes[i].attest, *sig, ak, nonce, bundle.pcrs);
      if (!q.ok()) return Error(q.error()).wrap(fmt::format("tpm evidence quotes[{}]", i));
      for (auto& [bank, values] : q->quoted) {
        for (auto& [idx, v] : values) quoted[bank][idx] = v;
      }
      firmware = q->attest.firmware_version;
    }
    if (bundle.event_log) {
      auto log = parse_event_log(*bundle.event_log);
      if (!log.ok()) return Error(log.error()).wrap("tpm evidence event_log");
      VEIL_TRY(check_event_log(*log, quoted));
    }
    Claims claims;
    claims.type = TeeType::kTpm;
    claims.report_data = bundle.report_data;
    uint16_t primary = quoted.count(kAlgSha256) ? kAlgSha256 : quoted.begin()->first;
    for (const auto& [bank, values] : quoted) {
      for (const auto& [idx, v] : values) {
        std::string name = bank == primary ? fmt::format("pcr{}", idx) : fmt::format("{}_pcr{}", bank_name(bank), idx);
        claims.measurements[name] = v;
      }
    }
    claims.svns["tpm_firmware_version"] = firmware;
    claims.platform_id = *ak.name;
    return claims;
  }
};

}  // namespace
}  // namespace veil::attest::tpm

namespace veil::attest {
std::unique_ptr<Verifier> make_tpm_verifier() { return std::make_unique<tpm::TpmVerifier>(); }
}  // namespace veil::attest
