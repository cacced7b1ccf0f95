// libFuzzer target: a server certificate as a verifying client reads it (read_ratls_certificate): DER X.509, the
// id-pe-cmw extension, its UTF8String, the CMW JSON record and the base64url evidence inside.
#include <cstddef>
#include <cstdint>

#include "server/ratls.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto info = veil::server::read_ratls_certificate(veil::ByteView(data, size));
  // Whatever is accepted came out of a well-formed record: the wrapped text is never larger than its carrier.
  if (info.ok() && info->extension_json.size() > size) __builtin_trap();
  return 0;
}
