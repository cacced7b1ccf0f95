// generate, tokenize, model info, convert, quantize, synth and bench on the real stories260K model
// (../shared/models/stories260K) and its golden greedy output.
#include <nlohmann/json.hpp>

#include "cli/cli_harness.h"

namespace veil::clitest {
namespace {

using json = nlohmann::json;

// llama2.c's golden output: the text `run stories260K.bin -z tok512.bin -t 0 -n 200` prints (no trailing
// newline in the file). `veil generate` with no prompt prints exactly this when stdout is not a terminal.
std::string golden_text() { return read_text(kStories / "expected_greedy_200steps.txt"); }

// BOS followed by the 200 greedy tokens.
std::vector<int> golden_ids() {
  std::istringstream in(read_text(kStories / "expected_greedy_201_ids.txt"));
  std::vector<int> ids;
  for (int id; in >> id;) ids.push_back(id);
  return ids;
}

using ModelTest = CliTest;

TEST_F(ModelTest, GoldenFilesAreThere) {
  ASSERT_TRUE(fs::exists(kStories / "stories260K.gguf")) << kStories;
  std::string g = golden_text();
  ASSERT_GT(g.size(), 200u);
  EXPECT_EQ(g.rfind("Once upon a time", 0), 0u);
  ASSERT_EQ(golden_ids().size(), 201u);
  EXPECT_EQ(golden_ids().front(), 1);
}

TEST_F(ModelTest, GenerateGreedyDefaultModelPrintsTheGoldenText) {
  RunResult r = veil({"generate", "-n", "200"});
  expect_ok(r);
  EXPECT_EQ(r.out, golden_text()) << r.describe();
  EXPECT_EQ(r.err, "");  // default log level warn: nothing for a real model
}

TEST_F(ModelTest, GenerateWithExplicitModelAndThreadsIsTheSame) {
  RunResult r = veil({"generate", "-m", (kStories / "stories260K.gguf").string(), "-n", "200", "-t", "1"});
  expect_ok(r);
  EXPECT_EQ(r.out, golden_text()) << r.describe();
}

TEST_F(ModelTest, GenerateWithAnF16KvCacheIsTheSameAndABadTypeIsAUsageError) {
  RunResult r = veil({"generate", "-n", "200", "--kv-type", "f16"});
  expect_ok(r);
  EXPECT_EQ(r.out, golden_text()) << r.describe();
  RunResult bad = veil({"generate", "-n", "5", "--kv-type", "q3"});
  expect_one_line_error(bad, 2);
  EXPECT_NE(bad.err.find("f32 or f16"), std::string::npos) << bad.err;
}

TEST_F(ModelTest, GenerateJsonHasTheGoldenIds) {
  RunResult r = veil({"generate", "-n", "200", "--json"});
  expect_ok(r);
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one JSON object on one line";
  json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  std::vector<int> ids = golden_ids();
  ASSERT_TRUE(j.contains("prompt_ids") && j.contains("generated_ids")) << j.dump(2);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int>>(), std::vector<int>{ids.front()});
  EXPECT_EQ(j["generated_ids"].get<std::vector<int>>(), std::vector<int>(ids.begin() + 1, ids.end()));
  EXPECT_EQ(j["text"].get<std::string>(), golden_text());
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["synthetic"], false);
  EXPECT_EQ(j["stop_reason"], "length");
  EXPECT_EQ(j["timings"]["generated_tokens"], 200);
  EXPECT_EQ(fs::path(j["model"].get<std::string>()).filename(), "stories260K.gguf");
}

TEST_F(ModelTest, GenerateWithPromptEchoesItAndContinuesTheGoldenStory) {
  RunResult r = veil({"generate", "-p", "Once upon a time", "-n", "20"});
  expect_ok(r);
  // The golden run's first four tokens are exactly this prompt, so greedy decoding continues it the same way.
  std::string g = golden_text();
  ASSERT_GT(r.out.size(), std::string("Once upon a time").size()) << r.describe();
  EXPECT_EQ(g.substr(0, r.out.size()), r.out) << r.describe();
}

TEST_F(ModelTest, SampledGenerationIsReproducibleWithASeed) {
  RunResult a = veil({"generate", "-n", "30", "--temp", "1.0", "--seed", "42"});
  RunResult b = veil({"generate", "-n", "30", "--temp", "1.0", "--seed", "42"});
  expect_ok(a);
  expect_ok(b);
  EXPECT_FALSE(a.out.empty());
  EXPECT_EQ(a.out, b.out);
}

