#include <set>

#include "pipeline/pipeline.h"

namespace veil::pipeline {
namespace {

using nlohmann::json;

// Field access with errors that name where the problem is.
class Reader {
 public:
  Reader(std::string_view source, std::string path) : source_(source), path_(std::move(path)) {}

  Error error(std::string_view field, std::string_view why) const {
    return make_error(ErrorCode::kCorrupt, "{}: {}{}: {}", source_, path_, field.empty() ? "" : fmt::format(".{}", field),
                      why);
  }

  Status check_keys(const json& obj, std::initializer_list<const char*> allowed) const {
    if (!obj.is_object()) return error("", "expected a JSON object");
    for (const auto& [key, _] : obj.items()) {
      bool known = false;
      for (const char* a : allowed) known |= key == a;
      if (!known) return error(key, "unknown field");
    }
    return ok_status();
  }

  const json* field(const json& obj, const char* name) const {
    auto it = obj.find(name);
    return it == obj.end() ? nullptr : &*it;
  }

  Result<std::string> string(const json& obj, const char* name) const {
    const json* f = field(obj, name);
    if (!f) return error(name, "missing");
    if (!f->is_string() || f->get_ref<const std::string&>().empty()) return error(name, "expected a non-empty string");
    return f->get<std::string>();
  }

  Result<uint64_t> uint(const json& obj, const char* name) const {
    const json* f = field(obj, name);
    if (!f) return error(name, "missing");
    if (!f->is_number_unsigned()) return error(name, "expected a non-negative integer");
    return f->get<uint64_t>();
  }

  Result<Bytes> sha256_hex(const json& obj, const char* name) const {
    VEIL_ASSIGN_OR_RETURN(std::string s, string(obj, name));
    auto bytes = from_hex(s);
    if (!bytes.ok() || bytes->size() != 32) return error(name, "expected 64 hex digits (SHA-256)");
    return std::move(bytes).value();
  }

 private:
  std::string_view source_;
  std::string path_;
};

Result<StageSpec> parse_stage(const json& j, size_t position, std::string_view source) {
  Reader r(source, fmt::format("stages[{}]", position));
  VEIL_TRY(r.check_keys(j, {"index", "layer_begin", "layer_end", "weights_sha256", "endpoint", "policy"}));
  StageSpec s;
  VEIL_ASSIGN_OR_RETURN(uint64_t index, r.uint(j, "index"));
  if (index != position) return r.error("index", fmt::format("expected {} (stages are listed in order)", position));
  s.index = static_cast<uint32_t>(index);
  VEIL_ASSIGN_OR_RETURN(uint64_t begin, r.uint(j, "layer_begin"));
  VEIL_ASSIGN_OR_RETURN(uint64_t end, r.uint(j, "layer_end"));
  if (end <= begin) return r.error("layer_end", fmt::format("{} must be greater than layer_begin {}", end, begin));
  if (end > UINT32_MAX) return r.error("layer_end", "too large");
  s.layer_begin = static_cast<uint32_t>(begin);
  s.layer_end = static_cast<uint32_t>(end);
  VEIL_ASSIGN_OR_RETURN(s.weights_sha256, r.sha256_hex(j, "weights_sha256"));
  VEIL_ASSIGN_OR_RETURN(s.endpoint, r.string(j, "endpoint"));
  auto colon = s.endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.endpoint.size()) {
    return r.error("endpoint", "expected host:port");
  }
  const json* policy = r.field(j, "policy");
  if (!policy) return r.error("policy", "missing (every stage needs the policy its evidence must satisfy)");
  auto parsed = attest::parse_policy(policy->dump());
  if (!parsed.ok()) return r.error("policy", parsed.error().message());
  s.policy_json = *policy;
  s.policy = std::move(parsed).value();
  return s;
}

}  // namespace

