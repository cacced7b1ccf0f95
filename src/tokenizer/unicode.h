// Internal: Unicode character classes, UTF-8 helpers, lower-casing and NFD for the tokenizers.
// The tables live in unicode_data.cpp, generated from Python's unicodedata by gen_unicode_data.py.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace veil::tokenizer::unicode {

// General categories, in the order of gen_unicode_data.py's CATS list.
enum Category : uint8_t {
  kCn, kLu, kLl, kLt, kLm, kLo, kMn, kMc, kMe, kNd, kNl, kNo, kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo, kZs, kZl, kZp, kCc, kCf, kCs, kCo,
};

struct CategoryRange {
  uint32_t start;
  uint8_t cat;
};
struct Mapping {
  uint32_t cp;
  uint32_t to[3];  // 0-terminated when shorter
};
struct Decomposition {
  uint32_t cp;
  uint32_t offset;  // into kDecompositionPool
  uint32_t len;
};

extern const CategoryRange kCategoryRanges[];
extern const size_t kCategoryRangeCount;
extern const Mapping kLowerCase[];
extern const size_t kLowerCaseCount;
extern const uint32_t kDecompositionPool[];
extern const size_t kDecompositionPoolSize;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;

Category category(uint32_t cp);
inline bool is_letter(uint32_t cp) { Category c = category(cp); return c >= kLu && c <= kLo; }
inline bool is_mark(uint32_t cp) { Category c = category(cp); return c >= kMn && c <= kMe; }
inline bool is_number(uint32_t cp) { Category c = category(cp); return c >= kNd && c <= kNo; }
inline bool is_punct(uint32_t cp) { Category c = category(cp); return c >= kPc && c <= kPo; }
inline bool is_symbol(uint32_t cp) { Category c = category(cp); return c >= kSm && c <= kSo; }
inline bool is_other(uint32_t cp) { Category c = category(cp); return c == kCn || c >= kCc; }
// The Unicode White_Space property (what \s matches in the tokenizers' regular expressions).
bool is_whitespace(uint32_t cp);

inline constexpr uint32_t kReplacement = 0xFFFD;

// Decodes the UTF-8 character at s[pos] (pos < s.size()). Returns its code point and sets *len to its byte
// length. A malformed or truncated sequence yields kReplacement with *len = 1 (one byte consumed).
uint32_t decode_utf8(std::string_view s, size_t pos, size_t* len);
void append_utf8(std::string& out, uint32_t cp);
// Length of a UTF-8 sequence from its first byte (1 for continuation or invalid bytes), as SentencePiece
// splits text into characters.
inline size_t utf8_len_from_lead(uint8_t b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 1;
}

// Full lower-case mapping: writes 1..3 code points to out and returns the count.
size_t to_lower(uint32_t cp, uint32_t out[3]);
// Canonical decomposition (NFD of one code point, Hangul included): writes up to `cap` code points to out and
// returns the count (1 with out[0] = cp when there is none).
size_t decompose(uint32_t cp, uint32_t* out, size_t cap);

}  // namespace veil::tokenizer::unicode
