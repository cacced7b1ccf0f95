// Fuzz target: the key broker's wire parsers -- a request record as the broker receives it (both request
// types, every field, the metadata-only form too) and a reply record as a node receives it (whole key, range
// key set, metadata-only set, refusal). Must never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "kbs/kbs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil;
  ByteView in(data, size);
  (void)kbs::parse_key_request(in, "fuzz");
  (void)kbs::parse_key_reply(in, false);
  (void)kbs::parse_key_reply(in, true);
  return 0;
}
