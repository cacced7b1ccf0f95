// veil kbs: the key broker — store model keys, release them to attested nodes, audit (docs/kbs.md).
#include <algorithm>
#include <filesystem>
#include <cstdio>
#include <map>
#include <string>

#include "attest/attest.h"
#include "attest/sim.h"
#include "channel/channel.h"
#include "cli/command.h"
#include "kbs/kbs.h"
#include "pipeline/pipeline.h"
#include "sealed/sealed.h"

namespace veil::cli {
namespace {

struct KbsArgs {
  std::string db;
  std::string master_key;
  bool master_from_tee = false;
  std::string tee;                       // provider for the broker's own evidence / derived master key
  std::string sim_platform_key;
  std::string sim_config;
  bool sim_create_key = false;
  std::vector<std::string> collateral;   // NAME=FILE
  std::string listen = "tcp:127.0.0.1:7400";
  std::string model_id;
  uint64_t version = 0;
  std::string policy;
  std::string key_file;
  std::string sealed_model;              // add-key: the .vsm the key seals (its layer count is recorded)
  std::string manifest;                  // add-key: the shard manifest whose stage table is recorded
  std::string reason;
  std::string out;
};

Result<std::unique_ptr<attest::Provider>> make_tee(const KbsArgs& a) {
  if (a.tee.empty()) return Error(ErrorCode::kUsage, "kbs: --tee is required (e.g. --tee sim)");
  attest::ProviderOptions o;
  o.sim_platform_key = a.sim_platform_key;
  o.sim_config = a.sim_config;
  o.sim_create_key = a.sim_create_key;
  if (a.tee == "sim" && !a.sim_create_key && !a.sim_platform_key.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(a.sim_platform_key, ec) && !ec) {
      // Named here with this command's flag (the provider's own hint names `veil attest quote`'s --create-key).
      return make_error(ErrorCode::kNotFound, "kbs: sim platform key {} does not exist (create it with --sim-create-key)",
                        a.sim_platform_key);
    }
  }
  return attest::make_provider(a.tee, o);
}

Result<SecretBytes> master_key(const KbsArgs& a) {
  if (a.master_from_tee == !a.master_key.empty()) {
    return Error(ErrorCode::kUsage, "kbs: give exactly one of --master-key FILE or --master-key-from-tee");
  }
  if (!a.master_key.empty()) return kbs::read_master_key(a.master_key);
  VEIL_ASSIGN_OR_RETURN(auto tee, make_tee(a));
  return sealed::derive_key(*tee, "kbs-master-key");
}

Result<std::unique_ptr<kbs::Broker>> open_broker(const KbsArgs& a) {
  if (a.db.empty()) return Error(ErrorCode::kUsage, "kbs: --db is required");
  VEIL_ASSIGN_OR_RETURN(SecretBytes mk, master_key(a));
  return kbs::Broker::open(a.db, mk);
}

Result<attest::Collateral> collateral(const KbsArgs& a) {
  attest::Collateral c;
  for (const std::string& item : a.collateral) {
    size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return make_error(ErrorCode::kUsage, "kbs: --collateral '{}' must be NAME=FILE", item);
    }
    VEIL_ASSIGN_OR_RETURN(Bytes data, read_file(item.substr(eq + 1), 16u << 20));
    c.items[item.substr(0, eq)] = std::move(data);
  }
  // Simulated TEE on this machine: trust its own simulated platform key unless told otherwise.
  if (a.tee == "sim" && !a.sim_platform_key.empty() && !c.find("sim_platform_public_key")) {
    auto pub = attest::sim_platform_public_key(a.sim_platform_key, false);
    if (!pub.ok()) return std::move(pub).error().wrap("kbs");
    c.items["sim_platform_public_key"] = std::move(*pub);
  }
  return c;
}

Status run_gen_master(const KbsArgs& a) {
  if (a.out.empty()) return Error(ErrorCode::kUsage, "kbs gen-master-key: FILE is required");
  if (std::filesystem::exists(a.out)) {
    return make_error(ErrorCode::kInvalidArgument, "kbs gen-master-key: {} already exists; not overwriting it", a.out);
  }
  VEIL_TRY(sealed::write_key_file(a.out, sealed::generate_model_key()));
  std::printf("wrote a new broker master key to %s (mode 0600)\n", a.out.c_str());
  return ok_status();
}

