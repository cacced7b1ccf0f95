// The judged golden runs: stories260K greedy from BOS, as ids and as text, from the published GGUF and from
// `veil convert` of the llama2.c checkpoint; and the `veil generate` command itself when the binary is built.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/convert.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

using namespace veil;
using namespace veil::engine;

namespace {

const std::string kDir = std::string(VEIL_SHARED_DIR) + "/models/stories260K/";

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<TokenId> golden_ids() {
  std::ifstream in(kDir + "expected_greedy_201_ids.txt");
  std::vector<TokenId> ids;
  TokenId t;
  while (in >> t) ids.push_back(t);
  return ids;
}

// Greedy from BOS for `steps` tokens on `table` (null: the active table); returns the generated ids.
std::vector<TokenId> greedy(const Model& m, int steps, const kernels::KernelTable* table = nullptr) {
  Context ctx(m.hparams(), {.threads = 2, .kernels = table});
  KvCache cache = m.new_cache(256);
  TokenId tok = 1;
  std::vector<TokenId> out;
  for (int i = 0; i < steps; ++i) {
    ForwardRequest r{&cache, {&tok, 1}, LogitsMode::kLast};
    EXPECT_TRUE(m.forward({&r, 1}, ctx).ok());
    auto l = ctx.logits();
    tok = static_cast<TokenId>(std::max_element(l.begin(), l.end()) - l.begin());
    out.push_back(tok);
  }
  return out;
}

std::string decode_text(const gguf::File& f, const std::vector<TokenId>& ids) {
  auto tok = tokenizer::Tokenizer::from_gguf(f);
  EXPECT_TRUE(tok.ok()) << tok.error().message();
  if (!tok.ok()) return "";
  tokenizer::StreamDecoder dec(*tok, /*strip_leading_space=*/true);
  std::string text;
  for (TokenId id : ids) text += dec.push(id);
  return text + dec.flush();
}

void check_golden(std::shared_ptr<const gguf::File> file, const kernels::KernelTable* table = nullptr) {
  auto model = Model::load(file);
  ASSERT_TRUE(model.ok()) << model.error().message();
  auto ids = greedy(**model, 200, table);
  auto want = golden_ids();
  ASSERT_EQ(want.size(), 201u);
  EXPECT_EQ(std::vector<TokenId>(ids.begin(), ids.begin() + 199), std::vector<TokenId>(want.begin() + 1, want.begin() + 200));
  EXPECT_EQ(decode_text(*file, ids), slurp(kDir + "expected_greedy_200steps.txt"));
}

std::string run_command(const std::string& cmd, int* status) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *status = ::pclose(p);
  return out;
}

// One instance per kernel table; a table this CPU cannot run is skipped with the reason.
class GoldenByIsa : public ::testing::TestWithParam<kernels::Isa> {
 protected:
  void SetUp() override {
    if (!kernels::isa_supported(GetParam())) {
      GTEST_SKIP() << "this CPU lacks " << kernels::isa_name(GetParam())
                   << " (AVX2+FMA+F16C; AVX-512 F/BW/VL+VNNI): that kernel table cannot run here";
    }
  }
};

}  // namespace

TEST_P(GoldenByIsa, Stories260KGgufText) {
  auto f = gguf::File::open(kDir + "stories260K.gguf");
  ASSERT_TRUE(f.ok());
  check_golden(std::make_shared<const gguf::File>(std::move(f).value()), &kernels::kernel_table(GetParam()));
}

