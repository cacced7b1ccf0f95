// Opening the model a command runs: a plain GGUF, or a sealed model (.vsm) decrypted into TEE memory
// with a key obtained from the key broker through attestation (docs/kbs.md). A local key file is
// accepted only with the explicit --insecure-local-key flag. Shared by generate, bench, serve and stage:
// with `layers` (a pipeline stage) the broker is asked for that range's keys only, never the model key; with
// `metadata_only` (a pipeline front) for the rest key only (metadata and tokenizer, no layer).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "attest/attest.h"
#include "cli/command.h"
#include "gguf/gguf.h"
#include "sealed/sealed.h"

namespace veil::cli {

struct ModelSourceOptions {
  std::string kbs;                 // key broker address for sealed models
  std::string kbs_policy;          // attestation policy the key broker's evidence must satisfy
  std::string insecure_local_key;  // development only: read the model key from this file
  std::string tee = "sim";         // this node's TEE provider
  std::string sim_platform_key;    // sim: platform key file (default: $VEIL_DATA_DIR or ~/.veil/sim-platform.key)
  std::string sim_config;          // sim: configuration file folded into the measurement (a per-stage launch config)
  std::optional<sealed::LayerRange> layers;  // sealed models: decrypt only these layers (a pipeline stage)
  bool metadata_only = false;  // sealed models: decrypt only the metadata and tokenizer (a pipeline front)
};

// Adds --kbs, --policy (or `policy_flag`), --insecure-local-key, --tee, --sim-platform-key and --sim-config.
void add_model_source_options(CLI::App* sub, ModelSourceOptions& options, const std::string& policy_flag = "--policy");

// Where Veil keeps local state ($VEIL_DATA_DIR, else ~/.veil).
std::filesystem::path veil_data_dir();

// This node's attestation provider, as configured (the sim provider warns that it is simulated).
Result<std::shared_ptr<attest::Provider>> make_node_provider(const ModelSourceOptions& options);

// Collateral for verifying peers that run on this node's kind of TEE (sim: the platform public key).
Result<attest::Collateral> peer_collateral(const ModelSourceOptions& options);

// Opens `path`: GGUF directly; a sealed model through the broker (or the insecure local key).
// `provider` may be null: one is made from the options when the broker needs it.
Result<std::shared_ptr<const gguf::File>> open_model(const std::filesystem::path& path,
                                                     const ModelSourceOptions& options,
                                                     std::shared_ptr<attest::Provider> provider = nullptr);

}  // namespace veil::cli