// What the broker learns from --sealed-model, after checking the file is this model, version and key id: its layer
// count (range requests must name it) and its SHA-256 (a manifest must name it).
struct SealedFacts {
  std::optional<uint32_t> layers;
  std::optional<crypto::Sha256Digest> sha256;
};

Result<SealedFacts> sealed_facts(const KbsArgs& a, ByteView key_id, std::string_view who) {
  SealedFacts f;
  if (a.sealed_model.empty()) return f;
  VEIL_ASSIGN_OR_RETURN(auto mapped, MappedFile::open(a.sealed_model));
  VEIL_ASSIGN_OR_RETURN(auto header, sealed::parse_header(mapped.view()));
  if (header.model_id != a.model_id || header.model_version != a.version || !ct_equal(header.key_id, key_id)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: {} is model '{}' version {} sealed under key id {}, not this model, version and key", who,
                      a.sealed_model, header.model_id, header.model_version, to_hex(header.key_id));
  }
  if (sealed::layer_count(header) > 0) f.layers = sealed::layer_count(header);
  if (!a.manifest.empty()) f.sha256 = crypto::sha256(mapped.view());
  return f;
}

// The shard manifest's stage table for the broker (docs/kbs.md, "Stage binding"), after checking the manifest is
// for this model and version, for the sealed file when one was given, and agrees with its layer count.
Result<kbs::StageTable> stage_table_from_manifest(const KbsArgs& a, const SealedFacts& sealed, std::string_view who) {
  VEIL_ASSIGN_OR_RETURN(pipeline::ShardManifest m, pipeline::load_manifest(a.manifest));
  auto bad = [&](std::string why) {
    return make_error(ErrorCode::kInvalidArgument, "{}: manifest {}: {}", who, a.manifest, why);
  };
  if (m.model_id != a.model_id || m.model_version != a.version) {
    return bad(fmt::format("it is for model '{}' version {}, not '{}' version {}", m.model_id, m.model_version,
                           a.model_id, a.version));
  }
  if (sealed.sha256 && !ct_equal(m.sealed_model_sha256, *sealed.sha256)) {
    return bad(fmt::format("its sealed_model_sha256 is not the SHA-256 of {}", a.sealed_model));
  }
  if (sealed.layers && *sealed.layers != m.n_layers) {
    return bad(fmt::format("n_layers {} but the model has {}", m.n_layers, *sealed.layers));
  }
  kbs::StageTable table;
  for (const pipeline::StageSpec& s : m.stages) {
    table.stages.push_back({s.layer_begin, s.layer_end - 1, s.policy_json.dump()});
  }
  if (m.front_policy) table.front_policy_json = m.front_policy_json.dump();
  return table;
}

Status run_add_key(const KbsArgs& a) {
  if (a.model_id.empty() || a.policy.empty() || a.key_file.empty()) {
    return Error(ErrorCode::kUsage, "kbs add-key: --model-id, --version, --policy and --key-file are required");
  }
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(std::string policy, read_text_file(a.policy, 1 << 20));
  VEIL_ASSIGN_OR_RETURN(SecretBytes key, sealed::read_key_file(a.key_file));
  VEIL_ASSIGN_OR_RETURN(SealedFacts sealed, sealed_facts(a, sealed::key_id_for(key.view()), "kbs add-key"));
  std::optional<kbs::StageTable> stages;
  if (!a.manifest.empty()) {
    VEIL_ASSIGN_OR_RETURN(stages, stage_table_from_manifest(a, sealed, "kbs add-key"));
    // Without the sealed file the manifest's layer count is recorded (the stages' requests must name it).
    if (!sealed.layers) sealed.layers = stages->stages.back().last_layer + 1;
  }
  VEIL_TRY(broker->add_key(a.model_id, a.version, key, policy, sealed.layers, stages));
  std::printf("stored the key for model %s version %llu (key id %s)%s\n", a.model_id.c_str(),
              static_cast<unsigned long long>(a.version), to_hex(sealed::key_id_for(key.view())).c_str(),
              stages ? fmt::format(", bound to the manifest's {} stages", stages->stages.size()).c_str() : "");
  return ok_status();
}

