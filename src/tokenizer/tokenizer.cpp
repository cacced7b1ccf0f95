// Tokenizer construction, encoding (SentencePiece-style, byte-level BPE, WordPiece) and decoding.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <queue>
#include <unordered_map>

#include "gguf/gguf.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace veil::tokenizer {

namespace u = unicode;

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// GPT-2's reversible byte <-> printable code point mapping.
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};
  ByteMap() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? b : next++;
      to_cp[b] = cp;
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

bool parse_byte_token(std::string_view s, uint8_t* out) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(s[3]), lo = hex(s[4]);
  if (hi < 0 || lo < 0) return false;
  *out = static_cast<uint8_t>(hi * 16 + lo);
  return true;
}

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

bool is_bert_chinese(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_bert_punct(uint32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return u::is_punct(c);
}

}  // namespace

struct Tokenizer::Impl {
  Vocab v;
  PreSpec pre;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;
  std::unordered_map<std::string_view, TokenId, StrHash, std::equal_to<>> to_id;
  std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>> merge_rank;  // "left right" -> rank
  std::array<TokenId, 256> byte_token{};
  std::vector<uint8_t> eog;                    // per id
  std::array<std::vector<TokenId>, 256> specials_by_byte;  // longest first
  size_t max_token_len = 0;

  TokenType type(TokenId id) const {
    if (id < 0 || static_cast<size_t>(id) >= v.tokens.size()) return TokenType::kUndefined;
    return v.types.empty() ? TokenType::kNormal : v.types[static_cast<size_t>(id)];
  }
  float score(TokenId id) const { return v.scores.empty() ? 0.0f : v.scores[static_cast<size_t>(id)]; }
  TokenId lookup(std::string_view s) const {
    auto it = to_id.find(s);
    return it == to_id.end() ? kNoToken : it->second;
  }

  void encode_spm(std::string_view text, bool prefix_space, std::vector<TokenId>& out) const;
  void encode_bpe(std::string_view text, std::vector<TokenId>& out) const;
  void encode_wpm(std::string_view text, std::vector<TokenId>& out) const;
  void bpe_word(std::string_view word, std::vector<TokenId>& out) const;
};

// ---------------------------------------------------------------------------------------------------------
// Construction

