// TEE-derived keys: HKDF over the provider's sealing root and the measurement.
#include <chrono>

#include "attest/attest.h"
#include "sealed/sealed.h"

namespace veil::sealed {

Result<SecretBytes> derive_key(attest::Provider& provider, std::string_view purpose,
                               const attest::Collateral* collateral) {
  if (purpose.empty() || purpose.size() > 256) {
    return make_error(ErrorCode::kInvalidArgument, "derive_key: purpose must be 1..256 characters");
  }
  auto root = provider.sealing_root();
  if (!root.ok()) return std::move(root).error().wrap("derive_key: sealing root");
  if (root->size() < 16) {
    return make_error(ErrorCode::kSecurity, "derive_key: the provider's sealing root is {} bytes (need >= 16)",
                      root->size());
  }
  Bytes measurement_digest;
  if (collateral != nullptr) {
    attest::ReportData rd{};
    auto bind = crypto::sha512(as_bytes(fmt::format("veil-derive-key-v1 {}", purpose)));
    std::copy(bind.begin(), bind.end(), rd.begin());
    auto evidence = provider.quote(rd);
    if (!evidence.ok()) return std::move(evidence).error().wrap("derive_key: quoting the measurement");
    const attest::Verifier* v = attest::verifier_for(provider.type());
    if (v == nullptr) {
      return make_error(ErrorCode::kUnsupported, "derive_key: no verifier for TEE type {}",
                        attest::tee_type_name(provider.type()));
    }
    auto claims = v->verify(*evidence, *collateral, std::chrono::system_clock::now());
    if (!claims.ok()) return std::move(claims).error().wrap("derive_key: verifying the provider's own evidence");
    if (claims->report_data != rd) {
      return make_error(ErrorCode::kSecurity, "derive_key: the provider's evidence does not bind the request");
    }
    if (claims->measurements.empty()) {
      return make_error(ErrorCode::kSecurity, "derive_key: the provider's evidence carries no measurement");
    }
    crypto::Hasher h(crypto::HashAlg::kSha256);
    for (const auto& [name, value] : claims->measurements) {  // std::map: sorted by name
      h.update(as_bytes(name));
      h.update(Bytes{0});
      h.update(value);
      h.update(Bytes{0});
    }
    measurement_digest = h.finish();
  }
  Bytes info = to_bytes(attest::tee_type_name(provider.type()));
  info.push_back(0);
  info.insert(info.end(), measurement_digest.begin(), measurement_digest.end());
  info.push_back(0);
  info.insert(info.end(), purpose.begin(), purpose.end());
  return crypto::hkdf(crypto::HashAlg::kSha256, as_bytes("veil-derive-key-v1"), root->view(), info, 32);
}

}  // namespace veil::sealed
