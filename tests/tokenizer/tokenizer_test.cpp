// Tokenizer algorithms on small hand-built vocabularies, pre-tokenizer splits, streaming decode, and the
// LLaMA-2 vocabulary loaded from llama2.c's tokenizer.bin as a plain Vocab.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/core.h"
#include "gguf/gguf.h"
#include "support/utf8.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace veil::tokenizer {
namespace {

const std::string kSp = "\xE2\x96\x81";  // U+2581

using testsupport::valid_utf8;

Vocab spm_vocab() {
  Vocab v;
  v.model = ModelKind::kLlama;
  v.tokens = {"<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", kSp, "a", "b", kSp + "a", "ab", kSp + "ab", "<|user|>"};
  v.scores = {0, 0, 0, 0, 0, -1, -2, -2, -3, -1, -0.5f, 0};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kByte, TokenType::kByte,
             TokenType::kNormal, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal,
             TokenType::kNormal, TokenType::kUserDefined};
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  return v;
}

TEST(Spm, MergesByScoreWithDummyPrefixAndByteFallback) {
  auto tok = Tokenizer::from_vocab(spm_vocab());
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  EXPECT_EQ(tok->encode("ab"), (std::vector<TokenId>{1, 10}));
  EXPECT_EQ(tok->encode("ab", {.add_special = false}), (std::vector<TokenId>{10}));
  // "é" is not a piece: the dummy space, then its two UTF-8 bytes as byte tokens.
  EXPECT_EQ(tok->encode("\xC3\xA9", {.add_special = false}), (std::vector<TokenId>{5, 3, 4}));
  // An unknown character without byte tokens falls back to <unk>.
  EXPECT_EQ(tok->encode("c", {.add_special = false}), (std::vector<TokenId>{5, 0}));
  EXPECT_EQ(tok->decode(std::vector<TokenId>{1, 10, 5, 3, 4}), " ab \xC3\xA9");
  EXPECT_EQ(tok->token_to_piece(1), "");
  EXPECT_EQ(tok->token_to_piece(1, /*special=*/true), "<s>");
  // User-defined tokens are matched in text even without parse_special; the text after a special token gets
  // the dummy prefix again.
  EXPECT_EQ(tok->encode("<|user|>ab", {.add_special = false}), (std::vector<TokenId>{11, 10}));
  EXPECT_EQ(tok->encode("</s>", {.add_special = false, .parse_special = true}), (std::vector<TokenId>{2}));
}

TEST(Spm, NoSpacePrefixWhenMetadataSaysSo) {
  Vocab v = spm_vocab();
  v.add_space_prefix = 0;
  auto tok = Tokenizer::from_vocab(std::move(v));
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->encode("ab", {.add_special = false}), (std::vector<TokenId>{9}));
}

Vocab bpe_vocab() {
  Vocab v;
  v.model = ModelKind::kGpt2;
  v.pre = "gpt-2";
  // "Ġ" is the byte-level form of a space.
  v.tokens = {"a", "b", "\xC4\xA0", "ab", "\xC4\xA0" "ab", "<|endoftext|>", "<|im_start|>"};
  v.merges = {"a b", "\xC4\xA0 ab"};
  v.types = {TokenType::kNormal, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal,
             TokenType::kControl, TokenType::kControl};
  v.bos = 5;
  v.eos = 5;
  return v;
}

TEST(Bpe, MergesByRankAndByteMapping) {
  auto tok = Tokenizer::from_vocab(bpe_vocab());
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->encode("ab ab"), (std::vector<TokenId>{3, 4}));
  EXPECT_EQ(tok->decode(tok->encode("ab ab")), "ab ab");
  // Without parse_special the control token's text is tokenized as plain text.
  auto plain = tok->encode("<|im_start|>ab", {.add_special = false});
  EXPECT_TRUE(std::find(plain.begin(), plain.end(), 6) == plain.end());
  EXPECT_EQ(tok->encode("<|im_start|>ab", {.add_special = false, .parse_special = true}),
            (std::vector<TokenId>{6, 3}));
  EXPECT_TRUE(tok->is_eog(5));
  EXPECT_EQ(tok->decode(std::vector<TokenId>{6}), "");
  EXPECT_EQ(tok->decode(std::vector<TokenId>{6}, true), "<|im_start|>");
}