Result<Tokenizer> Tokenizer::from_vocab(Vocab vocab) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.v = std::move(vocab);
  Vocab& v = m.v;
  const std::string where = v.name.empty() ? std::string("vocabulary") : v.name;
  const size_t n = v.tokens.size();
  if (n == 0) return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.tokens is empty", where);
  if (n > static_cast<size_t>(std::numeric_limits<TokenId>::max()))
    return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.tokens has {} entries (too many)", where, n);
  if (!v.scores.empty() && v.scores.size() != n)
    return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.scores has {} entries, tokens has {}", where,
                      v.scores.size(), n);
  if (!v.types.empty() && v.types.size() != n)
    return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.token_type has {} entries, tokens has {}",
                      where, v.types.size(), n);
  for (size_t i = 0; i < v.types.size(); ++i) {
    if (static_cast<uint8_t>(v.types[i]) > 6)
      return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.token_type[{}] = {} is not a token type",
                        where, i, static_cast<int>(v.types[i]));
  }
  for (size_t i = 0; i < v.scores.size(); ++i) {
    if (v.scores[i] != v.scores[i]) v.scores[i] = -std::numeric_limits<float>::infinity();  // NaN: never preferred
  }
  struct IdKey {
    const char* key;
    TokenId* id;
  };
  const IdKey ids[] = {{"bos_token_id", &v.bos}, {"eos_token_id", &v.eos}, {"eot_token_id", &v.eot},
                       {"unknown_token_id", &v.unk}, {"padding_token_id", &v.pad}, {"seperator_token_id", &v.sep},
                       {"cls_token_id", &v.cls}};
  for (const IdKey& k : ids) {
    if (*k.id < kNoToken || (*k.id >= 0 && static_cast<size_t>(*k.id) >= n))
      return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.{} = {} is outside the vocabulary of {}",
                        where, k.key, *k.id, n);
  }

  // Types: when absent, infer byte tokens and the special ids.
  if (v.types.empty()) {
    v.types.assign(n, TokenType::kNormal);
    for (size_t i = 0; i < n; ++i) {
      uint8_t b;
      if (v.model == ModelKind::kLlama && parse_byte_token(v.tokens[i], &b)) v.types[i] = TokenType::kByte;
    }
    for (TokenId id : {v.bos, v.eos, v.eot, v.pad, v.sep, v.cls}) {
      if (id >= 0) v.types[static_cast<size_t>(id)] = TokenType::kControl;
    }
    if (v.unk >= 0) v.types[static_cast<size_t>(v.unk)] = TokenType::kUnknown;
  }

  m.to_id.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    m.to_id[v.tokens[i]] = static_cast<TokenId>(i);  // a duplicate text maps to its last id
    m.max_token_len = std::max(m.max_token_len, v.tokens[i].size());
  }

  // Model defaults, then metadata.
  switch (v.model) {
    case ModelKind::kLlama:
      m.add_bos = true;
      m.add_space_prefix = true;
      break;
    case ModelKind::kGpt2: {
      auto spec = pre_spec_from_name(v.pre.empty() ? std::string_view("default") : std::string_view(v.pre));
      if (!spec.ok()) return std::move(spec).error().wrap(where);
      m.pre = *spec;
      m.add_bos = m.pre.add_bos;
      if (v.merges.empty())
        return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.merges is missing for a gpt2 vocabulary",
                          where);
      m.merge_rank.reserve(v.merges.size() * 2);
      for (size_t r = 0; r < v.merges.size(); ++r) {
        const std::string& s = v.merges[r];
        size_t sp = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
        if (sp == std::string::npos || sp + 1 >= s.size())
          return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.merges[{}] is not 'left right'", where,
                            r);
        m.merge_rank.emplace(s, static_cast<int32_t>(r));  // first occurrence keeps the lowest rank
      }
      break;
    }
    case ModelKind::kBert:
      if (v.bos < 0) v.bos = v.cls;
      m.add_bos = v.bos >= 0;
      m.add_eos = v.sep >= 0;
      break;
  }
  if (v.add_bos >= 0) m.add_bos = v.add_bos != 0;
  if (v.add_eos >= 0) m.add_eos = v.add_eos != 0;
  if (v.add_space_prefix >= 0) m.add_space_prefix = v.add_space_prefix != 0 && v.model == ModelKind::kLlama;
  if (m.add_bos && v.bos < 0) m.add_bos = false;
  if (m.add_eos && (v.model == ModelKind::kBert ? v.sep : v.eos) < 0) m.add_eos = false;

  // Byte fallback tokens.
  m.byte_token.fill(kNoToken);
  for (size_t i = 0; i < n; ++i) {
    uint8_t b;
    if (v.types[i] == TokenType::kByte && parse_byte_token(v.tokens[i], &b) && m.byte_token[b] == kNoToken)
      m.byte_token[b] = static_cast<TokenId>(i);
  }
  for (int b = 0; b < 256; ++b) {
    if (m.byte_token[b] == kNoToken) {
      char c = static_cast<char>(b);
      TokenId id = m.lookup(std::string_view(&c, 1));
      m.byte_token[b] = id != kNoToken ? id : v.unk;
    }
  }

  // Special tokens matched in text, longest first per first byte.
  for (size_t i = 0; i < n; ++i) {
    TokenType t = v.types[i];
    if ((t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown) && !v.tokens[i].empty())
      m.specials_by_byte[static_cast<uint8_t>(v.tokens[i][0])].push_back(static_cast<TokenId>(i));
  }
  for (auto& list : m.specials_by_byte) {
    std::stable_sort(list.begin(), list.end(), [&](TokenId a, TokenId b) {
      return m.v.tokens[static_cast<size_t>(a)].size() > m.v.tokens[static_cast<size_t>(b)].size();
    });
  }

  // End-of-generation tokens.
  m.eog.assign(n, 0);
  for (TokenId id : {v.eos, v.eot}) {
    if (id >= 0) m.eog[static_cast<size_t>(id)] = 1;
  }
  static constexpr std::string_view kEogTexts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                                   "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "</s>",
                                                   "<|END_OF_TURN_TOKEN|>", "<EOT>", "<|file_separator|>"};
  for (std::string_view s : kEogTexts) {
    TokenId id = m.lookup(s);
    if (id >= 0 && v.types[static_cast<size_t>(id)] == TokenType::kControl) m.eog[static_cast<size_t>(id)] = 1;
  }
  return Tokenizer(std::move(impl));
}

