// veil serve: the OpenAI-compatible confidential server (docs/api.md).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "attest/attest.h"
#include "attest/sim.h"
#include "channel/channel.h"
#include "cli/command.h"
#include "cli/model_source.h"
#include "gguf/gguf.h"
#include "kbs/kbs.h"
#include "pipeline/runtime.h"
#include "sealed/sealed.h"
#include "server/engine_backend.h"
#include "server/server.h"

namespace veil::cli {
namespace {

struct ServeArgs {
  std::string model;
  std::string model_id;
  std::string listen = "127.0.0.1:8443";
  bool insecure_http = false;
  bool no_auth = false;
  ModelSourceOptions source;  // --kbs, --policy, --insecure-local-key, --tee, --sim-platform-key
  std::string db;
  std::string cert_out;
  uint32_t slots = 16;
  uint32_t queue = 256;
  uint32_t threads = 0;
  uint32_t ctx = 0;
  engine::KvType kv_type = engine::KvType::kF32;
  uint32_t prefill_chunk = 64;
  size_t max_body = 1 << 20;
  uint32_t grace_seconds = 30;
  std::string manifest;             // pipeline front: the stages run the layers
  uint32_t stage_timeout_s = 60;    // per exchange with a stage
  uint32_t health_interval_s = 10;
  bool attest_to_stages = false;    // mutual attestation with stages started with --front-policy
  uint32_t micro_batches = 1;       // fill-drain overlap across stages
  uint32_t lanes = 0;               // forward passes in flight at once; 0: what the model allows (one per stage)
};

// The forward passes: the local engine, or (--manifest) the pipeline stages with this process as the front.
// Either way the same BatchingBackend and HTTP stack serve them.
Result<std::unique_ptr<server::BatchingBackend>> make_backend(const ServeArgs& a, const std::filesystem::path& path,
                                                              std::shared_ptr<attest::Provider> provider,
                                                              const server::EngineBackendOptions& eo) {
  if (a.manifest.empty()) {
    VEIL_ASSIGN_OR_RETURN(std::shared_ptr<const gguf::File> file, open_model(path, a.source, provider));
    return server::make_engine_backend(file, eo);
  }
  VEIL_ASSIGN_OR_RETURN(pipeline::ShardManifest manifest, pipeline::load_manifest(a.manifest));
  // The front needs only the tokenizer (make_step_backend reads the vocabulary and chat template from the
  // metadata; the stages embed, run the layers and the head): of a sealed model it asks the broker for the rest
  // key alone and decrypts the metadata only, so it holds no layer, embedding or output key.
  ModelSourceOptions source = a.source;
  source.metadata_only = true;
  VEIL_ASSIGN_OR_RETURN(std::shared_ptr<const gguf::File> file, open_model(path, source, provider));
  pipeline::FrontOptions fo;
  VEIL_ASSIGN_OR_RETURN(fo.collateral, peer_collateral(a.source));
  fo.request_timeout = std::chrono::seconds(a.stage_timeout_s);
  fo.health_interval = std::chrono::seconds(a.health_interval_s);
  fo.micro_batches = a.micro_batches;
  if (a.attest_to_stages || manifest.front_policy) {  // stages that demand an attested front get this node's evidence
    fo.channel.mode = channel::Mode::kMutual;
    fo.channel.attester = channel::attester_from_provider(provider);
  }
  VEIL_ASSIGN_OR_RETURN(auto step, pipeline::PipelineStepModel::connect(manifest, std::move(fo)));
  spdlog::info("serve: pipeline front over {} stages", manifest.stages.size());
  server::EngineBackendOptions named = eo;
  if (named.model_id.empty()) named.model_id = manifest.model_id;
  return server::make_step_backend(*file, std::move(step), named);
}

Result<std::pair<std::string, uint16_t>> parse_listen(const std::string& s) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    return make_error(ErrorCode::kUsage, "serve: --listen must be ADDRESS:PORT, e.g. 127.0.0.1:8443");
  }
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned long port = 0;
  try {
    size_t used = 0;
    port = std::stoul(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1) throw std::invalid_argument("port");
  } catch (const std::exception&) {
    return make_error(ErrorCode::kUsage, "serve: --listen port is not a number");
  }
  if (port > 65535) return make_error(ErrorCode::kUsage, "serve: --listen port is out of range");
  return std::make_pair(host, static_cast<uint16_t>(port));
}

// The id clients name: --model-id, else a sealed model's own id, else the file name without extension.
Result<std::string> served_model_id(const ServeArgs& a, const std::filesystem::path& path) {
  if (!a.model_id.empty()) return a.model_id;
  if (!sealed::is_sealed_model(path)) return path.stem().string();
  VEIL_ASSIGN_OR_RETURN(auto mapped, MappedFile::open(path));
  VEIL_ASSIGN_OR_RETURN(auto header, sealed::parse_header(mapped.view()));
  return header.model_id;
}

