// Fuzz target: the strict CBOR reader, the Nitro COSE_Sign1 attestation document parser and the NSM
// response parser (attest/nitro_document.h). Any input must give a value or an error, never a crash,
// and an accepted document must satisfy the parser's documented bounds.
#include <cstdint>
#include <cstdlib>

#include "attest/cbor_value.h"
#include "attest/nitro_document.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil::attest;
  veil::ByteView in(data, size);
  (void)cbor::parse(in, "fuzz");
  (void)nitro::nsm_attestation_response(in);
  auto doc = nitro::parse_document(in);
  if (doc.ok()) {
    if (doc->signature.size() != 96 || doc->cabundle.empty() || doc->digest != "SHA384") std::abort();
    for (const auto& [idx, v] : doc->pcrs) {
      if (idx > 31 || v.size() != 48) std::abort();
    }
    for (const auto* f : {&doc->user_data, &doc->nonce, &doc->public_key}) {
      if (*f && (*f)->size() > nitro::kMaxOptionalField) std::abort();
    }
    veil::Bytes s = nitro::sig_structure(*doc);
    if (!cbor::parse(s, "sig_structure").ok()) std::abort();
  }
  return 0;
}
