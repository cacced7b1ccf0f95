#include <map>

#include "crypto/crypto.h"
#include "pipeline/pipeline.h"

namespace veil::pipeline {

Result<Bytes> range_weights_sha256(const sealed::Header& header, uint32_t begin, uint32_t end) {
  std::map<uint32_t, const sealed::LayerEntry*> by_layer;
  for (const auto& l : header.layers) by_layer[l.layer] = &l;
  crypto::Hasher h(crypto::HashAlg::kSha256);
  for (uint32_t layer = begin; layer < end; ++layer) {
    auto it = by_layer.find(layer);
    if (it == by_layer.end()) {
      return make_error(ErrorCode::kCorrupt, "sealed model {}: header has no digest for layer {}", header.model_id,
                        layer);
    }
    h.update(it->second->digest);
  }
  return h.finish();
}

Result<ShardManifest> propose_manifest(const sealed::Header& header, ByteView sealed_file_sha256,
                                       const ProposeOptions& options) {
  if (header.layers.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "sealed model {}: has no transformer layers to split",
                      header.model_id);
  }
  uint32_t n_layers = 0;
  for (const auto& l : header.layers) n_layers = std::max(n_layers, l.layer + 1);
  std::vector<TensorSize> sizes;
  sizes.reserve(header.tensors.size());
  for (const auto& t : header.tensors) {
    if (t.layer == sealed::kNoLayer || t.layer < n_layers) sizes.push_back({t.name, t.size});
  }
  DecodeCosts costs = decode_costs(sizes);
  costs.layer_bytes.resize(n_layers, 0);  // layers without tensors count as empty
  if (options.endpoints.size() != options.n_stages) {
    return make_error(ErrorCode::kUsage, "--endpoints: {} given for {} stages (one host:port per stage)",
                      options.endpoints.size(), options.n_stages);
  }
  VEIL_ASSIGN_OR_RETURN(auto ranges, balance_stages(costs, options.n_stages));
  std::map<uint32_t, nlohmann::json> stage_policy;
  for (const auto& [index, text] : options.stage_policy_json) {
    if (index >= options.n_stages) {
      return make_error(ErrorCode::kUsage, "--stage-policy {}: there are {} stages (indices 0 to {})", index,
                        options.n_stages, options.n_stages - 1);
    }
    stage_policy[index] = nlohmann::json::parse(text, nullptr, false);
    if (stage_policy[index].is_discarded()) {
      return make_error(ErrorCode::kCorrupt, "--stage-policy {}: not valid JSON", index);
    }
  }
  nlohmann::json policy;  // for the stages without their own
  if (stage_policy.size() < options.n_stages) {
    if (options.policy_json.empty()) {
      return make_error(ErrorCode::kUsage, "--policy: needed for the stages without a --stage-policy");
    }
    policy = nlohmann::json::parse(options.policy_json, nullptr, false);
    if (policy.is_discarded()) return make_error(ErrorCode::kCorrupt, "--policy: not valid JSON");
  }
  ShardManifest m;
  if (!options.front_policy_json.empty()) {
    m.front_policy_json = nlohmann::json::parse(options.front_policy_json, nullptr, false);
    if (m.front_policy_json.is_discarded()) return make_error(ErrorCode::kCorrupt, "--front-policy: not valid JSON");
    m.front_policy = attest::Policy{};  // parsed and checked by parse_manifest below
  }
  m.model_id = header.model_id;
  m.model_version = header.model_version;
  m.sealed_model_sha256.assign(sealed_file_sha256.begin(), sealed_file_sha256.end());
  m.n_layers = n_layers;
  for (uint32_t i = 0; i < options.n_stages; ++i) {
    StageSpec s;
    s.index = i;
    s.layer_begin = ranges[i].first;
    s.layer_end = ranges[i].second;
    VEIL_ASSIGN_OR_RETURN(s.weights_sha256, range_weights_sha256(header, s.layer_begin, s.layer_end));
    s.endpoint = options.endpoints[i];
    auto own = stage_policy.find(i);
    s.policy_json = own != stage_policy.end() ? own->second : policy;
    m.stages.push_back(std::move(s));
  }
  // Validate the proposal exactly as a stage would read it.
  return parse_manifest(manifest_to_json(m), "proposed manifest");
}

}  // namespace veil::pipeline