TEST_F(ModelTest, GenerateMissingModelFileNamesIt) {
  fs::path missing = path("no-such-model.gguf");
  RunResult r = veil({"generate", "-m", missing.string(), "-n", "5"});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find(missing.string()), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(ModelTest, GenerateOnAFileThatIsNotAModelFails) {
  fs::path junk = path("junk.gguf");
  write_text(junk, "this is not a GGUF file at all, just some text\n");
  RunResult r = veil({"generate", "-m", junk.string(), "-n", "5"});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("junk.gguf"), std::string::npos) << r.err;
}

TEST_F(ModelTest, VeilModelEnvironmentVariableIsUsed) {
  RunResult q = veil({"quantize", (kStories / "stories260K.gguf").string(), path("q8.gguf").string(), "Q8_0"});
  expect_ok(q);
  RunResult r = veil({"generate", "-n", "3", "--json"}, 30s, {{"VEIL_MODEL", path("q8.gguf").string()}});
  expect_ok(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  EXPECT_EQ(j["model"], path("q8.gguf").string());
}

// docs/cli.md: "When none is found, the error lists every place it looked." With $VEIL_MODEL naming a file
// that does not exist, the user asked for one model; silently loading another one is wrong.
TEST_F(ModelTest, VeilModelPointingAtAMissingFileIsAnErrorListingEveryPlace) {
  fs::path missing = path("gone.gguf");
  RunResult r = veil({"generate", "-n", "3"}, 30s, {{"VEIL_MODEL", missing.string()}});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("VEIL_MODEL"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(missing.string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("-m/--model"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(".cache/veil/models"), std::string::npos) << r.err;
}

TEST_F(ModelTest, TokenizeIds) {
  RunResult r = veil({"tokenize", "--ids", "Once upon a time"});
  expect_ok(r);
  EXPECT_EQ(r.out, "1 403 407 261 378\n");
  EXPECT_EQ(r.err, "");

  RunResult ns = veil({"tokenize", "--ids", "--no-special", "Once upon a time"});
  expect_ok(ns);
  EXPECT_EQ(ns.out, "403 407 261 378\n");
}

TEST_F(ModelTest, TokenizeTableShowsPieces) {
  RunResult r = veil({"tokenize", "Once upon a time"});
  expect_ok(r);
  std::vector<std::string> lines = split_lines(r.out);
  ASSERT_EQ(lines.size(), 5u) << r.out;
  EXPECT_EQ(lines[0], "      1 '<s>'");
  EXPECT_EQ(lines[1], "    403 ' Once'");
  EXPECT_EQ(lines[4], "    378 ' time'");
}

TEST_F(ModelTest, ModelInfoOnTheDefaultModel) {
  RunResult r = veil({"model", "info"});
  expect_ok(r);
  auto has = [&](const std::string& s) { EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "'\n" << r.out; };
  has("stories260K.gguf");
  has("architecture:  llama");
  has("layers:        5");
  has("embedding:     64");
  has("vocabulary:    512");
  has("heads:         8 (kv 4, head size 8)");
  has("feed-forward:  172");
  has("tokenizer:     llama, 512 tokens");
  has("engine:        ok");
  EXPECT_EQ(r.out.find("SYNTHETIC"), std::string::npos) << r.out;

  RunResult j = veil({"model", "info", "--json", (kStories / "stories260K.gguf").string()});
  expect_ok(j);
  json info = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(info.is_discarded()) << j.describe();
  EXPECT_EQ(info["architecture"], "llama");
  EXPECT_EQ(info["synthetic"], false);
  EXPECT_EQ(info["hparams"]["n_layer"], 5);
  EXPECT_EQ(info["hparams"]["n_embd"], 64);
  EXPECT_EQ(info["hparams"]["n_head"], 8);
  EXPECT_EQ(info["hparams"]["n_head_kv"], 4);
  EXPECT_EQ(info["hparams"]["n_vocab"], 512);
  EXPECT_EQ(info["tokenizer"]["tokens"], 512);
  EXPECT_EQ(info["engine"], "ok");
  EXPECT_EQ(info["tensor_types"].size(), 1u) << info.dump(2);  // all F32
  EXPECT_TRUE(info["tensor_types"].contains("F32")) << info.dump(2);
}

TEST_F(ModelTest, ModelInfoMissingFile) {
  RunResult r = veil({"model", "info", path("nope.gguf").string()});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("nope.gguf"), std::string::npos) << r.err;
}

TEST_F(ModelTest, ConvertLlama2cCheckpointThenGenerateGivesTheGoldenText) {
  fs::path out = path("converted.gguf");
  RunResult c = veil({"convert", (kStories / "stories260K.bin").string(), (kStories / "tok512.bin").string(), "-o",
                      out.string()});
  expect_ok(c);
  EXPECT_EQ(c.out, "wrote " + out.string() + "\n");
  ASSERT_TRUE(fs::exists(out));
  RunResult g = veil({"generate", "-m", out.string(), "-n", "200"});
  expect_ok(g);
  EXPECT_EQ(g.out, golden_text()) << g.describe();

  RunResult info = veil({"model", "info", "--json", out.string()});
  expect_ok(info);
  json j = json::parse(info.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << info.describe();
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["hparams"]["n_layer"], 5);
  EXPECT_EQ(j["engine"], "ok");
}

TEST_F(ModelTest, ConvertMissingInputsAndArguments) {
  RunResult r = veil({"convert", path("missing.bin").string(), (kStories / "tok512.bin").string(), "-o",
                      path("x.gguf").string()});
  expect_one_line_error(r, 1);
  EXPECT_NE(r.err.find("missing.bin"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("x.gguf")));
  // -o is required.
  expect_one_line_error(veil({"convert", (kStories / "stories260K.bin").string(), (kStories / "tok512.bin").string()}), 2);
  // A GGUF is not a llama2.c checkpoint.
  RunResult wrong = veil({"convert", (kStories / "stories260K.gguf").string(), (kStories / "tok512.bin").string(), "-o",
                          path("y.gguf").string()});
  expect_one_line_error(wrong, 1);
  EXPECT_FALSE(fs::exists(path("y.gguf")));
}

TEST_F(ModelTest, QuantizeToQ8ThenGenerate) {
  fs::path out = path("stories260K-q8.gguf");
  RunResult q = veil({"quantize", (kStories / "stories260K.gguf").string(), out.string(), "Q8_0"});
  expect_ok(q);
  EXPECT_EQ(q.out.rfind("wrote " + out.string() + ":", 0), 0u) << q.out;
  EXPECT_NE(q.out.find("Q8_0"), std::string::npos) << q.out;
  ASSERT_TRUE(fs::exists(out));
  EXPECT_LT(fs::file_size(out), fs::file_size(kStories / "stories260K.gguf"));

  RunResult info = veil({"model", "info", "--json", out.string()});
  expect_ok(info);
  json j = json::parse(info.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_TRUE(j["tensor_types"].contains("Q8_0")) << j.dump(2);
  EXPECT_EQ(j["engine"], "ok");

  RunResult g = veil({"generate", "-m", out.string(), "-n", "40", "--json"});
  expect_ok(g);
  json gj = json::parse(g.out, nullptr, false);
  ASSERT_FALSE(gj.is_discarded()) << g.describe();
  EXPECT_EQ(gj["generated_ids"].size(), 40u);
  // Q8_0 of this tiny model still begins the same story.
  EXPECT_EQ(gj["text"].get<std::string>().rfind("Once upon a time", 0), 0u) << gj["text"];
}

TEST_F(ModelTest, SynthStories15mIsLabelledSynthetic) {
  fs::path out = path("synth-15m-q8.gguf");
  RunResult s = veil({"synth", "--shape", "stories15m", "--type", "Q8_0", "--vocab",
                      (kModels / "llama2c-tokenizer" / "tokenizer.bin").string(), "-o", out.string()},
                     60s);
  expect_ok(s);
  EXPECT_NE(s.out.find("SYNTHETIC"), std::string::npos) << s.out;
  ASSERT_TRUE(fs::exists(out));

  RunResult info = veil({"model", "info", out.string()});
  expect_ok(info);
  EXPECT_NE(info.out.find("SYNTHETIC:     yes"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("layers:        6"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("embedding:     288"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("vocabulary:    32000"), std::string::npos) << info.out;

  RunResult j = veil({"model", "info", "--json", out.string()});
  expect_ok(j);
  json ij = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(ij.is_discarded());
  EXPECT_EQ(ij["synthetic"], true);

  // generate runs on it, and says it is synthetic (on stderr and in the JSON).
  RunResult g = veil({"generate", "-m", out.string(), "-n", "4", "--json"}, 60s);
  expect_ok(g);
  json gj = json::parse(g.out, nullptr, false);
  ASSERT_FALSE(gj.is_discarded()) << g.describe();
  EXPECT_EQ(gj["synthetic"], true);
  EXPECT_NE(g.err.find("SYNTHETIC"), std::string::npos) << g.err;
}

TEST_F(ModelTest, SynthUnknownShapeIsRefused) {
  RunResult r = veil({"synth", "--shape", "gpt5", "--vocab", (kModels / "llama2c-tokenizer" / "tokenizer.bin").string(),
                      "-o", path("x.gguf").string()});
  EXPECT_NE(r.exit_code, 0) << r.describe();
  expect_one_line_error(r, r.exit_code);
  EXPECT_NE(r.err.find("gpt5"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("x.gguf")));
}

TEST_F(ModelTest, BenchBandwidthSmallBuffer) {
  RunResult r = veil({"bench", "--bandwidth", "--size-mib", "8", "--threads", "1", "--json"}, 60s);
  expect_ok(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  ASSERT_EQ(j["bandwidth"].size(), 1u) << j.dump();
  EXPECT_EQ(j["bandwidth"][0]["threads"], 1);
  EXPECT_GT(j["bandwidth"][0]["gbs"].get<double>(), 0.0);
  EXPECT_EQ(j["buffer_mib"], 8);

  RunResult text = veil({"bench", "--bandwidth", "--size-mib", "8", "--threads", "1"}, 60s);
  expect_ok(text);
  EXPECT_NE(text.out.find("memory read bandwidth, 8 MiB buffer"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("GB/s"), std::string::npos) << text.out;

  expect_one_line_error(veil({"bench", "--bandwidth", "--size-mib", "0"}), 2);
}

TEST_F(ModelTest, BenchModelReportsEveryFigureAndHonoursSizeMib) {
  // stories260K is F32 (no repacking); the Q8_0 re-quantisation is repacked into the x4 layout at load.
  RunResult q = veil({"quantize", (kStories / "stories260K.gguf").string(), path("q8.gguf").string(), "Q8_0"});
  expect_ok(q);
  for (const fs::path& model : {kStories / "stories260K.gguf", path("q8.gguf")}) {
    RunResult r = veil({"bench", "-m", model.string(), "-p", "8", "-n", "8", "-r", "1", "--threads", "2",
                        "--size-mib", "8", "--json"},
                       120s);
    expect_ok(r);
    json j = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.describe();
    for (const char* key : {"prefill_tps", "decode_tps"}) {
      EXPECT_GT(j[key]["best"].get<double>(), 0.0) << key;
      EXPECT_GT(j[key]["mean"].get<double>(), 0.0) << key;
    }
    EXPECT_GT(j["ttft_ms"].get<double>(), 0.0);
    EXPECT_GT(j["peak_rss_bytes"].get<uint64_t>(), j["model_bytes"].get<uint64_t>());
    EXPECT_GT(j["kv_cache_bytes"].get<uint64_t>(), 0u);
    EXPECT_GT(j["decode_roofline_share"].get<double>(), 0.0);
    EXPECT_EQ(j["bandwidth_buffer_mib"], 8) << "--size-mib sizes the roofline's bandwidth probe";
    EXPECT_EQ(j["threads"], 2);
    EXPECT_EQ(j["decode_depth"], 0) << "decode starts from an empty cache, like llama-bench's tg test";
    EXPECT_EQ(j["repacked_bytes"].get<uint64_t>() > 0, model == path("q8.gguf")) << model;
  }
  // --depth: decode after that many tokens of context; the cache is sized for depth + n, not prompt + n.
  const auto kv_bytes_at = [&](const char* depth) {
    RunResult r = veil({"bench", "-m", (kStories / "stories260K.gguf").string(), "-p", "8", "-n", "8", "-r", "1",
                        "-d", depth, "--threads", "1", "--size-mib", "4", "--json"},
                       120s);
    expect_ok(r);
    json j = json::parse(r.out, nullptr, false);
    EXPECT_EQ(j.value("decode_depth", -1), std::stoi(depth)) << r.describe();
    return j.value("kv_cache_bytes", uint64_t{0});
  };
  // Positions: max(prompt, depth + n) + 1, so 9 at depth 0 and 33 at depth 24.
  EXPECT_EQ(kv_bytes_at("24") * 9, kv_bytes_at("0") * 33);
  expect_one_line_error(veil({"bench", "-m", (kStories / "stories260K.gguf").string(), "-d", "-1"}), 2);

  RunResult text = veil({"bench", "-m", (kStories / "stories260K.gguf").string(), "-p", "4", "-n", "4", "-r", "1",
                         "--threads", "1", "--size-mib", "4"},
                        120s);
  expect_ok(text);
  for (const char* want : {"prefill:", "time to first token", "decode:", "roofline:", "4 MiB buffer", "peak resident"}) {
    EXPECT_NE(text.out.find(want), std::string::npos) << want << "\n" << text.out;
  }
}

}  // namespace
}  // namespace veil::clitest
