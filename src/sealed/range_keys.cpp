// Range key sets: the keys of one pipeline stage's parts of a format-2 sealed model.
#include <algorithm>

#include "sealed/format.h"

namespace veil::sealed {
namespace {

constexpr size_t kKey = 32;
constexpr uint8_t kFlagInput = 1;
constexpr uint8_t kFlagOutput = 2;
constexpr size_t kIdentityWire = 1 + 16 + 2 + 8;  // version, key id, model id length, model version
constexpr size_t kRangeWire = 4 + 4 + 1;          // first, last, flags (range sets only)

size_t key_count(const RangeSpec& s) {
  if (s.metadata_only) return 1;
  return 1 + (s.input ? 1 : 0) + (s.output ? 1 : 0) + (s.layers.last - s.layers.first + 1);
}

// A metadata-only spec names nothing but the rest: any layer, input or output in it is a contradiction.
Status check_spec(const RangeSpec& s) {
  if (!s.metadata_only) return ok_status();
  if (s.input || s.output || s.layers.first != 0 || s.layers.last != 0) {
    return make_error(ErrorCode::kInvalidArgument, "a metadata-only key set names no layer, input or output");
  }
  return ok_status();
}

uint64_t get_le(ByteView b, size_t at, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(b[at + i]) << (8 * i);
  return v;
}

void put_le(Bytes& b, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Status check_range(LayerRange layers) {
  if (layers.first > layers.last || layers.last >= kMaxModelLayers ||
      layers.last - layers.first + 1 > kMaxRangeLayers) {
    return make_error(ErrorCode::kInvalidArgument,
                      "layer range {}..{}: needs first <= last < {} and at most {} layers", layers.first, layers.last,
                      kMaxModelLayers, kMaxRangeLayers);
  }
  return ok_status();
}

}  // namespace

Result<RangeSpec> range_spec_for(LayerRange layers, uint32_t layer_count, bool tied_embeddings) {
  VEIL_TRY(check_range(layers));
  if (layer_count == 0 || layer_count > kMaxModelLayers || layers.last >= layer_count) {
    return make_error(ErrorCode::kInvalidArgument, "layer range {}..{} is not within a model of {} layers",
                      layers.first, layers.last, layer_count);
  }
  RangeSpec s;
  s.layers = layers;
  s.output = layers.last + 1 == layer_count;
  s.input = layers.first == 0 || (s.output && tied_embeddings);
  return s;
}

bool has_tied_embeddings(const Header& h) {
  return std::none_of(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& t) { return t.name == "output.weight"; });
}

uint32_t layer_count(const Header& h) { return h.layers.empty() ? 0 : h.layers.back().layer + 1; }

Result<RangeSpec> range_spec_for(const Header& h, LayerRange layers) {
  return range_spec_for(layers, layer_count(h), has_tied_embeddings(h));
}

RangeSpec metadata_only_spec() {
  RangeSpec s;
  s.metadata_only = true;
  return s;
}

Result<RangeKeySet> RangeKeySet::derive(const SecretBytes& model_key, std::string_view model_id,
                                        uint64_t model_version, const RangeSpec& spec) {
  if (model_key.size() != kModelKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "range key set: a model key is {} bytes, not {}", kModelKeySize,
                      model_key.size());
  }
  if (!detail::valid_model_id(model_id)) {
    return make_error(ErrorCode::kInvalidArgument, "range key set: model id '{}' is not valid", model_id);
  }
  VEIL_TRY(check_range(spec.layers));
  VEIL_TRY(check_spec(spec));
  RangeKeySet set;
  set.model_id_ = std::string(model_id);
  set.model_version_ = model_version;
  set.key_id_ = key_id_for(model_key.view());
  set.spec_ = spec;
  set.keys_ = SecretBytes(key_count(spec) * kKey);  // sized once: no reallocation leaves copies behind
  auto put = [&](uint32_t part) {
    SecretBytes k = detail::derive_part_key(model_key.view(), model_id, model_version, part);
    std::copy(k.data(), k.data() + kKey, set.keys_.data() + set.slot_of(part) * kKey);
  };
  put(kPartRest);
  if (spec.metadata_only) return set;
  if (spec.input) put(kPartInput);
  if (spec.output) put(kPartOutput);
  for (uint32_t l = spec.layers.first; l <= spec.layers.last; ++l) put(l);
  return set;
}

