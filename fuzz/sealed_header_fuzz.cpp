// Fuzz target: the sealed-model header parser and reader set-up (no key needed), the layer-range chunk
// and metadata-only selections and (format 2) the chunk-to-part map on whatever parses, authentication with a
// model key, a range key set and a metadata-only set, and the key set wire parser (both versions). Must never
// crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "sealed/sealed.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil;
  ByteView in(data, size);
  if (auto set = sealed::RangeKeySet::parse(in); set.ok()) {
    (void)set->serialize();
    (void)set->part_key(set->spec().layers.first);
  }
  auto h = sealed::parse_header(in);
  if (!h.ok()) return 0;
  auto r = sealed::SealedReader::open_memory(in, "fuzz.vsm");
  if (!r.ok()) return 0;
  (void)r->chunks_for(std::nullopt);
  (void)r->metadata_chunks();
  if (!r->header().layers.empty()) {
    uint32_t last = r->header().layers.back().layer;
    (void)r->chunks_for(sealed::LayerRange{0, 0});
    (void)r->chunks_for(sealed::LayerRange{last, last});
  }
  for (uint64_t i = 0; i < r->header().chunk_count(); ++i) (void)r->part_of_chunk(i);
  SecretBytes key(32);
  (void)r->authenticate(key);  // fails (wrong key) without touching chunks
  if (!r->header().layers.empty()) {
    auto spec = sealed::range_spec_for(r->header(), {0, 0});
    if (spec.ok()) {
      auto set = sealed::RangeKeySet::derive(key, r->header().model_id, r->header().model_version, *spec);
      if (set.ok()) (void)r->authenticate(*set);  // fails (format 1, or wrong key) without touching chunks
    }
  }
  auto meta = sealed::RangeKeySet::derive(key, r->header().model_id, r->header().model_version,
                                          sealed::metadata_only_spec());
  if (meta.ok()) (void)r->authenticate(*meta);
  return 0;
}