TEST(Bpe, SpecialRangesRestrictControlTokens) {
  auto tok = Tokenizer::from_vocab(bpe_vocab());
  ASSERT_TRUE(tok.ok());
  std::string text = "<|im_start|>ab<|im_start|>";
  TextRange first{0, 12};
  EncodeOptions opt{.add_special = false, .parse_special = true, .special_ranges = {&first, 1}};
  auto ids = tok->encode(text, opt);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 6);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 6), 1);  // the second one lies outside the allowed range
}

TEST(Bpe, UnknownPreTokenizerIsUnsupported) {
  Vocab v = bpe_vocab();
  v.pre = "no-such-pre";
  auto tok = Tokenizer::from_vocab(std::move(v));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(tok.error().message().find("tokenizer.ggml.pre"), std::string::npos);
}

TEST(Vocab, InconsistentMetadataIsCorrupt) {
  Vocab v = spm_vocab();
  v.scores.pop_back();
  auto a = Tokenizer::from_vocab(v);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(a.error().message().find("tokenizer.ggml.scores"), std::string::npos);
  Vocab w = spm_vocab();
  w.bos = 99;
  auto b = Tokenizer::from_vocab(w);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message().find("bos_token_id"), std::string::npos);
  Vocab e = spm_vocab();
  e.tokens.clear();
  e.scores.clear();
  e.types.clear();
  EXPECT_FALSE(Tokenizer::from_vocab(e).ok());
  Vocab m = bpe_vocab();
  m.merges = {"nospace"};
  EXPECT_FALSE(Tokenizer::from_vocab(m).ok());
}

TEST(Wpm, LowercasesStripsAccentsSplitsPunctuation) {
  Vocab v;
  v.model = ModelKind::kBert;
  v.tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", kSp + "hello", kSp + "cafe", kSp + "!", kSp + "un", "aff",
              "able", kSp + "\xE4\xBD\xA0"};
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  for (int i = 0; i < 4; ++i) v.types[i] = TokenType::kControl;
  v.unk = 1;
  v.cls = 2;
  v.sep = 3;
  v.pad = 0;
  auto tok = Tokenizer::from_vocab(std::move(v));
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  EXPECT_EQ(tok->encode("Hello CAF\xC3\x89!"), (std::vector<TokenId>{2, 4, 5, 6, 3}));
  EXPECT_EQ(tok->encode("unaffable", {.add_special = false}), (std::vector<TokenId>{7, 8, 9}));
  EXPECT_EQ(tok->encode("unknownword", {.add_special = false}), (std::vector<TokenId>{1}));
  EXPECT_EQ(tok->encode("\xE4\xBD\xA0\xE4\xBD\xA0", {.add_special = false}), (std::vector<TokenId>{10, 10}));
  EXPECT_EQ(tok->decode(std::vector<TokenId>{4, 7, 8}), " hello unaff");
}

std::vector<std::string> split(PreKind kind, std::string_view text) {
  std::vector<std::pair<size_t, size_t>> pieces;
  pre_tokenize(kind, text, pieces);
  std::vector<std::string> out;
  size_t expect = 0;
  for (auto [off, len] : pieces) {
    EXPECT_EQ(off, expect);  // pieces cover the text exactly, in order
    expect = off + len;
    out.emplace_back(text.substr(off, len));
  }
  EXPECT_EQ(expect, text.size());
  return out;
}

using Pieces = std::vector<std::string>;

TEST(PreTokenize, Gpt2) {
  EXPECT_EQ(split(PreKind::kGpt2, "Hello world 12345 it's  ok!!"),
            (Pieces{"Hello", " world", " 12345", " it", "'s", " ", " ok", "!!"}));
}

TEST(PreTokenize, Llama3DigitsInThreesAndNewlines) {
  EXPECT_EQ(split(PreKind::kLlama3, "Hello world 12345\n\n  x"),
            (Pieces{"Hello", " world", " ", "123", "45", "\n\n", " ", " x"}));
  EXPECT_EQ(split(PreKind::kLlama3, "I'VE (done)"), (Pieces{"I", "'VE", " (", "done", ")"}));
}

TEST(PreTokenize, Qwen2SingleDigits) {
  EXPECT_EQ(split(PreKind::kQwen2, "a 2024"), (Pieces{"a", " ", "2", "0", "2", "4"}));
}