size_t RangeKeySet::slot_of(uint32_t part) const {
  size_t slot = 0;
  if (part == kPartRest) return slot;
  if (spec_.metadata_only) return SIZE_MAX;
  ++slot;
  if (part == kPartInput) return spec_.input ? slot : SIZE_MAX;
  slot += spec_.input ? 1 : 0;
  if (part == kPartOutput) return spec_.output ? slot : SIZE_MAX;
  slot += spec_.output ? 1 : 0;
  if (part < spec_.layers.first || part > spec_.layers.last) return SIZE_MAX;
  return slot + (part - spec_.layers.first);
}

bool RangeKeySet::holds(uint32_t part) const { return !keys_.empty() && slot_of(part) != SIZE_MAX; }

ByteView RangeKeySet::part_key(uint32_t part) const {
  if (!holds(part)) return {};
  return keys_.view().subspan(slot_of(part) * kKey, kKey);
}

std::string RangeKeySet::describe() const {
  if (spec_.metadata_only) return "metadata only (rest)";
  return fmt::format("layers {}..{} + rest{}{}", spec_.layers.first, spec_.layers.last, spec_.input ? " + input" : "",
                     spec_.output ? " + output" : "");
}

SecretBytes RangeKeySet::serialize() const {
  Bytes head;
  head.push_back(spec_.metadata_only ? kWireVersionMetadata : kWireVersion);
  head.insert(head.end(), key_id_.begin(), key_id_.end());
  put_le(head, model_id_.size(), 2);
  head.insert(head.end(), model_id_.begin(), model_id_.end());
  put_le(head, model_version_, 8);
  if (!spec_.metadata_only) {
    put_le(head, spec_.layers.first, 4);
    put_le(head, spec_.layers.last, 4);
    head.push_back(static_cast<uint8_t>((spec_.input ? kFlagInput : 0) | (spec_.output ? kFlagOutput : 0)));
  }
  SecretBytes out(head.size() + keys_.size());
  std::copy(head.begin(), head.end(), out.data());
  std::copy(keys_.data(), keys_.data() + keys_.size(), out.data() + head.size());
  return out;
}

Result<RangeKeySet> RangeKeySet::parse(ByteView w) {
  auto bad = [](std::string_view why) {
    return make_error(ErrorCode::kCorrupt, "range key set: {}", why);
  };
  if (w.empty()) return bad("empty");
  if (w[0] != kWireVersion && w[0] != kWireVersionMetadata) {
    return bad(fmt::format("wire version {} is not {} (a range) or {} (metadata only)", w[0], kWireVersion,
                           kWireVersionMetadata));
  }
  RangeKeySet set;
  set.spec_.metadata_only = w[0] == kWireVersionMetadata;
  const size_t fixed = kIdentityWire + (set.spec_.metadata_only ? 0 : kRangeWire);
  if (w.size() < fixed) return bad(fmt::format("{} bytes is shorter than its fixed fields", w.size()));
  size_t id_len = get_le(w, 17, 2);
  if (w.size() < fixed + id_len) return bad("model id runs past the end");
  std::copy(w.begin() + 1, w.begin() + 17, set.key_id_.begin());
  set.model_id_.assign(as_chars(w.subspan(19, id_len)));
  if (!detail::valid_model_id(set.model_id_)) return bad("model id is not 1..128 characters of [A-Za-z0-9._:/+-]");
  size_t at = 19 + id_len;
  set.model_version_ = get_le(w, at, 8);
  at += 8;
  if (!set.spec_.metadata_only) {
    set.spec_.layers.first = static_cast<uint32_t>(get_le(w, at, 4));
    set.spec_.layers.last = static_cast<uint32_t>(get_le(w, at + 4, 4));
    uint8_t flags = w[at + 8];
    if ((flags & ~(kFlagInput | kFlagOutput)) != 0) return bad(fmt::format("unknown flags 0x{:x}", flags));
    set.spec_.input = (flags & kFlagInput) != 0;
    set.spec_.output = (flags & kFlagOutput) != 0;
    Status range = check_range(set.spec_.layers);
    if (!range.ok()) return bad(range.error().message());
    at += kRangeWire;
  }
  size_t keys = key_count(set.spec_) * kKey;
  if (w.size() - at != keys) {
    return bad(fmt::format("{} key bytes for {} keys (expected {})", w.size() - at, key_count(set.spec_), keys));
  }
  set.keys_ = SecretBytes(w.subspan(at, keys));
  return set;
}

}  // namespace veil::sealed
