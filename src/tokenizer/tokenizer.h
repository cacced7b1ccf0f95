// tokenizer: text <-> token ids for GGUF models, streaming decode, and chat templates. Read this first.
//
// API in one screen:
//   auto tok = Tokenizer::from_gguf(file);              // or Tokenizer::from_vocab(Vocab{...})
//   auto ids = tok->encode("Hello", {.add_special = true, .parse_special = false});
//   std::string bytes = tok->decode(ids);                // raw bytes (may hold partial UTF-8 per token)
//   StreamDecoder dec(*tok);                             // for generation: feed ids, get whole characters
//   out += dec.push(id); ...; out += dec.flush();
//   tok->is_eog(id)                                      // stop generation on EOS/EOT/<|im_end|>-like tokens
//   auto prompt_ids = encode_chat(*tok, messages, /*add_generation_prompt=*/true);  // safe for untrusted content
//   auto prompt_text = apply_chat_template(*tok, messages, true);                    // the same, as text
//
// Models (tokenizer.ggml.model):
//   "llama" SentencePiece-style: score-ordered merging of adjacent pieces, byte fallback <0xXX>, spaces as
//           U+2581, dummy prefix space (tokenizer.ggml.add_space_prefix, default true).
//   "gpt2"  byte-level BPE: a pre-tokenizer chosen by tokenizer.ggml.pre splits text into words, each word's
//           bytes are mapped to printable code points and merged by merge rank (tokenizer.ggml.merges).
//   "bert"  WordPiece: lower-case, accents stripped, split on whitespace/punctuation/CJK, greedy longest match
//           with "##"-less continuation pieces stored without the U+2581 word prefix.
// Special tokens: user-defined tokens are always matched in text; control tokens (e.g. <s>, <|im_end|>) only when
// EncodeOptions::parse_special is set. add_special adds BOS/EOS (or [CLS]/[SEP]) per the metadata rules.
//
// Invariants: encode never fails on any byte string (invalid UTF-8 is handled byte-wise); every id returned is in
// range; decode of an out-of-range id yields nothing. Errors name the metadata key and why; they never contain
// text or token ids from a prompt.
//
// Thread-safety: a Tokenizer is immutable after construction and may be shared by many threads. A
// StreamDecoder belongs to one generation (one thread).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/core.h"

namespace veil::gguf {
class File;
}

namespace veil::tokenizer {

using TokenId = int32_t;
inline constexpr TokenId kNoToken = -1;

// Token types as GGUF numbers them (tokenizer.ggml.token_type).
enum class TokenType : uint8_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

enum class ModelKind { kLlama, kGpt2, kBert };

// A vocabulary in plain form (what from_gguf reads). Optional vectors may be empty.
struct Vocab {
  ModelKind model = ModelKind::kLlama;
  std::string pre = "default";          // tokenizer.ggml.pre (gpt2 models)
  std::vector<std::string> tokens;      // required, id = index
  std::vector<float> scores;            // llama: merge priority (higher first); empty = all 0
  std::vector<TokenType> types;         // empty = all kNormal
  std::vector<std::string> merges;      // gpt2: "left right", rank = index
  TokenId bos = kNoToken, eos = kNoToken, eot = kNoToken, unk = kNoToken, pad = kNoToken;
  TokenId sep = kNoToken, cls = kNoToken;
  int add_bos = -1;                     // -1: the model's default (llama yes, gpt2 no, bert yes ([CLS]))
  int add_eos = -1;                     // -1: the model's default (bert yes ([SEP]), others no)
  int add_space_prefix = -1;            // -1: the model's default (llama yes, others no)
  std::string chat_template;            // tokenizer.chat_template (may be empty)
  std::string name;                     // for error messages (file name)
};

struct TextRange {
  size_t offset = 0;
  size_t length = 0;
};

struct EncodeOptions {
  bool add_special = true;    // add BOS/EOS as the metadata says
  bool parse_special = false; // match control tokens (e.g. "<|im_start|>") written in the text
  // With parse_special: if non-empty, control tokens are matched only when they lie wholly inside one of these
  // byte ranges (sorted, non-overlapping). encode_chat uses this so message content never yields control tokens.
  std::span<const TextRange> special_ranges = {};
};

class Tokenizer {
 public:
  // Reads the tokenizer.* keys of a GGUF file. kNotFound if it has no vocabulary, kCorrupt for malformed or
  // inconsistent keys (lengths, ids out of range), kUnsupported for an unknown model or pre-tokenizer name.
  static Result<Tokenizer> from_gguf(const gguf::File& file);
  static Result<Tokenizer> from_vocab(Vocab vocab);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<TokenId> encode(std::string_view text, EncodeOptions options = {}) const;

