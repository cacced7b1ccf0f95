// veil stage: serve one pipeline stage's layer range to the front (docs/pipeline.md).
#include <cstdio>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "channel/channel.h"
#include "cli/command.h"
#include "cli/model_source.h"
#include "crypto/crypto.h"
#include "engine/engine.h"
#include "pipeline/runtime.h"
#include "sealed/sealed.h"

namespace veil::cli {
namespace {

struct StageArgs {
  std::string manifest;
  uint32_t index = 0;
  std::string model;
  std::string listen;
  std::string front_policy;   // mutual attestation: the policy the front's evidence must satisfy
  ModelSourceOptions source;  // --kbs, --policy, --insecure-local-key, --tee, --sim-platform-key
  uint32_t threads = 1;
  uint32_t slots = 16;
  uint32_t ctx = 0;
  engine::KvType kv_type = engine::KvType::kF32;
};

// A sealed model must be the manifest's file, and this stage's range must hash to the manifest's value,
// before a key is asked for or a byte decrypted.
Status check_sealed_model(const std::filesystem::path& path, const pipeline::ShardManifest& m,
                          const pipeline::StageSpec& spec) {
  VEIL_ASSIGN_OR_RETURN(auto mapped, MappedFile::open(path));
  auto digest = crypto::sha256(mapped.view());
  if (!std::equal(digest.begin(), digest.end(), m.sealed_model_sha256.begin(), m.sealed_model_sha256.end())) {
    return make_error(ErrorCode::kSecurity, "{}: its SHA-256 is not the manifest's sealed_model_sha256", path.string());
  }
  VEIL_ASSIGN_OR_RETURN(auto header, sealed::parse_header(mapped.view()));
  if (header.model_id != m.model_id || header.model_version != m.model_version) {
    return make_error(ErrorCode::kSecurity, "{}: model {} version {}, the manifest says {} version {}", path.string(),
                      header.model_id, header.model_version, m.model_id, m.model_version);
  }
  VEIL_ASSIGN_OR_RETURN(Bytes range_hash, pipeline::range_weights_sha256(header, spec.layer_begin, spec.layer_end));
  if (range_hash != spec.weights_sha256) {
    return make_error(ErrorCode::kSecurity, "{}: layers [{}, {}) do not hash to stages[{}].weights_sha256",
                      path.string(), spec.layer_begin, spec.layer_end, spec.index);
  }
  return ok_status();
}

Status run_stage(StageArgs a) {
  // First, before the engine, channel or server threads start: they inherit the mask, so only the wait() at the
  // end receives SIGINT/SIGTERM and stops gracefully (one during start-up takes effect once started).
  StopSignals stop_signals;
  VEIL_ASSIGN_OR_RETURN(pipeline::ShardManifest manifest, pipeline::load_manifest(a.manifest));
  if (a.index >= manifest.stages.size()) {
    return make_error(ErrorCode::kUsage, "stage: --index {} is out of range ({} stages in {})", a.index,
                      manifest.stages.size(), a.manifest);
  }
  const pipeline::StageSpec& spec = manifest.stages[a.index];
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  if (sealed::is_sealed_model(path)) {
    VEIL_TRY(check_sealed_model(path, manifest, spec));
    a.source.layers = sealed::LayerRange{spec.layer_begin, spec.layer_end - 1};
  } else {
    spdlog::warn("stage: {} is a plain GGUF: development only (no sealed weights, no range hash check)", path.string());
  }
  VEIL_ASSIGN_OR_RETURN(std::shared_ptr<attest::Provider> provider, make_node_provider(a.source));
  VEIL_ASSIGN_OR_RETURN(std::shared_ptr<const gguf::File> file, open_model(path, a.source, provider));
  VEIL_ASSIGN_OR_RETURN(auto model, engine::Model::load(file, {.layers = {spec.layer_begin, spec.layer_end}}));

  pipeline::StageOptions so;
  so.threads = a.threads;
  so.max_slots = a.slots;
  so.n_ctx = a.ctx;
  so.kv_type = a.kv_type;
  so.listen = a.listen;
  so.channel.attester = channel::attester_from_provider(provider);
  if (!a.front_policy.empty() && manifest.front_policy) {
    return make_error(ErrorCode::kUsage, "stage: --front-policy and the manifest's front_policy are both given: keep one");
  }
  // The successor's evidence is checked against the manifest's policy for it (and, in mutual mode, the front's and
  // the predecessor's against theirs) with this collateral.
  VEIL_ASSIGN_OR_RETURN(so.collateral, peer_collateral(a.source));
  if (!a.front_policy.empty()) {
    // Mutual attestation for this stage only: its predecessor must then attest itself too (a manifest front_policy
    // tells every stage).
    VEIL_ASSIGN_OR_RETURN(so.front_policy, attest::load_policy(a.front_policy));
  } else if (!manifest.front_policy) {
    spdlog::warn("stage: no front policy (manifest front_policy or --front-policy): the front and the previous stage are not attested, any client that reaches {} may drive this stage",
                 a.listen.empty() ? spec.endpoint : a.listen);
  }

  VEIL_ASSIGN_OR_RETURN(auto server, pipeline::StageServer::start(manifest, a.index, model, std::move(so)));
  std::printf("veil stage: stage %u layers [%u, %u) on %s\n", a.index, spec.layer_begin, spec.layer_end,
              server->address().c_str());
  std::fflush(stdout);
  const int sig = stop_signals.wait();
  spdlog::warn("stage: signal {}: stopping", sig);
  server->stop();
  return ok_status();
}

void setup_stage(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<StageArgs>();
  CLI::App* sub = app.add_subcommand("stage", "Serve one pipeline stage (a layer range) to the front, over attested channels");
  sub->add_option("--manifest", a->manifest, "Shard manifest (docs/manifest.md)")->required()->check(CLI::ExistingFile);
  sub->add_option("--index", a->index, "This stage's index in the manifest")->required();
  add_model_option(sub, a->model);
  sub->add_option("--listen", a->listen, "Endpoint to listen on (default: the manifest's, e.g. tcp:0.0.0.0:7400)");
  sub->add_option("--front-policy", a->front_policy,
                  "Attestation policy (JSON) the front's evidence must satisfy (mutual attestation; the front runs "
                  "'veil serve --manifest ... --attest-to-stages'); prefer the manifest's front_policy")
      ->check(CLI::ExistingFile);
  add_model_source_options(sub, a->source);
  sub->add_option("-t,--threads", a->threads, "Inference threads")->capture_default_str();
  add_kv_type_option(sub, a->kv_type);
  sub->add_option("--slots", a->slots, "Sequences in flight (KV caches)")->capture_default_str();
  sub->add_option("-c,--ctx", a->ctx, "Context per sequence (default: the model's, at most 2048)");
  sub->footer("Example: veil stage --manifest cluster.json --index 1 -m model.vsm --kbs tcp:10.0.0.5:7100 "
              "--policy kbs-policy.json");
  runner.on(sub, [a]() { return run_stage(*a); });
}

VEIL_COMMAND(setup_stage, 61);

}  // namespace
}  // namespace veil::cli