// A stage table for a key already in the broker (e.g. from 'veil seal --kbs-db'), checked against the recorded layer
// count by the broker and, with --sealed-model, against that file.
Status run_bind_stages(const KbsArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(auto keys, broker->list_keys());
  auto it = std::find_if(keys.begin(), keys.end(),
                         [&](const kbs::KeyRecord& k) { return k.model_id == a.model_id && k.version == a.version; });
  if (it == keys.end()) {
    return make_error(ErrorCode::kNotFound, "kbs bind-stages: no key for model '{}' version {}", a.model_id, a.version);
  }
  VEIL_ASSIGN_OR_RETURN(SealedFacts sealed, sealed_facts(a, it->key_id, "kbs bind-stages"));
  VEIL_ASSIGN_OR_RETURN(kbs::StageTable stages, stage_table_from_manifest(a, sealed, "kbs bind-stages"));
  VEIL_TRY(broker->bind_stages(a.model_id, a.version, stages));
  std::printf("bound the key for model %s version %llu to the manifest's %zu stages\n", a.model_id.c_str(),
              static_cast<unsigned long long>(a.version), stages.stages.size());
  return ok_status();
}

Status run_list(const KbsArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(auto keys, broker->list_keys());
  std::string out;
  for (const auto& k : keys) {
    VEIL_ASSIGN_OR_RETURN(uint64_t hi, broker->highest_released(k.model_id));
    out += fmt::format("{}\tversion {}\tkey id {}\thighest released {}{}{}\n", k.model_id, k.version, to_hex(k.key_id),
                       hi, k.layer_count ? fmt::format("\tlayers {}", *k.layer_count) : "",
                       k.stages ? fmt::format("\tstages {}", k.stages->stages.size()) : "");
  }
  std::fputs(out.c_str(), stdout);
  return ok_status();
}

Status run_allow_downgrade(const KbsArgs& a) {
  if (a.model_id.empty() || a.reason.empty()) {
    return Error(ErrorCode::kUsage, "kbs allow-downgrade: --model-id, --version and --reason are required");
  }
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_TRY(broker->allow_downgrade(a.model_id, a.version, a.reason));
  std::printf("model %s: version %llu may be released again (audited)\n", a.model_id.c_str(),
              static_cast<unsigned long long>(a.version));
  return ok_status();
}

Status run_audit_verify(const KbsArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(auto report, broker->verify_audit());
  std::printf("audit log verified: %llu entries, head %s\n", static_cast<unsigned long long>(report.entries),
              report.head.c_str());
  return ok_status();
}

Status run_audit_show(const KbsArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(auto entries, broker->audit_entries());
  std::string out;
  for (const auto& e : entries) out += fmt::format("{}\t{}\n", e.seq, e.event_json);
  std::fputs(out.c_str(), stdout);
  return ok_status();
}

Status run_serve(const KbsArgs& a) {
  // First, before the engine, channel or server threads start: they inherit the mask, so only the wait() at the
  // end receives SIGINT/SIGTERM and stops gracefully (one during start-up takes effect once started).
  StopSignals stop_signals;
  VEIL_ASSIGN_OR_RETURN(auto broker, open_broker(a));
  VEIL_ASSIGN_OR_RETURN(auto tee, make_tee(a));
  kbs::ServerOptions o;
  o.attester = channel::attester_from_provider(std::shared_ptr<attest::Provider>(std::move(tee)));
  VEIL_ASSIGN_OR_RETURN(o.collateral, collateral(a));
  VEIL_ASSIGN_OR_RETURN(auto server, kbs::Server::start(*broker, a.listen, std::move(o)));
  std::printf("kbs: listening on %s\n", server->address().c_str());
  std::fflush(stdout);
  stop_signals.wait();
  server->stop();
  return ok_status();
}