  // The bytes one token stands for (byte tokens give one byte, U+2581 becomes a space, control tokens give "",
  // unless `special` is set in which case their text is returned).
  std::string token_to_piece(TokenId id, bool special = false) const;
  // Concatenated token_to_piece of every id (may end in a partial UTF-8 sequence).
  std::string decode(std::span<const TokenId> ids, bool special = false) const;

  size_t vocab_size() const;
  ModelKind model() const;
  const std::string& pre() const;
  std::string_view token_text(TokenId id) const;  // the raw vocabulary string ("" if out of range)
  TokenType token_type(TokenId id) const;
  TokenId bos() const;
  TokenId eos() const;
  bool add_bos() const;
  bool add_space_prefix() const;
  // End of generation: eos, eot, and control tokens such as <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>.
  bool is_eog(TokenId id) const;
  const std::string& chat_template() const;
  // Looks up a token by its exact vocabulary text (kNoToken if absent).
  TokenId find(std::string_view text) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streaming decode for generation: holds back the bytes of an incomplete UTF-8 character until its last byte
// arrives, so every string returned is valid UTF-8 (invalid sequences become U+FFFD). If `strip_leading_space`
// is set, a single space at the very start of the output is removed (SentencePiece's dummy prefix).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool strip_leading_space = false);
  std::string push(TokenId id);
  std::string flush();  // whatever is held back, incomplete sequences as U+FFFD

 private:
  const Tokenizer* tok_;
  std::string pending_;
  bool strip_leading_space_;
  bool at_start_ = true;
};

// ---- chat templates ----
struct ChatMessage {
  std::string role;     // "system", "user", "assistant"
  std::string content;
};

enum class ChatFormat { kChatml, kLlama2, kLlama3, kPhi3, kZephyr, kGemma };

// Recognises a Jinja chat template by its distinctive substrings (not a Jinja engine). An empty template gives
// kChatml (the documented fallback); a non-empty unknown template is kUnsupported.
Result<ChatFormat> detect_chat_format(std::string_view jinja_template);
const char* chat_format_name(ChatFormat format);
Result<ChatFormat> parse_chat_format(std::string_view name);  // "chatml", "llama2", "llama3", "phi3", ...

// Renders messages in `format`. `template_ranges`, when given, receives the byte ranges of the result that come
// from the template (not from message content). The text contains special-token strings (e.g. "<|im_start|>"): encode it
// with parse_special = true and add_special = false (the BOS the format needs is written into the text).
// kInvalidArgument for an unknown role.
Result<std::string> format_chat(ChatFormat format, std::span<const ChatMessage> messages,
                                bool add_generation_prompt, std::string_view bos_text,
                                std::string_view eos_text, std::vector<TextRange>* template_ranges = nullptr);
// detect_chat_format(tok.chat_template()) then format_chat with the tokenizer's BOS/EOS text.
Result<std::string> apply_chat_template(const Tokenizer& tok, std::span<const ChatMessage> messages,
                                        bool add_generation_prompt);
// The prompt's token ids for a chat: the template's own text may produce control tokens, message content never
// does (a user who types "<|im_end|>" gets plain-text tokens). Use this, not encode(apply_chat_template(...)),
// whenever content is untrusted. `format` overrides the detected format when set.
Result<std::vector<TokenId>> encode_chat(const Tokenizer& tok, std::span<const ChatMessage> messages,
                                         bool add_generation_prompt, const ChatFormat* format = nullptr);

}  // namespace veil::tokenizer