Status run_serve(const ServeArgs& a) {
  // First, before the engine, channel or server threads start: they inherit the mask, so only the wait() at the
  // end receives SIGINT/SIGTERM and stops gracefully (one during start-up takes effect once started).
  StopSignals stop_signals;
  VEIL_ASSIGN_OR_RETURN(auto listen, parse_listen(a.listen));
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  std::error_code ec;
  std::filesystem::create_directories(veil_data_dir(), ec);  // state lives here unless --db says otherwise

  VEIL_ASSIGN_OR_RETURN(std::shared_ptr<attest::Provider> provider, make_node_provider(a.source));

  server::EngineBackendOptions eo;
  VEIL_ASSIGN_OR_RETURN(eo.model_id, served_model_id(a, path));
  eo.threads = a.threads;
  eo.context = a.ctx;
  eo.kv_type = a.kv_type;
  eo.batching.max_slots = a.slots;
  eo.batching.max_queue = a.queue;
  eo.batching.prefill_chunk = a.prefill_chunk;
  eo.batching.step_token_budget = std::max<uint32_t>(a.prefill_chunk, 256);
  eo.batching.lanes = a.lanes;
  VEIL_ASSIGN_OR_RETURN(auto backend, make_backend(a, path, provider, eo));

  std::filesystem::path db = a.db.empty() ? veil_data_dir() / "server.db" : std::filesystem::path(a.db);
  VEIL_ASSIGN_OR_RETURN(auto store, server::Store::open(db));
  if (!a.no_auth && store->active_key_count() == 0) {
    spdlog::warn("serve: {} holds no active API key: every API request will get 401 (add one with 'veil keys add')",
                 db.string());
  }
  VEIL_ASSIGN_OR_RETURN(SecretBytes signing_root, sealed::derive_key(*provider, "veil-server-signing-v1"));
  server::SigningKeys keys = server::derive_signing_keys(signing_root.view());

  server::ServerOptions so;
  so.address = listen.first;
  so.port = listen.second;
  so.tls = !a.insecure_http;
  so.require_auth = !a.no_auth;
  so.max_body_bytes = a.max_body;
  if (a.insecure_http) spdlog::warn("serve: --insecure-http: TLS is OFF; traffic leaves the TEE in clear text");
  if (a.no_auth) spdlog::warn("serve: --no-auth: API keys are not checked");

  VEIL_ASSIGN_OR_RETURN(auto srv, server::Server::start(so, *backend, *store, *provider, std::move(keys)));
  if (!a.cert_out.empty() && srv->tls_identity()) {
    VEIL_TRY(write_file_atomic(a.cert_out, as_bytes(srv->tls_identity()->cert_pem), 0644));
  }
  std::printf("veil serve: model %s on %s://%s:%u\n", backend->model_id().c_str(), so.tls ? "https" : "http",
              listen.first.c_str(), static_cast<unsigned>(srv->port()));
  std::fflush(stdout);
  const int sig = stop_signals.wait();
  spdlog::warn("serve: signal {}: draining (up to {} s)", sig, a.grace_seconds);
  srv->stop(std::chrono::seconds(a.grace_seconds));
  return ok_status();
}

void setup_serve(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* sub = app.add_subcommand("serve", "Serve the OpenAI-compatible API with TLS terminated inside the TEE");
  add_model_option(sub, a->model);
  sub->add_option("--model-id", a->model_id, "Model id clients use (default: a sealed model's id, else the file name without extension)");
  sub->add_option("--listen", a->listen, "ADDRESS:PORT to listen on (port 0: any free port)")->capture_default_str();
  sub->add_flag("--insecure-http", a->insecure_http, "Serve plain HTTP (no TLS): development only");
  sub->add_flag("--no-auth", a->no_auth, "Do not require API keys: development only");
  add_model_source_options(sub, a->source);
  sub->add_option("--db", a->db, "Server database: API keys and signatures (default: $VEIL_DATA_DIR or ~/.veil)");
  sub->add_option("--cert-out", a->cert_out, "Write the RA-TLS certificate (PEM) here, for clients to pin");
  sub->add_option("--slots", a->slots, "Concurrent sequences (continuous batching)")->capture_default_str();
  sub->add_option("--queue", a->queue, "Requests that may wait for a slot before 503")->capture_default_str();
  sub->add_option("-t,--threads", a->threads, "Inference threads (default: CPU count, at most 8)");
  add_kv_type_option(sub, a->kv_type);
  sub->add_option("-c,--ctx", a->ctx, "Context per sequence (default: the model's, at most 2048)");
  sub->add_option("--prefill-chunk", a->prefill_chunk, "Prompt tokens per sequence per step")->capture_default_str();
  sub->add_option("--max-body", a->max_body, "Largest request body in bytes (413 above)")->capture_default_str();
  sub->add_option("--grace", a->grace_seconds, "Seconds to finish in-flight requests on SIGTERM")->capture_default_str();
  sub->add_option("--manifest", a->manifest, "Serve as the front of a pipeline: the manifest's stages run the layers "
                  "(-m gives the tokenizer)")->check(CLI::ExistingFile);
  sub->add_option("--stage-timeout", a->stage_timeout_s, "Seconds a pipeline stage has to answer a forward pass")
      ->capture_default_str()->check(CLI::Range(1, 3600));
  sub->add_option("--health-interval", a->health_interval_s, "Seconds between pipeline stage health checks (0: off)")
      ->capture_default_str();
  sub->add_option("--micro-batches", a->micro_batches,
                  "Pipeline front: split each forward pass into N micro-batches that overlap across stages")
      ->capture_default_str()->check(CLI::Range(1, 64));
  sub->add_option("--lanes", a->lanes,
                  "Pipeline front: forward passes in flight at once, each on its own sequences (default: one per "
                  "stage; fewer when the stages share fewer cores than there are stages)")
      ->check(CLI::Range(1, 64));
  sub->add_flag("--attest-to-stages", a->attest_to_stages,
                "Pipeline front: present this node's evidence to every stage (stages started with --front-policy; "
                "implied when the manifest has a front_policy)");
  runner.on(sub, [a]() { return run_serve(*a); });
}

VEIL_COMMAND(setup_serve, 60);

}  // namespace
}  // namespace veil::cli
