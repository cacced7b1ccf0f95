// The one table from TEE types and provider names to implementations. Keep it flat: one line per type.
#include "attest/formats.h"

namespace veil::attest {

namespace {

struct VerifierEntry {
  TeeType type;
  std::unique_ptr<Verifier> (*make)();
};

constexpr VerifierEntry kVerifiers[] = {
    {TeeType::kSim, make_sim_verifier},
    {TeeType::kTdx, make_tdx_verifier},
    {TeeType::kSevSnp, make_snp_verifier},
    {TeeType::kNitro, make_nitro_verifier},
    {TeeType::kTpm, make_tpm_verifier},
    {TeeType::kAzSnpVtpm, make_az_snp_vtpm_verifier},
    {TeeType::kAzTdxVtpm, make_az_tdx_vtpm_verifier},
};

struct ProviderEntry {
  const char* name;
  Result<std::unique_ptr<Provider>> (*make)(const ProviderOptions&);
};

constexpr ProviderEntry kProviders[] = {
    {"sim", make_sim_provider},
    {"tpm", make_tpm_provider},
    {"nitro", make_nitro_provider},
    {"tdx", make_tdx_provider},
    {"sev-snp", make_snp_provider},
};

}  // namespace

const Verifier* verifier_for(TeeType type) {
  // Built once, on first use (thread-safe static initialisation); verifiers are stateless.
  static const std::vector<std::unique_ptr<Verifier>> instances = [] {
    std::vector<std::unique_ptr<Verifier>> v;
    for (const auto& e : kVerifiers) v.push_back(e.make());
    return v;
  }();
  for (const auto& v : instances)
    if (v->type() == type) return v.get();
  return nullptr;
}

Result<std::unique_ptr<Provider>> make_provider(std::string_view name, const ProviderOptions& options) {
  for (const auto& e : kProviders)
    if (name == e.name) return e.make(options);
  return make_error(ErrorCode::kUnsupported, "attestation provider '{}' is not available", name.substr(0, 64));
}

}  // namespace veil::attest
