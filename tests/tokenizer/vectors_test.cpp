// The tokenizer test vectors of ../shared/testdata/tokenizer: every input of every vocabulary, plus round trips.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "core/core.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace veil::tokenizer {
namespace {

const std::filesystem::path kDir = std::filesystem::path(VEIL_SHARED_DIR) / "testdata" / "tokenizer";

struct Case {
  std::string input;
  std::vector<TokenId> expected;
};

std::vector<Case> load_cases(const std::string& vocab) {
  auto inp = read_text_file(kDir / (vocab + ".inp"));
  auto out = read_text_file(kDir / (vocab + ".out"));
  EXPECT_TRUE(inp.ok() && out.ok()) << vocab;
  std::vector<Case> cases;
  if (!inp.ok() || !out.ok()) return cases;
  const std::string marker = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0; pos < inp->size();) {
    size_t f = inp->find(marker, pos);
    if (f == std::string::npos) break;
    cases.push_back({inp->substr(pos, f - pos), {}});
    pos = f + marker.size();
  }
  std::istringstream lines(*out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line) && i < cases.size()) {
    std::istringstream ids(line);
    TokenId id;
    while (ids >> id) cases[i].expected.push_back(id);
    ++i;
  }
  EXPECT_EQ(i, cases.size()) << vocab << ": .out has fewer lines than .inp has inputs";
  return cases;
}

std::string show(const std::vector<TokenId>& ids) {
  std::string s;
  for (TokenId id : ids) s += " " + std::to_string(id);
  return s;
}

class Vectors : public ::testing::TestWithParam<std::string> {};

TEST_P(Vectors, EveryInputMatchesAndRoundTrips) {
  const std::string vocab = GetParam();
  auto file = gguf::File::open(kDir / vocab);
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  auto cases = load_cases(vocab);
  ASSERT_GT(cases.size(), 20u);
  size_t expected_ids = 0;
  for (const Case& c : cases) expected_ids += c.expected.size();
  EXPECT_GT(expected_ids, 200u);  // the .out file was really read
  size_t failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::vector<TokenId> got = tok->encode(c.input, {.add_special = false, .parse_special = false});
    EXPECT_EQ(show(got), show(c.expected)) << vocab << " case " << i << " input '" << c.input << "'";
    failures += got != c.expected;
    if (tok->model() == ModelKind::kBert) continue;  // WordPiece lower-cases and strips accents: not reversible
    std::string back = tok->decode(got);
    std::string want = c.input;
    if (tok->add_space_prefix() && !want.empty()) want = " " + want;
    EXPECT_EQ(back, want) << vocab << " round trip, case " << i;
  }
  EXPECT_EQ(failures, 0u);
}

INSTANTIATE_TEST_SUITE_P(SharedVocabularies, Vectors,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf",
                                           "ggml-vocab-phi-3.gguf", "ggml-vocab-deepseek-llm.gguf",
                                           "ggml-vocab-bert-bge.gguf"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::string out;
                           for (char c : n.substr(11, n.size() - 16)) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return out;
                         });

TEST(Stories260K, OnceUponATime) {
  auto file = gguf::File::open(std::filesystem::path(VEIL_SHARED_DIR) / "models/stories260K/stories260K.gguf");
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  EXPECT_EQ(tok->vocab_size(), 512u);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_TRUE(tok->is_eog(2));
  EXPECT_FALSE(tok->is_eog(1));
  EXPECT_EQ(tok->encode("Once upon a time"), (std::vector<TokenId>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->encode("Once upon a time", {.add_special = false}), (std::vector<TokenId>{403, 407, 261, 378}));
  // Control tokens in text only with parse_special.
  auto plain = tok->encode("<s>", {.add_special = false});
  EXPECT_TRUE(std::find(plain.begin(), plain.end(), 1) == plain.end());
  EXPECT_EQ(tok->encode("<s>", {.add_special = false, .parse_special = true}), (std::vector<TokenId>{1}));
  // Decoding the golden ids reproduces the golden text (llama2.c strips the dummy space after BOS).
  auto ids_text = read_text_file(std::filesystem::path(VEIL_SHARED_DIR) / "models/stories260K/expected_greedy_201_ids.txt");
  auto golden = read_text_file(std::filesystem::path(VEIL_SHARED_DIR) / "models/stories260K/expected_greedy_200steps.txt");
  ASSERT_TRUE(ids_text.ok() && golden.ok());
  std::istringstream in(*ids_text);
  std::vector<TokenId> ids;
  TokenId id;
  while (in >> id) ids.push_back(id);
  ASSERT_GT(ids.size(), 100u);
  StreamDecoder dec(*tok, /*strip_leading_space=*/true);
  std::string text;
  for (TokenId t : ids) text += dec.push(t);
  text += dec.flush();
  EXPECT_EQ(text, golden->substr(0, text.size()));
  EXPECT_GT(text.size(), golden->size() / 2);
}

TEST(FromGguf, VocabularyWithoutTokenizerIsNotFound) {
  // gpt2-tokenizer/encoder.json is not a GGUF: opening must fail cleanly in the reader, and a GGUF without
  // tokenizer keys is refused by from_gguf. Build a minimal valid GGUF in memory: magic, v3, 0 tensors, 0 kv.
  static const uint8_t kEmpty[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  auto file = gguf::File::from_memory(nullptr, ByteView(kEmpty, sizeof(kEmpty)), "empty.gguf");
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(tok.error().message().find("tokenizer.ggml.model"), std::string::npos);
}

}  // namespace
}  // namespace veil::tokenizer

namespace veil::tokenizer {
namespace {

// Long inputs without any split point must not be quadratic (each model merges with a heap): 256 KiB of one
// letter, of digits and of spaces, through every shared vocabulary, each decoded back.
TEST(LongInput, NoQuadraticBlowUp) {
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-deepseek-llm.gguf",
                           "ggml-vocab-bert-bge.gguf"}) {
    auto file = gguf::File::open(kDir / name);
    ASSERT_TRUE(file.ok());
    auto tok = Tokenizer::from_gguf(*file);
    ASSERT_TRUE(tok.ok());
    for (char c : {'a', '7', ' '}) {
      std::string text(256 * 1024, c);
      auto ids = tok->encode(text, {.add_special = false});
      if (tok->model() == ModelKind::kBert) {
        EXPECT_FALSE(c != ' ' && ids.empty()) << name;
        continue;
      }
      std::string back = tok->decode(ids);
      if (tok->add_space_prefix()) back.erase(0, 1);
      EXPECT_EQ(back.size(), text.size()) << name << " '" << c << "'";
      EXPECT_TRUE(back == text) << name;
    }
  }
}

}  // namespace
}  // namespace veil::tokenizer
