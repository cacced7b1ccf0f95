// Internal: the pre-tokenizers of byte-level BPE vocabularies, selected by tokenizer.ggml.pre. Each one is a
// sequence of split rules written by hand over Unicode categories (no regex engine); every rule splits every
// current piece into its matches and the unmatched text between them, as the Hugging Face "Split" (isolated)
// pre-tokenizer and llama.cpp do.
#pragma once

#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

#include "core/result.h"

namespace veil::tokenizer {

enum class PreKind {
  kDefault,        // [\p{P}$+<=>^~|]+, gpt-2, \p{N}+, [0-9]{3}
  kGpt2,           // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,         // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,          // kLlama3 with \p{N} (one digit per piece)
  kDeepseekLlm,    // [\r\n], \s?[cased letters]+, \s?[ASCII/fullwidth punctuation]+, \s+$, [CJK/Hangul]+, \p{N}+
  kDeepseekCoder,  // [\r\n], \s?\p{L}+, \s?\p{P}+, [CJK/Hangul]+, \p{N}
  kFalcon,         // [\p{P}$+<=>^~|`]+, gpt-2, [0-9]{3}
  kStarcoder,      // \p{N}, gpt-2
  kBloom,          //  ?[^(\s|.,!?…。，、।۔،)]+
  kViking,         // kBloom, \p{N}
};

struct PreSpec {
  PreKind kind = PreKind::kDefault;
  bool ignore_merges = false;  // a word that is itself a token is emitted whole (llama3)
  bool add_bos = false;        // the family's default when add_bos_token is absent
};

// kUnsupported naming the pre-tokenizer when it is not known.
Result<PreSpec> pre_spec_from_name(std::string_view name);

// Splits `text` (any bytes; invalid UTF-8 is treated as U+FFFD one byte at a time) into pieces covering it
// exactly, in order, as (byte offset, byte length).
void pre_tokenize(PreKind kind, std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces);

}  // namespace veil::tokenizer
