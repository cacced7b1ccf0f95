// pipeline: one model sharded across attested stages. Read this first.
//
// A ShardManifest (docs/manifest.md) names the model, the sealed-model hash and, for every stage,
// its half-open layer range [layer_begin, layer_end), the hash of that range's weights, the policy
// its evidence must satisfy, and its endpoint. Ranges must be contiguous, complete and
// non-overlapping; every validation error names the stage and field.
//
// Scheduling is fill-drain: a prefill is split into micro-batches so stage s works on micro-batch m
// at step s + m, and several sequences are kept in flight during decode so every stage stays busy.
//
// The runtime (stage servers, the front's StepModel, the activation wire format) is the second
// header, pipeline/runtime.h (docs/pipeline.md).
//
// Thread-safety: manifests are immutable values; functions here are pure.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "core/core.h"
#include "sealed/sealed.h"

namespace veil::pipeline {

inline constexpr const char* kManifestFormat = "veil-manifest/1";

struct StageSpec {
  uint32_t index = 0;
  uint32_t layer_begin = 0;  // first layer held by the stage
  uint32_t layer_end = 0;    // one past the last layer
  Bytes weights_sha256;      // hash of this range's weights (sealed-format range hash)
  std::string endpoint;      // host:port where the stage listens for the front / previous stage
  nlohmann::json policy_json;  // the attest::Policy document, kept verbatim for display
  attest::Policy policy;       // parsed form
};

struct ShardManifest {
  std::string model_id;
  uint64_t model_version = 0;
  Bytes sealed_model_sha256;  // SHA-256 of the sealed model file the stages load
  uint32_t n_layers = 0;
  std::vector<StageSpec> stages;
  // Optional: the policy the front's evidence must satisfy. When present every stage runs its channels in mutual
  // mode and accepts only such a front, and the front presents its evidence (docs/pipeline.md).
  nlohmann::json front_policy_json;           // null when absent
  std::optional<attest::Policy> front_policy;
};

Result<ShardManifest> parse_manifest(std::string_view json, std::string_view source_name = "manifest");
Result<ShardManifest> load_manifest(const std::filesystem::path& path);
std::string manifest_to_json(const ShardManifest& manifest);

// Splits layers 0..layer_bytes.size() into `n_stages` contiguous ranges minimising the largest
// stage's bytes, `last_stage_extra` counted in the last stage (ties: earlier stages smaller). Each stage gets at
// least one layer.
Result<std::vector<std::pair<uint32_t, uint32_t>>> balance_layers(const std::vector<uint64_t>& layer_bytes,
                                                                  uint32_t n_stages, uint64_t last_stage_extra = 0);

// The weight bytes one decode step reads in each stage: every tensor of its layers, and in the last stage also the
// output head (output norm and output matrix, or the token embedding when the model ties it), which the front does
// not run. On GPT-2 124M the head is as large as five of its twelve layers, so ranges balanced by layers alone
// leave the last stage the slowest.
struct DecodeCosts {
  std::vector<uint64_t> layer_bytes;  // by layer index
  uint64_t head_bytes = 0;
};
struct TensorSize {
  std::string_view name;  // GGUF tensor name
  uint64_t bytes = 0;
};
DecodeCosts decode_costs(std::span<const TensorSize> tensors);
// balance_layers over a model's decode costs.
Result<std::vector<std::pair<uint32_t, uint32_t>>> balance_stages(const DecodeCosts& costs, uint32_t n_stages);

// SHA-256 over the sealed header's per-layer digests of layers [begin, end), in layer order: the
// `weights_sha256` of a stage holding that range. kCorrupt if the header lacks one of the layers.
Result<Bytes> range_weights_sha256(const sealed::Header& header, uint32_t begin, uint32_t end);

// Proposes a manifest for a sealed model: layer ranges balanced by decode_costs (the head counted in the last
// stage), each range's weights hash, the given endpoints (one per stage), and each stage's policy (its own from
// stage_policy_json, else policy_json).
struct ProposeOptions {
  uint32_t n_stages = 1;
  std::vector<std::string> endpoints;  // exactly n_stages entries, host:port
  std::string policy_json;             // an attest::Policy document, for every stage not in stage_policy_json
  std::map<uint32_t, std::string> stage_policy_json;  // by stage index: that stage's own policy
  std::string front_policy_json;       // optional: the policy the front must satisfy (empty: none)
};
Result<ShardManifest> propose_manifest(const sealed::Header& header, ByteView sealed_file_sha256,
                                       const ProposeOptions& options);

// A half-open range of prompt positions processed together.
struct MicroBatch {
  uint32_t begin = 0;
  uint32_t end = 0;
};
// Splits n_tokens into at most n_micro_batches nearly equal, non-empty micro-batches (earlier ones larger).
std::vector<MicroBatch> split_micro_batches(uint32_t n_tokens, uint32_t n_micro_batches);

// One unit of work: `stage` runs micro-batch `micro_batch`.
struct ScheduleSlot {
  uint32_t stage = 0;
  uint32_t micro_batch = 0;
  bool operator==(const ScheduleSlot&) const = default;
};
// Fill-drain schedule: steps[t] lists the slots that run concurrently at step t. Stage s runs
// micro-batch m at step s + m; there are n_stages + n_micro_batches - 1 steps.
std::vector<std::vector<ScheduleSlot>> fill_drain_schedule(uint32_t n_stages, uint32_t n_micro_batches);

}  // namespace veil::pipeline
