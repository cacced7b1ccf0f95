#include "tokenizer/unicode.h"

#include <algorithm>

namespace veil::tokenizer::unicode {

Category category(uint32_t cp) {
  if (cp > 0x10FFFF) return kCn;
  // Last range whose start <= cp.
  const CategoryRange* begin = kCategoryRanges;
  const CategoryRange* end = kCategoryRanges + kCategoryRangeCount;
  const CategoryRange* it =
      std::upper_bound(begin, end, cp, [](uint32_t v, const CategoryRange& r) { return v < r.start; });
  if (it == begin) return kCn;
  return static_cast<Category>((it - 1)->cat);
}

bool is_whitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

uint32_t decode_utf8(std::string_view s, size_t pos, size_t* len) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  uint8_t b0 = p[pos];
  *len = 1;
  if (b0 < 0x80) return b0;
  size_t need;
  uint32_t cp;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) { need = 1; cp = b0 & 0x1F; min = 0x80; }
  else if ((b0 & 0xF0) == 0xE0) { need = 2; cp = b0 & 0x0F; min = 0x800; }
  else if ((b0 & 0xF8) == 0xF0) { need = 3; cp = b0 & 0x07; min = 0x10000; }
  else return kReplacement;
  if (pos + need >= n) return kReplacement;  // truncated
  for (size_t i = 1; i <= need; ++i) {
    uint8_t b = p[pos + i];
    if ((b & 0xC0) != 0x80) return kReplacement;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kReplacement;
  *len = need + 1;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t to_lower(uint32_t cp, uint32_t out[3]) {
  const Mapping* begin = kLowerCase;
  const Mapping* end = kLowerCase + kLowerCaseCount;
  const Mapping* it = std::lower_bound(begin, end, cp, [](const Mapping& m, uint32_t v) { return m.cp < v; });
  if (it == end || it->cp != cp) {
    out[0] = cp;
    return 1;
  }
  size_t n = 0;
  for (uint32_t c : it->to) {
    if (c == 0) break;
    out[n++] = c;
  }
  return n;
}

size_t decompose(uint32_t cp, uint32_t* out, size_t cap) {
  if (cap == 0) return 0;
  // Hangul syllables (Unicode section 3.12).
  constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr uint32_t kTCount = 28, kNCount = 21 * 28, kSCount = 19 * 21 * 28;
  if (cp >= kSBase && cp < kSBase + kSCount && cap >= 3) {
    uint32_t s = cp - kSBase;
    out[0] = kLBase + s / kNCount;
    out[1] = kVBase + (s % kNCount) / kTCount;
    uint32_t t = kTBase + s % kTCount;
    if (t == kTBase) return 2;
    out[2] = t;
    return 3;
  }
  const Decomposition* begin = kDecompositions;
  const Decomposition* end = kDecompositions + kDecompositionCount;
  const Decomposition* it =
      std::lower_bound(begin, end, cp, [](const Decomposition& d, uint32_t v) { return d.cp < v; });
  if (it == end || it->cp != cp || it->offset + it->len > kDecompositionPoolSize) {
    out[0] = cp;
    return 1;
  }
  size_t n = std::min<size_t>(it->len, cap);
  for (size_t i = 0; i < n; ++i) out[i] = kDecompositionPool[it->offset + i];
  return n;
}

}  // namespace veil::tokenizer::unicode
