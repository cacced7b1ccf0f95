// Hand-written equivalents of the pre-tokenizer regular expressions (see pretokenize.h). A matcher returns the
// length (in code points) of the match the regular expression would find starting at position i, or 0.
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "tokenizer/unicode.h"

namespace veil::tokenizer {
namespace {

namespace u = unicode;

struct Text {
  std::vector<uint32_t> cp;    // code points
  std::vector<size_t> off;     // byte offset of each code point, plus the total length at the end
  std::vector<uint8_t> cls;    // class bits per code point
};

enum : uint8_t { kL = 1, kN = 2, kWs = 4, kP = 8 };

struct Span {
  size_t b, e;  // code point indices [b, e)
};

inline bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

struct Ctx {
  const Text& t;
  bool L(size_t i) const { return t.cls[i] & kL; }
  bool N(size_t i) const { return t.cls[i] & kN; }
  bool W(size_t i) const { return t.cls[i] & kWs; }
  bool P(size_t i) const { return t.cls[i] & kP; }
  bool other(size_t i) const { return !(t.cls[i] & (kL | kN | kWs)); }  // [^\s\p{L}\p{N}]
  template <typename Pred>
  size_t run(size_t i, size_t e, Pred p) const {  // end of the run of p starting at i
    while (i < e && p(i)) ++i;
    return i;
  }
};

// Whitespace alternatives shared by gpt-2 and llama3: \s+(?!\S)|\s+
size_t ws_tail(const Ctx& c, size_t i, size_t e) {
  size_t r = c.run(i, e, [&](size_t k) { return c.W(k); });
  if (r == e || r - i == 1) return r - i;
  return r - i - 1;
}

size_t match_gpt2(const Ctx& c, size_t i, size_t e) {
  const auto& cp = c.t.cp;
  if (cp[i] == '\'' && i + 1 < e) {
    uint32_t n = cp[i + 1];
    if (n == 's' || n == 't' || n == 'm' || n == 'd') return 2;
    if (i + 2 < e) {
      uint32_t m = cp[i + 2];
      if ((n == 'r' && m == 'e') || (n == 'v' && m == 'e') || (n == 'l' && m == 'l')) return 3;
    }
  }
  size_t j = (cp[i] == ' ' && i + 1 < e) ? i + 1 : i;
  if (c.L(j)) return c.run(j, e, [&](size_t k) { return c.L(k); }) - i;
  if (c.N(j)) return c.run(j, e, [&](size_t k) { return c.N(k); }) - i;
  if (c.other(j)) return c.run(j, e, [&](size_t k) { return c.other(k); }) - i;
  if (c.W(i)) return ws_tail(c, i, e);
  return 0;
}

inline uint32_t ascii_lower(uint32_t x) { return (x >= 'A' && x <= 'Z') ? x + 32 : x; }

size_t match_llama3(const Ctx& c, size_t i, size_t e, size_t max_digits) {
  const auto& cp = c.t.cp;
  if (cp[i] == '\'' && i + 1 < e) {
    uint32_t n = ascii_lower(cp[i + 1]);
    if (n == 's' || n == 't' || n == 'm' || n == 'd') return 2;
    if (i + 2 < e) {
      uint32_t m = ascii_lower(cp[i + 2]);
      if ((n == 'r' && m == 'e') || (n == 'v' && m == 'e') || (n == 'l' && m == 'l')) return 3;
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.L(i)) return c.run(i, e, [&](size_t k) { return c.L(k); }) - i;
  if (!is_nl(cp[i]) && !c.N(i) && i + 1 < e && c.L(i + 1))
    return c.run(i + 1, e, [&](size_t k) { return c.L(k); }) - i;
  // \p{N}{1,max}
  if (c.N(i)) return std::min(c.run(i, e, [&](size_t k) { return c.N(k); }) - i, max_digits);
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t j = (cp[i] == ' ' && i + 1 < e && c.other(i + 1)) ? i + 1 : i;
  if (c.other(j)) {
    size_t k = c.run(j, e, [&](size_t q) { return c.other(q); });
    k = c.run(k, e, [&](size_t q) { return is_nl(cp[q]); });
    return k - i;
  }
  if (c.W(i)) {
    // \s*[\r\n]+ : up to and including the last newline of the whitespace run
    size_t r = c.run(i, e, [&](size_t k) { return c.W(k); });
    for (size_t k = r; k > i; --k) {
      if (is_nl(cp[k - 1])) return k - i;
    }
    return ws_tail(c, i, e);
  }
  return 0;
}

// \s?[class]+ (greedy optional whitespace; backtracks when the class does not follow).
template <typename Pred>
size_t match_opt_ws_run(const Ctx& c, size_t i, size_t e, Pred in_class) {
  if (c.W(i) && i + 1 < e && in_class(i + 1)) return c.run(i + 1, e, in_class) - i;
  if (in_class(i)) return c.run(i, e, in_class) - i;
  return 0;
}

struct Range {
  uint32_t lo, hi;
};

// The cased-letter class of the deepseek-llm pre-tokenizer (its tokenizer.json, transcribed as ranges).
constexpr Range kDeepseekLetters[] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA}, {0x1BC, 0x1BF},
    {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377}, {0x37B, 0x37D}, {0x37F, 0x37F},
    {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481},
    {0x48A, 0x52F}, {0x531, 0x556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126},
    {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3},
    {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E}, {0xAB70, 0xABBF},
    {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
constexpr Range kDeepseekPunct[] = {
    {0x21, 0x2F}, {0x3A, 0x7E}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};
// [一-龥ࠀ-一가-퟿]
constexpr Range kCjk[] = {{0x4E00, 0x9FA5}, {0x800, 0x4E00}, {0xAC00, 0xD7FF}};

template <size_t N>
bool in_ranges(const Range (&r)[N], uint32_t c) {
  for (const Range& x : r) {
    if (c >= x.lo && c <= x.hi) return true;
  }
  return false;
}

bool is_bloom_stop(uint32_t c, bool ws) {
  if (ws) return true;
  switch (c) {
    case '(': case '|': case ')': case '.': case ',': case '!': case '?': case 0x2026: case 0x3002:
    case 0xFF0C: case 0x3001: case 0x964: case 0x6D4: case 0x60C:
      return true;
    default:
      return false;
  }
}

bool is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }

enum class Rule {
  kGpt2, kLlama3, kQwen2, kNewline, kDsLetters, kDsPunct, kWsAtEnd, kCjk, kNumbers, kNumber, kWsLetters,
  kWsPunct, kPunctDefault, kPunctFalcon, kDigits3, kBloom,
};

size_t match(Rule rule, const Ctx& c, size_t i, size_t e) {
  const auto& cp = c.t.cp;
  switch (rule) {
    case Rule::kGpt2: return match_gpt2(c, i, e);
    case Rule::kLlama3: return match_llama3(c, i, e, 3);
    case Rule::kQwen2: return match_llama3(c, i, e, 1);
    case Rule::kNewline: return is_nl(cp[i]) ? 1 : 0;
    case Rule::kDsLetters:
      return match_opt_ws_run(c, i, e, [&](size_t k) { return in_ranges(kDeepseekLetters, cp[k]); });
    case Rule::kDsPunct:
      return match_opt_ws_run(c, i, e, [&](size_t k) { return in_ranges(kDeepseekPunct, cp[k]); });
    case Rule::kCjk: return c.run(i, e, [&](size_t k) { return in_ranges(kCjk, cp[k]); }) - i;
    case Rule::kNumbers: return c.run(i, e, [&](size_t k) { return c.N(k); }) - i;
    case Rule::kNumber: return c.N(i) ? 1 : 0;
    case Rule::kWsLetters: return match_opt_ws_run(c, i, e, [&](size_t k) { return c.L(k); });
    case Rule::kWsPunct: return match_opt_ws_run(c, i, e, [&](size_t k) { return c.P(k); });
    case Rule::kPunctDefault:
    case Rule::kPunctFalcon: {
      bool falcon = rule == Rule::kPunctFalcon;
      auto in = [&](size_t k) {
        uint32_t x = cp[k];
        return c.P(k) || x == '$' || x == '+' || x == '<' || x == '=' || x == '>' || x == '^' || x == '~' ||
               x == '|' || (falcon && x == '`');
      };
      return c.run(i, e, in) - i;
    }
    case Rule::kDigits3:
      return (i + 3 <= e && is_ascii_digit(cp[i]) && is_ascii_digit(cp[i + 1]) && is_ascii_digit(cp[i + 2])) ? 3
                                                                                                             : 0;
    case Rule::kBloom: {
      auto in = [&](size_t k) { return !is_bloom_stop(cp[k], c.W(k)); };
      if (cp[i] == ' ' && i + 1 < e && in(i + 1)) return c.run(i + 1, e, in) - i;
      return c.run(i, e, in) - i;
    }
    case Rule::kWsAtEnd: return 0;  // handled in apply()
  }
  return 0;
}

// Splits each span into matches and the gaps between them.
void apply(Rule rule, const Ctx& c, const std::vector<Span>& in, std::vector<Span>& out) {
  out.clear();
  for (const Span& s : in) {
    if (rule == Rule::kWsAtEnd) {  // \s+$ : the trailing whitespace of the piece
      size_t k = s.e;
      while (k > s.b && c.W(k - 1)) --k;
      if (k > s.b) out.push_back({s.b, k});
      if (k < s.e) out.push_back({k, s.e});
      continue;
    }
    size_t gap = s.b;
    size_t i = s.b;
    while (i < s.e) {
      size_t m = match(rule, c, i, s.e);
      if (m == 0) {
        ++i;
        continue;
      }
      if (gap < i) out.push_back({gap, i});
      out.push_back({i, i + m});
      i += m;
      gap = i;
    }
    if (gap < s.e) out.push_back({gap, s.e});
  }
}

std::vector<Rule> rules_for(PreKind kind) {
  switch (kind) {
    case PreKind::kDefault: return {Rule::kPunctDefault, Rule::kGpt2, Rule::kNumbers, Rule::kDigits3};
    case PreKind::kGpt2: return {Rule::kGpt2};
    case PreKind::kLlama3: return {Rule::kLlama3};
    case PreKind::kQwen2: return {Rule::kQwen2};
    case PreKind::kDeepseekLlm:
      return {Rule::kNewline, Rule::kDsLetters, Rule::kDsPunct, Rule::kWsAtEnd, Rule::kCjk, Rule::kNumbers};
    case PreKind::kDeepseekCoder:
      return {Rule::kNewline, Rule::kWsLetters, Rule::kWsPunct, Rule::kCjk, Rule::kNumber};
    case PreKind::kFalcon: return {Rule::kPunctFalcon, Rule::kGpt2, Rule::kDigits3};
    case PreKind::kStarcoder: return {Rule::kNumber, Rule::kGpt2};
    case PreKind::kBloom: return {Rule::kBloom};
    case PreKind::kViking: return {Rule::kBloom, Rule::kNumber};
  }
  return {Rule::kGpt2};
}

}  // namespace

Result<PreSpec> pre_spec_from_name(std::string_view name) {
  struct Entry {
    std::string_view name;
    PreKind kind;
    bool ignore_merges;
    bool add_bos;
  };
  static constexpr Entry kEntries[] = {
      {"default", PreKind::kDefault, false, false},
      {"llama3", PreKind::kLlama3, true, true},
      {"llama-v3", PreKind::kLlama3, true, true},
      {"llama-bpe", PreKind::kLlama3, true, true},
      {"falcon3", PreKind::kLlama3, true, true},
      {"dbrx", PreKind::kLlama3, false, false},
      {"smaug-bpe", PreKind::kLlama3, false, false},
      {"chatglm-bpe", PreKind::kLlama3, false, false},
      {"qwen2", PreKind::kQwen2, false, false},
      {"stablelm2", PreKind::kQwen2, false, false},
      {"deepseek-r1-qwen", PreKind::kQwen2, false, true},
      {"deepseek-llm", PreKind::kDeepseekLlm, false, true},
      {"deepseek-coder", PreKind::kDeepseekCoder, false, true},
      {"falcon", PreKind::kFalcon, false, false},
      {"starcoder", PreKind::kStarcoder, false, false},
      {"refact", PreKind::kStarcoder, false, false},
      {"command-r", PreKind::kStarcoder, false, true},
      {"smollm", PreKind::kStarcoder, false, false},
      {"codeshell", PreKind::kStarcoder, false, false},
      {"exaone", PreKind::kStarcoder, false, false},
      {"minerva-7b", PreKind::kStarcoder, false, false},
      {"gpt-2", PreKind::kGpt2, false, false},
      {"gpt2", PreKind::kGpt2, false, false},
      {"gpt-neox", PreKind::kGpt2, false, false},
      {"mpt", PreKind::kGpt2, false, false},
      {"olmo", PreKind::kGpt2, false, false},
      {"jais", PreKind::kGpt2, false, false},
      {"phi-2", PreKind::kGpt2, false, false},
      {"jina-es", PreKind::kGpt2, false, false},
      {"jina-de", PreKind::kGpt2, false, false},
      {"jina-v1-en", PreKind::kGpt2, false, false},
      {"jina-v2-es", PreKind::kGpt2, false, false},
      {"jina-v2-de", PreKind::kGpt2, false, false},
      {"jina-v2-code", PreKind::kGpt2, false, false},
      {"roberta-bpe", PreKind::kGpt2, false, false},
      {"gigachat", PreKind::kGpt2, false, false},
      {"poro-chat", PreKind::kBloom, false, false},
      {"bloom", PreKind::kBloom, false, false},
      {"gpt3-finnish", PreKind::kBloom, false, false},
      {"viking", PreKind::kViking, false, false},
  };
  for (const Entry& e : kEntries) {
    if (e.name == name) return PreSpec{e.kind, e.ignore_merges, e.add_bos};
  }
  return make_error(ErrorCode::kUnsupported,
                    "tokenizer: metadata key tokenizer.ggml.pre: unknown pre-tokenizer '{}' (see docs/tokenizer.md)",
                    name.substr(0, 64));
}

void pre_tokenize(PreKind kind, std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces) {
  pieces.clear();
  if (text.empty()) return;
  Text t;
  t.cp.reserve(text.size());
  t.off.reserve(text.size() + 1);
  t.cls.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 1;
    uint32_t cp = u::decode_utf8(text, pos, &len);
    t.cp.push_back(cp);
    t.off.push_back(pos);
    uint8_t cls = 0;
    if (u::is_whitespace(cp)) {
      cls = kWs;
    } else {
      u::Category cat = u::category(cp);
      if (cat >= u::kLu && cat <= u::kLo) cls = kL;
      else if (cat >= u::kNd && cat <= u::kNo) cls = kN;
      else if (cat >= u::kPc && cat <= u::kPo) cls = kP;
    }
    t.cls.push_back(cls);
    pos += len;
  }
  t.off.push_back(text.size());
  Ctx c{t};
  std::vector<Span> a{{0, t.cp.size()}}, b;
  for (Rule r : rules_for(kind)) {
    apply(r, c, a, b);
    a.swap(b);
  }
  pieces.reserve(a.size());
  for (const Span& s : a) pieces.emplace_back(t.off[s.b], t.off[s.e] - t.off[s.b]);
}

}  // namespace veil::tokenizer