void common(CLI::App* sub, KbsArgs& a) {
  sub->add_option("--db", a.db, "Broker database (SQLite)");
  sub->add_option("--master-key", a.master_key, "Master key file (64 hex characters, mode 0600)");
  sub->add_flag("--master-key-from-tee", a.master_from_tee, "Derive the master key from the TEE (with --tee)");
  sub->add_option("--tee", a.tee, "Attestation provider: sim, tdx, sev-snp, nitro, tpm");
  sub->add_option("--sim-platform-key", a.sim_platform_key, "sim: the platform key file");
  sub->add_option("--sim-config", a.sim_config, "sim: configuration file folded into the measurement");
  sub->add_flag("--sim-create-key", a.sim_create_key, "sim: create the platform key file (0600) if absent");
}

void setup_kbs(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<KbsArgs>();
  CLI::App* kbs = subcommand_group(app, "kbs", "Key broker: keeps sealed-model keys, releases them to attested nodes");

  CLI::App* gen = kbs->add_subcommand("gen-master-key", "Write a new random broker master key (0600)");
  gen->add_option("file", a->out, "Key file to create")->required();
  runner.on(gen, [a] { return run_gen_master(*a); });

  CLI::App* add = kbs->add_subcommand("add-key", "Store a model key with its release policy");
  common(add, *a);
  add->add_option("--model-id", a->model_id, "Model id")->required();
  add->add_option("--version", a->version, "Model version")->required();
  add->add_option("--policy", a->policy, "Release policy JSON (docs/attestation.md)")->required();
  add->add_option("--key-file", a->key_file, "The model key file (from 'veil seal --generate-key')")->required();
  add->add_option("--sealed-model", a->sealed_model,
                  "The sealed model (.vsm) this key seals: its layer count is recorded, and pipeline stages' range "
                  "requests must name it");
  add->add_option("--manifest", a->manifest,
                  "Shard manifest (docs/manifest.md) of this model and version: each layer range is then released only "
                  "to evidence satisfying its stage's policy, the metadata only to the front policy's, and the whole "
                  "key to nobody (with --sealed-model: the manifest must name that file)");
  runner.on(add, [a] { return run_add_key(*a); });

  CLI::App* bind = kbs->add_subcommand(
      "bind-stages", "Bind a stored key (e.g. from 'veil seal --kbs-db') to a shard manifest's stages (once, audited)");
  common(bind, *a);
  bind->add_option("--model-id", a->model_id, "Model id")->required();
  bind->add_option("--version", a->version, "Model version")->required();
  bind->add_option("--manifest", a->manifest, "Shard manifest (docs/manifest.md) of this model and version")
      ->required();
  bind->add_option("--sealed-model", a->sealed_model, "The sealed model (.vsm): the manifest must name this file");
  runner.on(bind, [a] { return run_bind_stages(*a); });

  CLI::App* list = kbs->add_subcommand("list", "List stored keys (ids only) and the highest released versions");
  common(list, *a);
  runner.on(list, [a] { return run_list(*a); });

  CLI::App* down = kbs->add_subcommand("allow-downgrade", "Allow an older version to be released again (audited)");
  common(down, *a);
  down->add_option("--model-id", a->model_id, "Model id")->required();
  down->add_option("--version", a->version, "The older version to allow")->required();
  down->add_option("--reason", a->reason, "Why (recorded in the audit log)")->required();
  runner.on(down, [a] { return run_allow_downgrade(*a); });

  CLI::App* audit = kbs->add_subcommand("audit", "The hash-chained audit log");
  audit->require_subcommand(1);
  CLI::App* verify = audit->add_subcommand("verify", "Verify the whole audit chain (exit 3 if tampered)");
  common(verify, *a);
  runner.on(verify, [a] { return run_audit_verify(*a); });
  CLI::App* show = audit->add_subcommand("show", "Print the audit entries (one JSON event per line)");
  common(show, *a);
  runner.on(show, [a] { return run_audit_show(*a); });

  CLI::App* serve = kbs->add_subcommand("serve", "Release keys over the attested channel until SIGINT/SIGTERM");
  common(serve, *a);
  serve->add_option("--listen", a->listen, "tcp:HOST:PORT, HOST:PORT, unix:PATH or vsock:CID:PORT")
      ->capture_default_str();
  serve->add_option("--collateral", a->collateral, "NAME=FILE collateral for verifying nodes (repeatable)");
  runner.on(serve, [a] { return run_serve(*a); });
}

}  // namespace

VEIL_COMMAND(setup_kbs, 65);

}  // namespace veil::cli