namespace {

// Reads an optional id key: absent or 0xFFFFFFFF/-1 -> kNoToken.
Result<TokenId> read_id(const gguf::File& f, std::string_view key) {
  const gguf::Value* val = f.find(key);
  if (!val) return kNoToken;
  auto r = f.get_int(key);
  if (!r.ok()) return std::move(r).error();
  int64_t x = *r;
  if (x == -1 || x == 0xFFFFFFFFll) return kNoToken;
  if (x < 0 || x > std::numeric_limits<TokenId>::max())
    return make_error(ErrorCode::kCorrupt, "tokenizer: {}: metadata key {} = {} is not a token id", f.name(), key, x);
  return static_cast<TokenId>(x);
}

Result<int> read_flag(const gguf::File& f, std::string_view key) {
  if (!f.find(key)) return -1;
  auto r = f.get_bool(key);
  if (!r.ok()) return std::move(r).error();
  return *r ? 1 : 0;
}

}  // namespace

Result<Tokenizer> Tokenizer::from_gguf(const gguf::File& f) {
  Vocab v;
  v.name = f.name();
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model.ok()) {
    if (model.error().code() == ErrorCode::kNotFound)
      return make_error(ErrorCode::kNotFound, "tokenizer: {}: no vocabulary (metadata key tokenizer.ggml.model absent)",
                        f.name());
    return std::move(model).error();
  }
  if (*model == "llama") v.model = ModelKind::kLlama;
  else if (*model == "gpt2") v.model = ModelKind::kGpt2;
  else if (*model == "bert") v.model = ModelKind::kBert;
  else
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer: {}: metadata key tokenizer.ggml.model: unsupported tokenizer '{}' (llama, gpt2, bert)",
                      f.name(), model->substr(0, 64));
  if (f.find("tokenizer.ggml.pre")) {
    VEIL_ASSIGN_OR_RETURN(v.pre, f.get_string("tokenizer.ggml.pre"));
  }
  VEIL_ASSIGN_OR_RETURN(v.tokens, f.get_string_array("tokenizer.ggml.tokens"));
  if (f.find("tokenizer.ggml.scores")) {
    VEIL_ASSIGN_OR_RETURN(v.scores, f.get_float_array("tokenizer.ggml.scores"));
  }
  if (f.find("tokenizer.ggml.token_type")) {
    VEIL_ASSIGN_OR_RETURN(auto types, f.get_int_array("tokenizer.ggml.token_type"));
    v.types.resize(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 0 || types[i] > 6)
        return make_error(ErrorCode::kCorrupt, "tokenizer: {}: tokenizer.ggml.token_type[{}] = {} is not a token type",
                          f.name(), i, types[i]);
      v.types[i] = static_cast<TokenType>(types[i]);
    }
  }
  if (f.find("tokenizer.ggml.merges")) {
    VEIL_ASSIGN_OR_RETURN(v.merges, f.get_string_array("tokenizer.ggml.merges"));
  }
  VEIL_ASSIGN_OR_RETURN(v.bos, read_id(f, "tokenizer.ggml.bos_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.eos, read_id(f, "tokenizer.ggml.eos_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.eot, read_id(f, "tokenizer.ggml.eot_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.unk, read_id(f, "tokenizer.ggml.unknown_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.pad, read_id(f, "tokenizer.ggml.padding_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.sep, read_id(f, "tokenizer.ggml.seperator_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.cls, read_id(f, "tokenizer.ggml.cls_token_id"));
  VEIL_ASSIGN_OR_RETURN(v.add_bos, read_flag(f, "tokenizer.ggml.add_bos_token"));
  VEIL_ASSIGN_OR_RETURN(v.add_eos, read_flag(f, "tokenizer.ggml.add_eos_token"));
  VEIL_ASSIGN_OR_RETURN(v.add_space_prefix, read_flag(f, "tokenizer.ggml.add_space_prefix"));
  if (f.find("tokenizer.chat_template")) {
    VEIL_ASSIGN_OR_RETURN(v.chat_template, f.get_string("tokenizer.chat_template"));
  }
  return from_vocab(std::move(v));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

// ---------------------------------------------------------------------------------------------------------
// SentencePiece-style: start from UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is
// the vocabulary entry with the highest score (ties: leftmost), then emit each piece, or its bytes as <0xXX>.

namespace {

struct Sym {
  int prev, next;
  size_t off, len;
};

struct SpmPair {
  float score;
  int left, right;
  size_t len;
  bool operator<(const SpmPair& o) const {  // priority_queue: top is the greatest
    if (score != o.score) return score < o.score;
    return left > o.left;
  }
};

struct BpePair {
  int32_t rank;
  int left, right;
  size_t len;
  bool operator<(const BpePair& o) const {
    if (rank != o.rank) return rank > o.rank;
    return left > o.left;
  }
};

// Merges adjacent symbols best pair first (SentencePiece scores, BPE ranks: Pair's ordering) until no candidate
// is left. `try_pair(l, r)` queues the pair of symbols l and r if the vocabulary or the merge list has it; a
// queued pair whose symbols changed since is stale and skipped.
template <typename Pair, typename TryPair>
void merge_pairs(std::vector<Sym>& syms, std::priority_queue<Pair>& queue, TryPair&& try_pair) {
  for (size_t i = 1; i < syms.size(); ++i) try_pair(static_cast<int>(i - 1), static_cast<int>(i));
  while (!queue.empty()) {
    Pair p = queue.top();
    queue.pop();
    Sym& l = syms[p.left];
    Sym& r = syms[p.right];
    if (l.len == 0 || r.len == 0 || l.next != p.right || l.len + r.len != p.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = p.left;
    try_pair(l.prev, p.left);
    try_pair(p.left, l.next);
  }
}

}  // namespace

void Tokenizer::Impl::encode_spm(std::string_view raw, bool prefix_space, std::vector<TokenId>& out) const {
  std::string text;
  text.reserve(raw.size() * 3 + 3);
  if (prefix_space) text += kSpaceMark;
  for (char ch : raw) {
    if (ch == ' ') text += kSpaceMark;
    else text.push_back(ch);
  }
  if (text.empty()) return;
  std::vector<Sym> syms;
  syms.reserve(text.size());
  for (size_t off = 0; off < text.size();) {
    // Characters are validated: a malformed byte is a symbol of its own (emitted through byte fallback), so
    // it can never swallow the start of the following character.
    size_t len = 1;
    u::decode_utf8(text, off, &len);
    int idx = static_cast<int>(syms.size());
    syms.push_back({idx - 1, off + len == text.size() ? -1 : idx + 1, off, len});
    off += len;
  }
  std::priority_queue<SpmPair> queue;
  auto try_pair = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    std::string_view s(text.data() + syms[l].off, syms[l].len + syms[r].len);
    TokenId id = lookup(s);
    if (id == kNoToken) return;
    queue.push({score(id), l, r, s.size()});
  };
  merge_pairs(syms, queue, try_pair);
  for (int i = 0; i != -1; i = syms[i].next) {
    std::string_view s(text.data() + syms[i].off, syms[i].len);
    TokenId id = lookup(s);
    if (id != kNoToken) {
      out.push_back(id);
      continue;
    }
    for (char ch : s) {
      TokenId b = byte_token[static_cast<uint8_t>(ch)];
      if (b != kNoToken) out.push_back(b);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Byte-level BPE.

void Tokenizer::Impl::bpe_word(std::string_view word, std::vector<TokenId>& out) const {
  if (pre.ignore_merges) {
    TokenId id = lookup(word);
    if (id != kNoToken) {
      out.push_back(id);
      return;
    }
  }
  std::vector<Sym> syms;
  syms.reserve(word.size());
  for (size_t off = 0; off < word.size();) {
    size_t len = std::min(u::utf8_len_from_lead(static_cast<uint8_t>(word[off])), word.size() - off);
    int idx = static_cast<int>(syms.size());
    syms.push_back({idx - 1, off + len == word.size() ? -1 : idx + 1, off, len});
    off += len;
  }
  std::priority_queue<BpePair> queue;
  std::string key;
  auto try_pair = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    key.assign(word.data() + syms[l].off, syms[l].len);
    key.push_back(' ');
    key.append(word.data() + syms[r].off, syms[r].len);
    auto it = merge_rank.find(key);
    if (it == merge_rank.end()) return;
    queue.push({it->second, l, r, syms[l].len + syms[r].len});
  };
  merge_pairs(syms, queue, try_pair);
  for (int i = 0; i != -1; i = syms[i].next) {
    std::string_view s(word.data() + syms[i].off, syms[i].len);
    TokenId id = lookup(s);
    if (id != kNoToken) {
      out.push_back(id);
      continue;
    }
    // Not in the vocabulary (a malformed vocabulary): fall back to single characters, else unknown.
    for (size_t off = 0; off < s.size();) {
      size_t len = std::min(u::utf8_len_from_lead(static_cast<uint8_t>(s[off])), s.size() - off);
      TokenId c = lookup(s.substr(off, len));
      if (c != kNoToken) out.push_back(c);
      else if (v.unk >= 0) out.push_back(v.unk);
      off += len;
    }
  }
}

void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<TokenId>& out) const {
  std::vector<std::pair<size_t, size_t>> pieces;
  pre_tokenize(pre.kind, text, pieces);
  const ByteMap& bm = byte_map();
  std::string word;
  for (const auto& [off, len] : pieces) {
    word.clear();
    for (size_t i = 0; i < len; ++i) u::append_utf8(word, bm.to_cp[static_cast<uint8_t>(text[off + i])]);
    bpe_word(word, out);
  }
}

// ---------------------------------------------------------------------------------------------------------
// WordPiece (BERT): normalise (drop controls, whitespace to space, pad CJK, strip accents, lower-case), split
// on whitespace and punctuation, then greedy longest-match per word. In GGUF vocabularies a word-initial piece
// is stored as U+2581 + text and a continuation piece ("##x" originally) as the bare text.

void Tokenizer::Impl::encode_wpm(std::string_view text, std::vector<TokenId>& out) const {
  std::vector<std::string> words;
  std::string cur;
  auto finish = [&]() {
    if (!cur.empty()) words.push_back(std::move(cur));
    cur.clear();
  };
  uint32_t dec[8];
  uint32_t low[3];
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 1;
    uint32_t cp = u::decode_utf8(text, pos, &len);
    pos += len;
    if (cp == 0 || cp == u::kReplacement) continue;
    bool ws = cp == '\t' || cp == '\n' || cp == '\r' || u::is_whitespace(cp);
    if (!ws && u::is_other(cp)) continue;  // control, format, unassigned, private use
    if (ws) {
      finish();
      continue;
    }
    if (is_bert_chinese(cp)) {
      finish();
      u::append_utf8(cur, cp);
      finish();
      continue;
    }
    size_t nd = u::decompose(cp, dec, 8);
    for (size_t k = 0; k < nd; ++k) {
      if (u::category(dec[k]) == u::kMn) continue;  // accents stripped
      size_t nl = u::to_lower(dec[k], low);
      for (size_t q = 0; q < nl; ++q) {
        uint32_t c = low[q];
        if (is_bert_punct(c)) {
          finish();
          u::append_utf8(cur, c);
          finish();
        } else if (u::is_whitespace(c)) {
          finish();
        } else {
          u::append_utf8(cur, c);
        }
      }
    }
  }
  finish();
  std::string probe;
  for (const std::string& w : words) {
    size_t nchars = 0;
    for (size_t i = 0; i < w.size(); ++i) nchars += (static_cast<uint8_t>(w[i]) & 0xC0) != 0x80;
    const size_t before = out.size();
    bool ok = nchars <= 100;
    size_t start = 0;
    while (ok && start < w.size()) {
      size_t end = std::min(w.size(), start + max_token_len);
      TokenId found = kNoToken;
      while (end > start) {
        // only cut at character boundaries
        if (end < w.size() && (static_cast<uint8_t>(w[end]) & 0xC0) == 0x80) {
          --end;
          continue;
        }
        probe.clear();
        if (start == 0) probe += kSpaceMark;
        probe.append(w, start, end - start);
        found = lookup(probe);
        if (found != kNoToken) break;
        --end;
      }
      if (found == kNoToken) {
        ok = false;
        break;
      }
      out.push_back(found);
      start = end;
    }
    if (!ok) {
      out.resize(before);
      if (v.unk >= 0) out.push_back(v.unk);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------

std::vector<TokenId> Tokenizer::encode(std::string_view text, EncodeOptions options) const {
  const Impl& m = *impl_;
  std::vector<TokenId> out;
  out.reserve(text.size() / 2 + 4);
  if (options.add_special && m.add_bos) out.push_back(m.v.bos);
  bool prev_special = true;  // SentencePiece adds the dummy prefix to the first text and after special tokens
  auto encode_text = [&](std::string_view s) {
    if (s.empty()) return;
    switch (m.v.model) {
      case ModelKind::kLlama: m.encode_spm(s, m.add_space_prefix && prev_special, out); break;
      case ModelKind::kGpt2: m.encode_bpe(s, out); break;
      case ModelKind::kBert: m.encode_wpm(s, out); break;
    }
    prev_special = false;
  };
  size_t start = 0;
  size_t range_idx = 0;
  const auto& ranges = options.special_ranges;
  for (size_t pos = 0; pos < text.size();) {
    TokenId hit = kNoToken;
    // The allowed range containing pos, if control tokens are restricted to ranges.
    size_t range_end = text.size();
    bool control_ok = options.parse_special;
    if (control_ok && !ranges.empty()) {
      while (range_idx < ranges.size() && ranges[range_idx].offset + ranges[range_idx].length <= pos) ++range_idx;
      control_ok = range_idx < ranges.size() && ranges[range_idx].offset <= pos;
      if (control_ok) range_end = ranges[range_idx].offset + ranges[range_idx].length;
    }
    for (TokenId id : m.specials_by_byte[static_cast<uint8_t>(text[pos])]) {
      TokenType t = m.v.types[static_cast<size_t>(id)];
      const std::string& s = m.v.tokens[static_cast<size_t>(id)];
      if (t != TokenType::kUserDefined && (!control_ok || pos + s.size() > range_end)) continue;
      if (text.compare(pos, s.size(), s) == 0) {
        hit = id;
        break;
      }
    }
    if (hit == kNoToken) {
      ++pos;
      continue;
    }
    encode_text(text.substr(start, pos - start));
    out.push_back(hit);
    prev_special = true;
    pos += m.v.tokens[static_cast<size_t>(hit)].size();
    start = pos;
  }
  encode_text(text.substr(start));
  if (options.add_special && m.add_eos) out.push_back(m.v.model == ModelKind::kBert ? m.v.sep : m.v.eos);
  return out;
}

std::string Tokenizer::token_to_piece(TokenId id, bool special) const {
  const Impl& m = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= m.v.tokens.size()) return {};
  const std::string& text = m.v.tokens[static_cast<size_t>(id)];
  TokenType t = m.type(id);
  if (t == TokenType::kControl) return special ? text : std::string();
  if (t == TokenType::kUnknown) return special ? text : std::string("\xE2\x96\x85");  // U+2585, as llama.cpp
  if (t == TokenType::kUserDefined) return text;
  if (t == TokenType::kByte) {
    uint8_t b;
    if (parse_byte_token(text, &b)) return std::string(1, static_cast<char>(b));
    return text;
  }
  std::string out;
  out.reserve(text.size());
  switch (m.v.model) {
    case ModelKind::kLlama:
    case ModelKind::kBert:
      for (size_t i = 0; i < text.size();) {
        if (text.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
          out.push_back(' ');
          i += kSpaceMark.size();
        } else {
          out.push_back(text[i++]);
        }
      }
      break;
    case ModelKind::kGpt2: {
      const ByteMap& bm = byte_map();
      for (size_t i = 0; i < text.size();) {
        size_t len = 1;
        uint32_t cp = u::decode_utf8(text, i, &len);
        if (cp < bm.to_byte.size() && bm.to_byte[cp] >= 0)
          out.push_back(static_cast<char>(bm.to_byte[cp]));
        else
          out.append(text, i, len);
        i += len;
      }
      break;
    }
  }
  return out;
}

std::string Tokenizer::decode(std::span<const TokenId> ids, bool special) const {
  std::string out;
  for (TokenId id : ids) out += token_to_piece(id, special);
  return out;
}

size_t Tokenizer::vocab_size() const { return impl_->v.tokens.size(); }
ModelKind Tokenizer::model() const { return impl_->v.model; }
const std::string& Tokenizer::pre() const { return impl_->v.pre; }
std::string_view Tokenizer::token_text(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->v.tokens.size()) return {};
  return impl_->v.tokens[static_cast<size_t>(id)];
}
TokenType Tokenizer::token_type(TokenId id) const { return impl_->type(id); }
TokenId Tokenizer::bos() const { return impl_->v.bos; }
TokenId Tokenizer::eos() const { return impl_->v.model == ModelKind::kBert && impl_->v.eos < 0 ? impl_->v.sep : impl_->v.eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix; }
bool Tokenizer::is_eog(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->eog.size() && impl_->eog[static_cast<size_t>(id)] != 0;
}
const std::string& Tokenizer::chat_template() const { return impl_->v.chat_template; }
TokenId Tokenizer::find(std::string_view text) const { return impl_->lookup(text); }

// ---------------------------------------------------------------------------------------------------------
// Streaming decode.

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool strip_leading_space)
    : tok_(&tok), strip_leading_space_(strip_leading_space) {}

namespace {

// Moves the complete UTF-8 prefix of `pending` into the result; malformed bytes become U+FFFD. With `final`,
// an incomplete tail becomes U+FFFD too.
std::string take_complete(std::string& pending, bool final) {
  std::string out;
  size_t i = 0;
  const size_t n = pending.size();
  while (i < n) {
    uint8_t b = static_cast<uint8_t>(pending[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    size_t need = u::utf8_len_from_lead(b);
    if (need == 1) {  // stray continuation or invalid lead
      u::append_utf8(out, u::kReplacement);
      ++i;
      continue;
    }
    if (i + need > n) {
      // Incomplete: hold back if what is there could still become valid.
      bool plausible = true;
      for (size_t k = i + 1; k < n; ++k) plausible &= (static_cast<uint8_t>(pending[k]) & 0xC0) == 0x80;
      if (plausible && !final) break;
      u::append_utf8(out, u::kReplacement);
      ++i;
      continue;
    }
    size_t len = 1;
    uint32_t cp = u::decode_utf8(pending, i, &len);
    if (cp == u::kReplacement && len == 1) {
      u::append_utf8(out, u::kReplacement);
      ++i;
      continue;
    }
    out.append(pending, i, len);
    i += len;
  }
  pending.erase(0, i);
  return out;
}

}  // namespace

std::string StreamDecoder::push(TokenId id) {
  pending_ += tok_->token_to_piece(id);
  std::string out = take_complete(pending_, false);
  if (at_start_ && !out.empty()) {
    at_start_ = false;
    if (strip_leading_space_ && out[0] == ' ') out.erase(0, 1);
  }
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = take_complete(pending_, true);
  if (at_start_ && !out.empty()) {
    at_start_ = false;
    if (strip_leading_space_ && out[0] == ' ') out.erase(0, 1);
  }
  return out;
}

}  // namespace veil::tokenizer
