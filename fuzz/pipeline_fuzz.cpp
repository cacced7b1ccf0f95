// Fuzzes the pipeline's two parsers of outside input (docs/pipeline.md "Wire format", docs/manifest.md). The first
// input byte picks the target: 0 the activation wire format (decode_message: what a stage or the front reads from
// its peers), 1 the shard manifest (parse_manifest: a file the operator hands every stage and the front).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pipeline/pipeline.h"
#include "pipeline/runtime.h"

using namespace veil;
using namespace veil::pipeline;

namespace {

// An accepted message re-encodes to bytes that decode again to the same encoding, and its counts agree with its
// arrays (what the stage and the front rely on after decoding).
void fuzz_message(ByteView data) {
  auto m = decode_message(data);
  if (!m.ok()) return;
  if (m->type == MsgType::kOutput && m->values.size() != size_t{m->rows} * m->width) __builtin_trap();
  if (m->type == MsgType::kForward) {
    size_t total = 0;
    for (const Segment& s : m->segments) total += s.n_tokens;
    if (m->segments.empty() || (m->tokens.empty() == m->values.empty())) __builtin_trap();
    if (!m->tokens.empty() && m->tokens.size() != total) __builtin_trap();
    if (!m->values.empty() && m->values.size() % total != 0) __builtin_trap();
  }
  const Bytes again = encode_message(*m);
  auto m2 = decode_message(again);
  if (!m2.ok() || encode_message(*m2) != again) __builtin_trap();
}

// An accepted manifest has contiguous, complete, non-overlapping ranges and survives a write / read round trip.
void fuzz_manifest(ByteView data) {
  std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  auto m = parse_manifest(text, "fuzz");
  if (!m.ok()) return;
  if (m->stages.empty()) __builtin_trap();
  uint32_t next = 0;
  for (size_t i = 0; i < m->stages.size(); ++i) {
    const StageSpec& s = m->stages[i];
    if (s.index != i || s.layer_begin != next || s.layer_end <= s.layer_begin) __builtin_trap();
    next = s.layer_end;
  }
  if (next != m->n_layers) __builtin_trap();
  const std::string json = manifest_to_json(*m);
  auto back = parse_manifest(json, "fuzz round trip");
  if (!back.ok() || manifest_to_json(*back) != json) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const ByteView body(data + 1, size - 1);
  switch (data[0]) {
    case 0: fuzz_message(body); break;
    case 1: fuzz_manifest(body); break;
    default: break;
  }
  return 0;
}