Result<ShardManifest> parse_manifest(std::string_view text, std::string_view source) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(ErrorCode::kCorrupt, "{}: not valid JSON", source);
  Reader r(source, "manifest");
  VEIL_TRY(r.check_keys(j, {"format", "model_id", "model_version", "sealed_model_sha256", "n_layers", "stages",
                            "front_policy"}));
  VEIL_ASSIGN_OR_RETURN(std::string format, r.string(j, "format"));
  if (format != kManifestFormat) return r.error("format", fmt::format("expected \"{}\"", kManifestFormat));
  ShardManifest m;
  VEIL_ASSIGN_OR_RETURN(m.model_id, r.string(j, "model_id"));
  VEIL_ASSIGN_OR_RETURN(m.model_version, r.uint(j, "model_version"));
  VEIL_ASSIGN_OR_RETURN(m.sealed_model_sha256, r.sha256_hex(j, "sealed_model_sha256"));
  VEIL_ASSIGN_OR_RETURN(uint64_t n_layers, r.uint(j, "n_layers"));
  if (n_layers == 0 || n_layers > 100000) return r.error("n_layers", "expected 1..100000");
  m.n_layers = static_cast<uint32_t>(n_layers);
  if (const json* fp = r.field(j, "front_policy")) {
    auto parsed = attest::parse_policy(fp->dump());
    if (!parsed.ok()) return r.error("front_policy", parsed.error().message());
    m.front_policy_json = *fp;
    m.front_policy = std::move(parsed).value();
  }
  const json* stages = r.field(j, "stages");
  if (!stages || !stages->is_array() || stages->empty()) return r.error("stages", "expected a non-empty array");
  std::set<std::string> endpoints;
  uint32_t next_layer = 0;
  for (size_t i = 0; i < stages->size(); ++i) {
    VEIL_ASSIGN_OR_RETURN(StageSpec s, parse_stage((*stages)[i], i, source));
    Reader sr(source, fmt::format("stages[{}]", i));
    if (s.layer_begin != next_layer) {
      return sr.error("layer_begin", s.layer_begin < next_layer
                                         ? fmt::format("{} overlaps the previous stage, which ends at {}",
                                                       s.layer_begin, next_layer)
                                         : fmt::format("{} leaves layers {}..{} unassigned", s.layer_begin, next_layer,
                                                       s.layer_begin - 1));
    }
    if (s.layer_end > m.n_layers) {
      return sr.error("layer_end", fmt::format("{} exceeds n_layers {}", s.layer_end, m.n_layers));
    }
    if (!endpoints.insert(s.endpoint).second) return sr.error("endpoint", "used by an earlier stage");
    next_layer = s.layer_end;
    m.stages.push_back(std::move(s));
  }
  if (next_layer != m.n_layers) {
    return Reader(source, fmt::format("stages[{}]", m.stages.size() - 1))
        .error("layer_end", fmt::format("{} leaves layers {}..{} unassigned", next_layer, next_layer, m.n_layers - 1));
  }
  return m;
}

Result<ShardManifest> load_manifest(const std::filesystem::path& path) {
  VEIL_ASSIGN_OR_RETURN(std::string text, read_text_file(path, 16u << 20));
  return parse_manifest(text, path.string());
}

std::string manifest_to_json(const ShardManifest& m) {
  json stages = json::array();
  for (const auto& s : m.stages) {
    stages.push_back({{"index", s.index},
                      {"layer_begin", s.layer_begin},
                      {"layer_end", s.layer_end},
                      {"weights_sha256", to_hex(s.weights_sha256)},
                      {"endpoint", s.endpoint},
                      {"policy", s.policy_json}});
  }
  json j = {{"format", kManifestFormat},
            {"model_id", m.model_id},
            {"model_version", m.model_version},
            {"sealed_model_sha256", to_hex(m.sealed_model_sha256)},
            {"n_layers", m.n_layers},
            {"stages", stages}};
  if (m.front_policy) j["front_policy"] = m.front_policy_json;
  return j.dump(2) + "\n";
}

}  // namespace veil::pipeline
