// libFuzzer target: the server's handling of untrusted request bodies (OpenAI JSON parsing and validation),
// and the incremental text assembly (the tokenizer's UTF-8 hold-back, then stop strings) over arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "server/openai.h"
#include "server/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace {

// A vocabulary of the 256 byte tokens <0x00>..<0xFF>: token id b decodes to byte b.
const veil::tokenizer::Tokenizer& byte_tokenizer() {
  static const veil::tokenizer::Tokenizer tok = [] {
    veil::tokenizer::Vocab v;
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      v.tokens.emplace_back(name);
      v.types.push_back(veil::tokenizer::TokenType::kByte);
    }
    v.tokens.emplace_back("<s>");
    v.types.push_back(veil::tokenizer::TokenType::kControl);
    v.bos = 256;
    v.add_space_prefix = 0;
    return std::move(veil::tokenizer::Tokenizer::from_vocab(std::move(v))).value();
  }();
  return tok;
}

// Feeds `bytes` as byte tokens.
std::string assemble(std::string_view bytes, std::vector<std::string> stop) {
  veil::server::TextAssembler t(veil::tokenizer::StreamDecoder(byte_tokenizer()), std::move(stop));
  std::string out;
  for (unsigned char c : bytes) out += t.push(c);
  return out + t.flush();
}

}  // namespace

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
    // Stop strings from the request over the prompt bytes, one byte token at a time.
    (void)assemble(r->prompt, r->generation.stop);
  }
  // Raw bytes through the assembler (invalid UTF-8 must become U+FFFD, never crash).
  (void)assemble(body, {"\n\n"});
  return 0;
}
