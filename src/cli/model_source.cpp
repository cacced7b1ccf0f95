#include "cli/model_source.h"

#include <cstdlib>

#include <spdlog/spdlog.h>

#include "attest/sim.h"
#include "channel/channel.h"
#include "kbs/kbs.h"
#include "sealed/sealed.h"

namespace veil::cli {

void add_model_source_options(CLI::App* sub, ModelSourceOptions& o, const std::string& policy_flag) {
  sub->add_option("--kbs", o.kbs, "Key broker address for a sealed model (.vsm), e.g. tcp:10.0.0.5:7100");
  sub->add_option(policy_flag, o.kbs_policy, "Attestation policy (JSON) the key broker's evidence must satisfy");
  sub->add_option("--insecure-local-key", o.insecure_local_key,
                  "Development only: read a sealed model's key from this file instead of the key broker");
  sub->add_option("--tee", o.tee, "This node's TEE provider: sim, tdx, sev-snp, nitro, tpm")->capture_default_str();
  sub->add_option("--sim-platform-key", o.sim_platform_key,
                  "sim: platform key file (default: created as sim-platform.key in $VEIL_DATA_DIR or ~/.veil)");
  sub->add_option("--sim-config", o.sim_config,
                  "sim: configuration file folded into the measurement (e.g. one per pipeline stage, so the key broker "
                  "and peers can tell stages apart)");
}

std::filesystem::path veil_data_dir() {
  if (const char* d = std::getenv("VEIL_DATA_DIR"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home && *home ? home : ".") / ".veil";
}

namespace {

attest::ProviderOptions provider_options(const ModelSourceOptions& o) {
  attest::ProviderOptions popts;
  if (o.tee == "sim") {
    popts.sim_platform_key =
        o.sim_platform_key.empty() ? veil_data_dir() / "sim-platform.key" : std::filesystem::path(o.sim_platform_key);
    popts.sim_create_key = o.sim_platform_key.empty();
    popts.sim_config = o.sim_config;
  }
  return popts;
}

}  // namespace

Result<std::shared_ptr<attest::Provider>> make_node_provider(const ModelSourceOptions& o) {
  attest::ProviderOptions popts = provider_options(o);
  if (o.tee == "sim") {
    std::error_code ec;
    std::filesystem::create_directories(popts.sim_platform_key.parent_path(), ec);
    spdlog::warn("using the SIMULATED TEE: its evidence says so, and verifiers refuse it unless a policy allows it");
  }
  VEIL_ASSIGN_OR_RETURN(auto provider, attest::make_provider(o.tee, popts));
  return std::shared_ptr<attest::Provider>(std::move(provider));
}

Result<attest::Collateral> peer_collateral(const ModelSourceOptions& o) {
  attest::Collateral collateral;
  if (o.tee == "sim") {
    VEIL_ASSIGN_OR_RETURN(Bytes pub, attest::sim_platform_public_key(provider_options(o).sim_platform_key, false));
    collateral.items["sim_platform_public_key"] = pub;
  }
  return collateral;
}

Result<std::shared_ptr<const gguf::File>> open_model(const std::filesystem::path& path, const ModelSourceOptions& o,
                                                     std::shared_ptr<attest::Provider> provider) {
  if (!sealed::is_sealed_model(path)) {
    if (!o.insecure_local_key.empty() || !o.kbs.empty()) {
      return make_error(ErrorCode::kUsage, "{}: is not a sealed model; --kbs and --insecure-local-key apply to .vsm files",
                        path.string());
    }
    VEIL_ASSIGN_OR_RETURN(auto f, gguf::File::open(path));
    return std::make_shared<const gguf::File>(std::move(f));
  }
  VEIL_ASSIGN_OR_RETURN(auto mapped, MappedFile::open(path));
  VEIL_ASSIGN_OR_RETURN(auto header, sealed::parse_header(mapped.view()));
  sealed::LoadOptions lo;
  lo.expected_model_id = header.model_id;
  lo.expected_version = header.model_version;
  lo.layers = o.layers;
  lo.metadata_only = o.metadata_only;
  auto opened = [](sealed::LoadedModel loaded) { return std::make_shared<const gguf::File>(std::move(loaded.gguf)); };
  if (!o.insecure_local_key.empty()) {
    if (!o.kbs.empty()) return make_error(ErrorCode::kUsage, "--kbs and --insecure-local-key exclude each other");
    spdlog::warn("sealed model key read from a local file (--insecure-local-key): development only");
    VEIL_ASSIGN_OR_RETURN(SecretBytes key, sealed::read_key_file(o.insecure_local_key));
    VEIL_ASSIGN_OR_RETURN(auto loaded, sealed::load_sealed_model(path, key, lo));
    return opened(std::move(loaded));
  }
  if (o.kbs.empty()) {
    return make_error(ErrorCode::kUsage,
                      "{}: a sealed model needs its key: --kbs ADDRESS with --policy FILE (or, for development only, "
                      "--insecure-local-key FILE)",
                      path.string());
  }
  if (o.kbs_policy.empty()) {
    return make_error(ErrorCode::kUsage, "{}: --kbs needs --policy FILE (how the key broker is verified)", path.string());
  }
  const bool partial = o.layers || o.metadata_only;
  if (partial && header.format_version == sealed::kFormatVersion1) {
    // Fail closed: a format-1 file has one key for every layer, and a stage or front must not hold the whole model.
    return make_error(ErrorCode::kSecurity,
                      "{}: sealed format 1 has one key for the whole model, so the broker cannot release only {}: "
                      "re-seal it with this veil (format 2)",
                      path.string(),
                      o.layers ? fmt::format("layers {}..{}", o.layers->first, o.layers->last) : "the metadata");
  }
  VEIL_ASSIGN_OR_RETURN(auto policy, attest::load_policy(o.kbs_policy));
  if (!provider) {
    VEIL_ASSIGN_OR_RETURN(provider, make_node_provider(o));
  }
  // A simulated broker is trusted only through the same platform key, and only if the policy allows sim.
  VEIL_ASSIGN_OR_RETURN(attest::Collateral collateral, peer_collateral(o));
  auto attester = channel::attester_from_provider(provider);
  auto broker_verifier = channel::verifier_from_policy(policy, collateral);
  if (partial) {
    // A pipeline stage asks for its range's keys only: it never holds a key to another stage's layers. A front
    // asks for the metadata only: it holds no layer key at all.
    kbs::RangeRequest range;
    range.metadata_only = o.metadata_only;
    if (o.layers) {
      range = {o.layers->first, o.layers->last, sealed::layer_count(header), sealed::has_tied_embeddings(header)};
    }
    VEIL_ASSIGN_OR_RETURN(auto keys, kbs::fetch_range_keys(o.kbs, header.model_id, header.model_version, range,
                                                           attester, broker_verifier));
    spdlog::info("sealed model {}: the broker released {}", path.string(), keys.describe());
    VEIL_ASSIGN_OR_RETURN(auto loaded, sealed::load_sealed_model(path, keys, lo));
    return opened(std::move(loaded));
  }
  VEIL_ASSIGN_OR_RETURN(SecretBytes key, kbs::fetch_model_key(o.kbs, header.model_id, header.model_version, attester,
                                                               broker_verifier));
  VEIL_ASSIGN_OR_RETURN(auto loaded, sealed::load_sealed_model(path, key, lo));
  return opened(std::move(loaded));
}

}  // namespace veil::cli
