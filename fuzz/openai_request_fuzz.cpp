// libFuzzer target: the server's handling of untrusted request bodies (OpenAI JSON parsing and validation),
// and the incremental text assembly (UTF-8 hold-back and stop strings) over arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/openai.h"
#include "server/scheduler.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  for (auto ep : {veil::server::Endpoint::kCompletions, veil::server::Endpoint::kChatCompletions}) {
    veil::server::RequestError err;
    auto r = veil::server::parse_request(ep, body, err);
    if (!r) {
      (void)veil::server::error_body(400, err.message, err.param);
      continue;
    }
    veil::server::CompletionText c;
    c.id = "cmpl-fuzz";
    c.model = r->model;
    c.text = ep == veil::server::Endpoint::kCompletions ? r->prompt : std::string();
    (void)veil::server::completion_body(ep, c);
    (void)veil::server::stream_delta_event(ep, c, c.text, true);
    // Stop strings from the request over the prompt bytes, fed in pieces.
    veil::server::TextAssembler t(r->generation.stop);
    std::string out;
    for (size_t i = 0; i < r->prompt.size(); i += 3) out += t.push(std::string_view(r->prompt).substr(i, 3));
    out += t.flush();
  }
  // Raw bytes through the assembler (invalid UTF-8 must become U+FFFD, never crash).
  veil::server::TextAssembler raw({"\n\n"});
  for (size_t i = 0; i < size; i += 2) (void)raw.push(body.substr(i, 2));
  (void)raw.flush();
  return 0;
}
