// Fuzz target: the sealed-model header parser and reader set-up (no key needed), plus the layer-range
// chunk selection on whatever parses. Must never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "sealed/sealed.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil;
  ByteView in(data, size);
  auto h = sealed::parse_header(in);
  if (!h.ok()) return 0;
  auto r = sealed::SealedReader::open_memory(in, "fuzz.vsm");
  if (!r.ok()) return 0;
  (void)r->chunks_for(std::nullopt);
  if (!r->header().layers.empty()) {
    uint32_t last = r->header().layers.back().layer;
    (void)r->chunks_for(sealed::LayerRange{0, 0});
    (void)r->chunks_for(sealed::LayerRange{last, last});
  }
  SecretBytes key(32);
  (void)r->authenticate(key);  // fails (wrong key) without touching chunks
  return 0;
}
