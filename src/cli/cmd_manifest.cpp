// veil manifest create: propose a shard manifest for a sealed model (docs/manifest.md).
#include <charconv>
#include <cstdio>

#include "cli/command.h"
#include "crypto/crypto.h"
#include "pipeline/pipeline.h"
#include "sealed/sealed.h"

namespace veil::cli {
namespace {

struct ManifestCreateOptions {
  std::string model;
  uint32_t stages = 2;
  std::vector<std::string> endpoints;
  std::string policy;
  std::vector<std::string> stage_policies;  // "INDEX=FILE"
  std::string front_policy;
  std::string output;
};

// A policy file's text, once it parses as an attestation policy.
Result<std::string> read_policy_file(const std::string& option, const std::string& file) {
  VEIL_ASSIGN_OR_RETURN(std::string text, read_text_file(file, 1u << 20));
  if (auto parsed = attest::parse_policy(text); !parsed.ok()) {
    return std::move(parsed).error().wrap(option + " " + file);
  }
  return text;
}

Status manifest_create(const ManifestCreateOptions& o) {
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(o.model));
  VEIL_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  auto header = sealed::parse_header(file.view());
  if (!header.ok()) {
    if (path.extension() == ".gguf") {
      return make_error(ErrorCode::kUsage, "{}: a manifest describes a sealed model; seal it first with 'veil seal'",
                        path.string());
    }
    return std::move(header).error().wrap(path.string());
  }
  pipeline::ProposeOptions p;
  p.n_stages = o.stages;
  p.endpoints = o.endpoints;
  // Every policy must be valid before it is copied into the stages.
  if (!o.policy.empty()) {
    VEIL_ASSIGN_OR_RETURN(p.policy_json, read_policy_file("--policy", o.policy));
  }
  for (const std::string& arg : o.stage_policies) {
    const size_t eq = arg.find('=');
    uint32_t index = 0;
    const char* end = arg.data() + (eq == std::string::npos ? 0 : eq);
    if (eq == std::string::npos || eq == 0 || std::from_chars(arg.data(), end, index).ptr != end) {
      return make_error(ErrorCode::kUsage, "--stage-policy '{}': expected INDEX=FILE, e.g. 1=stage1-policy.json", arg);
    }
    if (p.stage_policy_json.count(index)) {
      return make_error(ErrorCode::kUsage, "--stage-policy: stage {} given twice", index);
    }
    VEIL_ASSIGN_OR_RETURN(p.stage_policy_json[index],
                          read_policy_file(fmt::format("--stage-policy {}", index), arg.substr(eq + 1)));
  }
  if (!o.front_policy.empty()) {
    VEIL_ASSIGN_OR_RETURN(p.front_policy_json, read_policy_file("--front-policy", o.front_policy));
  }
  auto digest = crypto::sha256(file.view());
  VEIL_ASSIGN_OR_RETURN(auto manifest, pipeline::propose_manifest(*header, digest, p));
  std::string json = pipeline::manifest_to_json(manifest);
  if (o.output.empty() || o.output == "-") {
    std::fputs(json.c_str(), stdout);
    return ok_status();
  }
  return write_file_atomic(o.output, as_bytes(json));
}

void setup(CLI::App& app, Runner& runner) {
  CLI::App* group = subcommand_group(app, "manifest", "Shard manifests for multi-enclave pipelines");
  auto o = std::make_shared<ManifestCreateOptions>();
  CLI::App* create = group->add_subcommand(
      "create", "Propose a manifest for a sealed model: balanced layer ranges, their weight hashes, endpoints");
  create->add_option("model", o->model, "Sealed model (.vsm); default: the -m resolution rules");
  create->add_option("--stages", o->stages, "Number of pipeline stages")->capture_default_str()->check(CLI::Range(1, 1024));
  create->add_option("--endpoints", o->endpoints, "host:port of each stage, in order (one per stage)")
      ->delimiter(',')
      ->required();
  create->add_option("--policy", o->policy,
                     "Attestation policy (JSON) the evidence of every stage without a --stage-policy must satisfy")
      ->check(CLI::ExistingFile);
  create->add_option("--stage-policy", o->stage_policies,
                     "INDEX=FILE: stage INDEX's own policy (repeatable), e.g. naming its SNP host_data or TDX "
                     "MRCONFIGID so the key broker tells the stages apart (docs/kbs.md)");
  create->add_option("--front-policy", o->front_policy,
                     "Attestation policy (JSON) the front's evidence must satisfy: every stage then accepts only "
                     "such a front (mutual attestation)")
      ->check(CLI::ExistingFile);
  create->add_option("-o,--output", o->output, "Write the manifest here (atomically) instead of stdout");
  create->footer("Example: veil manifest create model.vsm --stages 3 --endpoints 10.0.0.1:7400,10.0.0.2:7400,"
                 "10.0.0.3:7400 --policy stage-policy.json -o manifest.json");
  runner.on(create, [o] { return manifest_create(*o); });
}

VEIL_COMMAND(setup, 60);

}  // namespace
}  // namespace veil::cli