// `veil generate` with the table forced through the environment, as a user would.
TEST_P(GoldenByIsa, VeilGenerateCommand) {
  std::filesystem::path veil = std::filesystem::path(VEIL_BINARY_DIR) / "src" / "cli" / "veil";
  if (!std::filesystem::exists(veil)) GTEST_SKIP() << "the veil binary is not built in " << VEIL_BINARY_DIR;
  for (unsigned threads : {1u, 2u}) {
    std::string cmd = std::string("VEIL_KERNELS=") + kernels::isa_name(GetParam()) + " " + veil.string() +
                      " generate -m " + kDir + "stories260K.gguf --threads " + std::to_string(threads) + " --json";
    int status = -1;
    std::string out = run_command(cmd, &status);
    EXPECT_EQ(status, 0) << cmd;
    EXPECT_NE(out.find(std::string("\"kernels\":\"") + kernels::isa_name(GetParam()) + "\""), std::string::npos)
        << "the forced table was not used: " << out.substr(0, 300);
    cmd = std::string("VEIL_KERNELS=") + kernels::isa_name(GetParam()) + " " + veil.string() + " generate -m " + kDir +
          "stories260K.gguf --threads " + std::to_string(threads);
    EXPECT_EQ(run_command(cmd, &status), slurp(kDir + "expected_greedy_200steps.txt")) << cmd;
    EXPECT_EQ(status, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryTable, GoldenByIsa,
                         ::testing::Values(kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512),
                         [](const ::testing::TestParamInfo<kernels::Isa>& i) {
                           return std::string(kernels::isa_name(i.param));
                         });

TEST(Golden, ConvertedLlama2cCheckpoint) {
  auto ck = MappedFile::open(kDir + "stories260K.bin");
  auto tk = read_file(kDir + "tok512.bin");
  ASSERT_TRUE(ck.ok() && tk.ok());
  auto w = convert_llama2c(ck->view(), "stories260K.bin", *tk, "tok512.bin");
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto bytes = std::make_shared<Bytes>(w->finish());
  auto f = gguf::File::from_memory(bytes, *bytes, "converted.gguf");
  ASSERT_TRUE(f.ok()) << f.error().message();
  // Tensor for tensor identical to the published GGUF (which stores the shared classifier as output.weight).
  auto pub = gguf::File::open(kDir + "stories260K.gguf");
  ASSERT_TRUE(pub.ok());
  for (const auto& t : f->tensors()) {
    const gguf::TensorInfo* p = pub->find_tensor(t.name);
    ASSERT_NE(p, nullptr) << t.name;
    EXPECT_EQ(p->dims, t.dims) << t.name;
    EXPECT_EQ(0, std::memcmp(p->data, t.data, t.n_bytes)) << t.name;
  }
  EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens"), *pub->get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(*f->get_int_array("tokenizer.ggml.token_type"), *pub->get_int_array("tokenizer.ggml.token_type"));
  check_golden(std::make_shared<const gguf::File>(std::move(f).value()));
}

TEST(Golden, ConvertRefusesMalformedCheckpoints) {
  auto ck = read_file(kDir + "stories260K.bin");
  auto tk = read_file(kDir + "tok512.bin");
  ASSERT_TRUE(ck.ok() && tk.ok());
  Bytes cut(ck->begin(), ck->end() - 4);
  auto r = convert_llama2c(cut, "cut.bin", *tk, "tok512.bin");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message().find("does not match the header"), std::string::npos);
  Bytes bad = *ck;
  int32_t zero = 0;
  std::memcpy(bad.data() + 8, &zero, 4);  // n_layers
  r = convert_llama2c(bad, "bad.bin", *tk, "tok512.bin");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("n_layers at byte 8"), std::string::npos) << r.error().message();
  Bytes badtok(tk->begin(), tk->begin() + 100);
  r = convert_llama2c(*ck, "stories260K.bin", badtok, "short.bin");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("short.bin"), std::string::npos);
}

TEST(Golden, Llama2cV1HeaderWithSeparateClassifier) {
  // Re-pack stories260K's weights into the v1 layout with an explicit (copied) classifier and check the same output.
  auto src = gguf::File::open(kDir + "stories260K.gguf");
  auto tk = read_file(kDir + "tok512.bin");
  ASSERT_TRUE(src.ok() && tk.ok());
  Bytes out(256, 0);
  auto put = [&](const void* p, size_t n) { out.insert(out.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n); };
  uint32_t magic = 0x616b3432;
  int32_t version = 1;
  int32_t cfg[7] = {64, 172, 5, 8, 4, 512, 512};
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 4);
  std::memcpy(out.data() + 8, cfg, sizeof(cfg));
  out[36] = 0;  // separate classifier
  auto t = [&](const std::string& n) { const auto* i = src->find_tensor(n); put(i->data, i->n_bytes); };
  auto layers = [&](const char* n) { for (int l = 0; l < 5; ++l) t("blk." + std::to_string(l) + "." + n); };
  layers("attn_norm.weight");
  layers("ffn_norm.weight");
  t("output_norm.weight");
  t("token_embd.weight");
  for (const char* n : {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
                        "ffn_down.weight", "ffn_up.weight"}) {
    layers(n);
  }
  t("output.weight");
  auto w = convert_llama2c(out, "v1.bin", *tk, "tok512.bin");
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto bytes = std::make_shared<Bytes>(w->finish());
  auto f = gguf::File::from_memory(bytes, *bytes, "v1.gguf");
  ASSERT_TRUE(f.ok());
  EXPECT_NE(f->find_tensor("output.weight"), nullptr);
  check_golden(std::make_shared<const gguf::File>(std::move(f).value()));
}