TEST(PreTokenize, StarcoderAndDeepseekAndFalcon) {
  EXPECT_EQ(split(PreKind::kStarcoder, "x 12"), (Pieces{"x", " ", "1", "2"}));
  EXPECT_EQ(split(PreKind::kDeepseekLlm, "Hello world 12345"), (Pieces{"Hello", " world", " ", "12345"}));
  EXPECT_EQ(split(PreKind::kDeepseekLlm, "a\nb  "), (Pieces{"a", "\n", "b", "  "}));
  EXPECT_EQ(split(PreKind::kFalcon, "x=1234"), (Pieces{"x", "=", "123", "4"}));
  EXPECT_EQ(split(PreKind::kDefault, "a+b 1234"), (Pieces{"a", "+", "b", " ", "123", "4"}));
}

TEST(PreTokenize, InvalidUtf8IsCoveredByteForByte) {
  std::string bad = "a\xFF\xC3 b\xE2\x82";
  auto pieces = split(PreKind::kLlama3, bad);
  std::string joined;
  for (auto& p : pieces) joined += p;
  EXPECT_EQ(joined, bad);
}

TEST(StreamDecoder, EmitsOnlyCompleteCharacters) {
  auto file = gguf::File::open(std::filesystem::path(VEIL_SHARED_DIR) / "testdata/tokenizer/ggml-vocab-llama-spm.gguf");
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(tok.ok());
  // An emoji unknown to the vocabulary becomes four byte tokens.
  const std::string text = "hi \xF0\x9F\xA6\x99 caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD";
  auto ids = tok->encode(text);
  StreamDecoder dec(*tok, /*strip_leading_space=*/true);
  std::string out;
  size_t empty_pushes = 0;
  for (TokenId id : ids) {
    std::string piece = dec.push(id);
    EXPECT_TRUE(valid_utf8(piece));
    empty_pushes += piece.empty();
    out += piece;
  }
  out += dec.flush();
  EXPECT_EQ(out, text);
  EXPECT_GE(empty_pushes, 3u);  // BOS, and the first bytes of the emoji were held back
}

TEST(StreamDecoder, FlushReplacesAnIncompleteTail) {
  auto tok = Tokenizer::from_vocab(spm_vocab());
  ASSERT_TRUE(tok.ok());
  StreamDecoder dec(*tok);
  EXPECT_EQ(dec.push(3), "");  // 0xC3 alone
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");
  StreamDecoder d2(*tok);
  EXPECT_EQ(d2.push(4), "\xEF\xBF\xBD");  // a stray continuation byte
}

// llama2.c's tokenizer.bin holds the LLaMA-2 vocabulary (no token types): built as a plain Vocab it must
// tokenize exactly like the GGUF form of the same vocabulary.
TEST(PlainVocab, Llama2cTokenizerBinMatchesGguf) {
  auto bin = read_file(std::filesystem::path(VEIL_SHARED_DIR) / "models/llama2c-tokenizer/tokenizer.bin");
  ASSERT_TRUE(bin.ok()) << bin.error().message();
  Vocab v;
  v.model = ModelKind::kLlama;
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  size_t pos = 4;
  const Bytes& b = *bin;
  while (pos + 8 <= b.size()) {
    float score;
    int32_t len;
    std::memcpy(&score, b.data() + pos, 4);
    std::memcpy(&len, b.data() + pos + 4, 4);
    pos += 8;
    ASSERT_TRUE(len >= 0 && pos + static_cast<size_t>(len) <= b.size());
    v.tokens.emplace_back(reinterpret_cast<const char*>(b.data() + pos), static_cast<size_t>(len));
    v.scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  ASSERT_EQ(v.tokens.size(), 32000u);
  // llama2.c stores spaces as ' ' rather than U+2581; convert to the SentencePiece form.
  for (auto& t : v.tokens) {
    std::string s;
    for (char c : t) {
      if (c == ' ') s += kSp;
      else s += c;
    }
    t = s;
  }
  auto plain = Tokenizer::from_vocab(std::move(v));
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  auto file = gguf::File::open(std::filesystem::path(VEIL_SHARED_DIR) / "testdata/tokenizer/ggml-vocab-llama-spm.gguf");
  ASSERT_TRUE(file.ok());
  auto ref = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(ref.ok());
  for (const char* text : {"Hello world", " Hello World!", "this is 🦙.cpp", "Ελληνικά και 中文", "   3333 \n\t x",
                           "Once upon a time, there was a little girl named Lily."}) {
    EXPECT_EQ(plain->encode(text), ref->encode(text)) << text;
  }
}

}  // namespace
}  // namespace veil::tokenizer
