// libFuzzer target: arbitrary bytes through the three tokenizer models (vocabularies built here), the
// streaming decoder, and the chat templates. Checks invariants, not just absence of crashes:
//  - every id is inside the vocabulary;
//  - byte-level BPE and SentencePiece with full byte fallback round-trip exactly;
//  - the streaming decoder only ever returns valid UTF-8.
// Input: byte 0 selects the mode, the rest is the text (or, for the stream mode, token ids).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "support/utf8.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace veil::tokenizer;

const std::string kSp = "\xE2\x96\x81";

std::string byte_level(uint8_t b) {  // GPT-2's byte -> code point mapping, as UTF-8
  static uint32_t map[256];
  static bool init = false;
  if (!init) {
    uint32_t next = 256;
    for (uint32_t i = 0; i < 256; ++i) {
      bool printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
      map[i] = printable ? i : next++;
    }
    init = true;
  }
  uint32_t cp = map[b];
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

Tokenizer make_bpe(const char* pre) {
  Vocab v;
  v.model = ModelKind::kGpt2;
  v.pre = pre;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_level(static_cast<uint8_t>(b)));
  const char* merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he", "i n", "\xC4\xA0 a", "e r", "o n", "\xC4\xA0 \xC4\xA0",
                          "1 2", "12 3", "\xC3 \xA9"};
  for (const char* m : merges) {
    std::string s = m;
    size_t sp = s.find(' ', 1);
    v.merges.push_back(s);
    v.tokens.push_back(s.substr(0, sp) + s.substr(sp + 1));
  }
  v.tokens.push_back("<|endoftext|>");
  v.tokens.push_back("<|im_start|>");
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[v.tokens.size() - 1] = TokenType::kControl;
  v.types[v.tokens.size() - 2] = TokenType::kControl;
  v.eos = v.bos = static_cast<TokenId>(v.tokens.size() - 2);
  auto t = Tokenizer::from_vocab(std::move(v));
  if (!t.ok()) __builtin_trap();
  return std::move(*t);
}

Tokenizer make_spm() {
  Vocab v;
  v.model = ModelKind::kLlama;
  v.tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.tokens.push_back(buf);
  }
  for (const std::string& s : {kSp, std::string("a"), std::string("b"), kSp + "a", std::string("ab"), kSp + "ab",
                               std::string("\xC3\xA9"), kSp + kSp, std::string("<|user|>")})
    v.tokens.push_back(s);
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[0] = TokenType::kUnknown;
  v.types[1] = v.types[2] = TokenType::kControl;
  for (int b = 0; b < 256; ++b) v.types[3 + b] = TokenType::kByte;
  v.types.back() = TokenType::kUserDefined;
  v.scores.assign(v.tokens.size(), 0.0f);
  for (size_t i = 259; i < v.scores.size(); ++i) v.scores[i] = -static_cast<float>(i % 5);
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  auto t = Tokenizer::from_vocab(std::move(v));
  if (!t.ok()) __builtin_trap();
  return std::move(*t);
}

Tokenizer make_wpm() {
  Vocab v;
  v.model = ModelKind::kBert;
  v.tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", kSp + "a", "a", kSp + "!", "b", kSp + "\xE4\xBD\xA0"};
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  for (int i = 0; i < 4; ++i) v.types[i] = TokenType::kControl;
  v.unk = 1;
  v.cls = 2;
  v.sep = 3;
  auto t = Tokenizer::from_vocab(std::move(v));
  if (!t.ok()) __builtin_trap();
  return std::move(*t);
}

using veil::testsupport::valid_utf8;

void check_ids(const Tokenizer& t, const std::vector<TokenId>& ids) {
  for (TokenId id : ids)
    if (id < 0 || static_cast<size_t>(id) >= t.vocab_size()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer spm = make_spm();
  static const Tokenizer bpe[] = {make_bpe("gpt-2"), make_bpe("llama3"), make_bpe("qwen2"), make_bpe("deepseek-llm"),
                                  make_bpe("deepseek-coder"), make_bpe("falcon"), make_bpe("starcoder"),
                                  make_bpe("default"), make_bpe("bloom"), make_bpe("viking")};
  static const Tokenizer wpm = make_wpm();
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (mode % 5) {
    case 0: {  // BPE: exact round trip (no control tokens parsed)
      const Tokenizer& t = bpe[(mode / 5) % (sizeof(bpe) / sizeof(bpe[0]))];
      auto ids = t.encode(text, {.add_special = false, .parse_special = false});
      check_ids(t, ids);
      if (t.decode(ids) != text) __builtin_trap();
      check_ids(t, t.encode(text, {.add_special = true, .parse_special = true}));
      break;
    }
    case 1: {  // SentencePiece with full byte fallback: round trip up to the dummy prefix
      auto ids = spm.encode(text, {.add_special = false, .parse_special = false});
      check_ids(spm, ids);
      std::string back = spm.decode(ids);
      // (A literal U+2581 in the text decodes as a space, as in SentencePiece; user-defined tokens are matched.)
      bool exact = text.find("<|user|>") == std::string::npos && text.find(kSp) == std::string::npos;
      if (exact && !text.empty() && back != " " + text) __builtin_trap();
      check_ids(spm, spm.encode(text, {.add_special = true, .parse_special = true}));
      break;
    }
    case 2: {  // WordPiece
      check_ids(wpm, wpm.encode(text));
      break;
    }
    case 3: {  // streaming decode of arbitrary ids
      StreamDecoder dec(spm, (mode & 8) != 0);
      std::string all;
      for (size_t i = 0; i + 1 < text.size(); i += 2) {
        TokenId id = static_cast<TokenId>(static_cast<uint8_t>(text[i]) | (static_cast<uint8_t>(text[i + 1]) << 8));
        std::string piece = dec.push(id % 300 - 5);
        if (!valid_utf8(piece)) __builtin_trap();
        all += piece;
      }
      std::string tail = dec.flush();
      if (!valid_utf8(tail)) __builtin_trap();
      break;
    }
    case 4: {  // chat: the text is a template, then content
      size_t cut = text.size() / 2;
      auto format = detect_chat_format(std::string_view(text).substr(0, cut));
      ChatFormat f = format.ok() ? *format : ChatFormat::kChatml;
      std::vector<ChatMessage> msgs = {{"system", text.substr(cut, 3)}, {"user", text.substr(cut)},
                                       {"assistant", text.substr(0, cut)}};
      auto ids = encode_chat(bpe[0], msgs, (mode & 8) != 0, &f);
      if (ids.ok()) {
        check_ids(bpe[0], *ids);
        // Content never becomes a control token: only the template's own <|im_start|> may appear.
        size_t starts = 0;
        for (TokenId id : *ids) starts += id == static_cast<TokenId>(bpe[0].vocab_size() - 1);
        if (f == ChatFormat::kChatml && starts != 3 + ((mode & 8) != 0 ? 1u : 0u)) __builtin_trap();
      }
      break;
    }
  }
  return 0;
}
