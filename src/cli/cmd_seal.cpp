// veil seal: encrypt a GGUF into a sealed model (.vsm), with a local key file or straight into the
// key broker's database (docs/sealed-format.md, docs/kbs.md).
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "kbs/kbs.h"
#include "sealed/sealed.h"

namespace veil::cli {
namespace {

struct SealArgs {
  std::string model;
  std::string out;
  std::string model_id;
  uint64_t version = 0;
  bool version_set = false;
  std::string label;
  std::string key_file;
  std::string generate_key;
  std::string kbs_db;
  std::string master_key;
  std::string policy;
  std::string suite = "aes-256-gcm";
  uint32_t chunk_size = sealed::kDefaultChunkSize;
  uint16_t format = sealed::kFormatVersion2;
};

Status run_seal(const SealArgs& a) {
  if (!a.generate_key.empty()) {
    if (!a.model.empty() || !a.out.empty()) {
      return Error(ErrorCode::kUsage, "seal: --generate-key takes no model or output");
    }
    if (std::filesystem::exists(a.generate_key)) {
      return make_error(ErrorCode::kInvalidArgument, "seal: key file {} already exists; not overwriting it",
                        a.generate_key);
    }
    SecretBytes key = sealed::generate_model_key();
    VEIL_TRY(sealed::write_key_file(a.generate_key, key));
    std::printf("wrote a new model key to %s (mode 0600); key id %s\n", a.generate_key.c_str(),
                to_hex(sealed::key_id_for(key.view())).c_str());
    return ok_status();
  }
  if (a.model.empty() || a.out.empty() || a.model_id.empty() || !a.version_set) {
    return Error(ErrorCode::kUsage, "seal: MODEL, -o OUT, --model-id and --version are required");
  }
  bool with_kbs = !a.kbs_db.empty();
  if (with_kbs == !a.key_file.empty()) {
    return Error(ErrorCode::kUsage, "seal: give exactly one of --key-file or --kbs-db");
  }
  if (with_kbs && (a.master_key.empty() || a.policy.empty())) {
    return Error(ErrorCode::kUsage, "seal: --kbs-db needs --master-key and --policy");
  }
  sealed::SealOptions o;
  o.model_id = a.model_id;
  o.model_version = a.version;
  o.version_label = a.label;
  o.chunk_size = a.chunk_size;
  o.format_version = a.format;
  if (a.suite == "aes-256-gcm") {
    o.suite = crypto::AeadSuite::kAes256Gcm;
  } else if (a.suite == "chacha20-poly1305") {
    o.suite = crypto::AeadSuite::kChaCha20Poly1305;
  } else {
    return make_error(ErrorCode::kUsage, "seal: --suite must be aes-256-gcm or chacha20-poly1305, not '{}'", a.suite);
  }
  auto file = gguf::File::open(a.model);
  if (!file.ok()) return std::move(file).error().wrap("seal: reading the model");

  SecretBytes key;
  std::unique_ptr<kbs::Broker> broker;
  std::string policy_text;
  if (with_kbs) {
    VEIL_ASSIGN_OR_RETURN(SecretBytes master, kbs::read_master_key(a.master_key));
    VEIL_ASSIGN_OR_RETURN(policy_text, read_text_file(a.policy, 1 << 20));
    VEIL_ASSIGN_OR_RETURN(broker, kbs::Broker::open(a.kbs_db, master));
    key = sealed::generate_model_key();  // never written to disk: it lives wrapped in the broker
  } else {
    VEIL_ASSIGN_OR_RETURN(key, sealed::read_key_file(a.key_file));
  }
  VEIL_ASSIGN_OR_RETURN(Bytes sealed_bytes, sealed::seal_gguf(*file, key, o));
  auto h = sealed::parse_header(sealed_bytes);
  if (!h.ok()) return std::move(h).error();
  if (broker) {
    // The broker records the layer count, to check pipeline stages' range requests against it.
    uint32_t layers = sealed::layer_count(*h);
    VEIL_TRY(broker->add_key(a.model_id, a.version, key, policy_text,
                             layers > 0 ? std::optional<uint32_t>(layers) : std::nullopt));
  }
  Status st = write_file_atomic(a.out, sealed_bytes, 0644);
  if (!st.ok()) return std::move(st).error().wrap("seal: writing the sealed model");
  std::printf("sealed %s -> %s: format %u, model %s version %llu, %llu chunks, key id %s%s\n", a.model.c_str(),
              a.out.c_str(), static_cast<unsigned>(h->format_version), a.model_id.c_str(),
              static_cast<unsigned long long>(a.version),
              static_cast<unsigned long long>(h->chunk_count()), to_hex(h->key_id).c_str(),
              broker ? " (key stored in the broker)" : "");
  return ok_status();
}

void setup_seal(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<SealArgs>();
  CLI::App* sub = app.add_subcommand("seal", "Encrypt a GGUF model into a sealed model (.vsm)");
  sub->add_option("model", a->model, "Plaintext GGUF model to seal");
  sub->add_option("-o,--output", a->out, "Sealed model to write (atomically)");
  sub->add_option("--model-id", a->model_id, "Model id bound into the header, e.g. stories260K");
  sub->add_option("--version", a->version, "Model version: a monotonic counter used for rollback protection")
      ->each([a](const std::string&) { a->version_set = true; });
  sub->add_option("--version-label", a->label, "Display string for the version, e.g. 2025-02-q8");
  sub->add_option("--key-file", a->key_file, "Model key file (64 hex characters, mode 0600)");
  sub->add_option("--generate-key", a->generate_key, "Write a new random model key to this file (0600) and exit");
  sub->add_option("--kbs-db", a->kbs_db, "Generate the key inside the key broker's database instead of a key file");
  sub->add_option("--master-key", a->master_key, "The broker's master key file (with --kbs-db)");
  sub->add_option("--policy", a->policy, "Release policy JSON for the key (with --kbs-db; docs/attestation.md)");
  sub->add_option("--suite", a->suite, "aes-256-gcm (default) or chacha20-poly1305")->capture_default_str();
  sub->add_option("--chunk-size", a->chunk_size, "Largest plaintext chunk in bytes (4096..67108864)")
      ->capture_default_str();
  sub->add_option("--format", a->format,
                  "Sealed format: 2 (default: one key per layer, so a pipeline stage gets only its range's keys) or 1 "
                  "(one key for the whole file, for older readers)")
      ->check(CLI::IsMember({1, 2}))
      ->capture_default_str();
  runner.on(sub, [a] { return run_seal(*a); });
}

}  // namespace

VEIL_COMMAND(setup_seal, 60);

}  // namespace veil::cli
