#include <gtest/gtest.h>

#include <cstring>

#include "crypto/crypto.h"
#include "gguf/gguf.h"
#include "pipeline/pipeline.h"

namespace veil::pipeline {
namespace {

const char* kPolicy = R"({"allowed_types": ["sim"], "allow_simulated": true,
  "expected_measurements": {"sim": {"measurement": [")"
                      "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
                      R"("]}}})";

std::string manifest(const std::string& stages, int n_layers = 5) {
  return R"({"format": "veil-manifest/1", "model_id": "stories260K", "model_version": 3,
    "sealed_model_sha256": ")" + std::string(64, 'a') + R"(", "n_layers": )" + std::to_string(n_layers) +
         R"(, "stages": [)" + stages + "]}";
}

std::string stage(int index, int begin, int end, const std::string& endpoint = "") {
  return R"({"index": )" + std::to_string(index) + R"(, "layer_begin": )" + std::to_string(begin) +
         R"(, "layer_end": )" + std::to_string(end) + R"(, "weights_sha256": ")" + std::string(64, 'b') +
         R"(", "endpoint": ")" + (endpoint.empty() ? "127.0.0.1:" + std::to_string(7000 + index) : endpoint) +
         R"(", "policy": )" + kPolicy + "}";
}

TEST(Manifest, ParsesAndRoundTrips) {
  auto m = parse_manifest(manifest(stage(0, 0, 2) + "," + stage(1, 2, 5)));
  ASSERT_TRUE(m.ok()) << m.error().message();
  ASSERT_EQ(m->stages.size(), 2u);
  EXPECT_EQ(m->stages[1].layer_begin, 2u);
  EXPECT_TRUE(m->stages[0].policy.allow_simulated);
  auto again = parse_manifest(manifest_to_json(*m));
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ(again->stages[1].endpoint, "127.0.0.1:7001");
  EXPECT_EQ(again->model_version, 3u);
}

// The optional front policy: absent by default, kept through a round trip when given, and a bad one is refused
// naming the field.
TEST(Manifest, OptionalFrontPolicyRoundTripsAndIsValidated) {
  auto plain = parse_manifest(manifest(stage(0, 0, 5)));
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  EXPECT_FALSE(plain->front_policy.has_value());
  EXPECT_EQ(manifest_to_json(*plain).find("front_policy"), std::string::npos);
  std::string with = manifest(stage(0, 0, 5));
  with.insert(with.size() - 1, std::string(R"(, "front_policy": )") + kPolicy);
  auto m = parse_manifest(with);
  ASSERT_TRUE(m.ok()) << m.error().message();
  ASSERT_TRUE(m->front_policy.has_value());
  EXPECT_TRUE(m->front_policy->allow_simulated);
  auto again = parse_manifest(manifest_to_json(*m));
  ASSERT_TRUE(again.ok()) << again.error().message();
  ASSERT_TRUE(again->front_policy.has_value());
  EXPECT_EQ(again->front_policy_json, m->front_policy_json);
  std::string bad = manifest(stage(0, 0, 5));
  bad.insert(bad.size() - 1, R"(, "front_policy": {"allowed_types": ["nonsense"]})");
  auto refused = parse_manifest(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("manifest.front_policy"), std::string::npos) << refused.error().message();
}

void expect_error(const std::string& json, const std::string& needle) {
  auto m = parse_manifest(json);
  ASSERT_FALSE(m.ok()) << "accepted: " << json;
  EXPECT_EQ(m.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(m.error().message().find(needle), std::string::npos) << m.error().message();
}

TEST(Manifest, RefusesGapsOverlapsAndIncompleteRanges) {
  expect_error(manifest(stage(0, 0, 2) + "," + stage(1, 3, 5)), "stages[1].layer_begin: 3 leaves layers 2..2 unassigned");
  expect_error(manifest(stage(0, 0, 3) + "," + stage(1, 2, 5)), "stages[1].layer_begin: 2 overlaps");
  expect_error(manifest(stage(0, 0, 2) + "," + stage(1, 2, 4)), "stages[1].layer_end: 4 leaves layers 4..4 unassigned");
  expect_error(manifest(stage(0, 0, 6)), "stages[0].layer_end: 6 exceeds n_layers 5");
  expect_error(manifest(stage(0, 1, 5)), "stages[0].layer_begin: 1 leaves layers 0..0 unassigned");
  expect_error(manifest(stage(0, 2, 2)), "stages[0].layer_end");
}

TEST(Manifest, RefusesBadFieldsNamingStageAndField) {
  expect_error(manifest(stage(1, 0, 5)), "stages[0].index");
  expect_error(manifest(stage(0, 0, 2, "nohost") + "," + stage(1, 2, 5)), "stages[0].endpoint");
  expect_error(manifest(stage(0, 0, 2, "h:1") + "," + stage(1, 2, 5, "h:1")), "stages[1].endpoint: used by");
  expect_error(manifest(""), "manifest.stages");
  expect_error(R"({"format": "veil-manifest/1", "bogus": 1})", "manifest.bogus: unknown field");
  expect_error("{not json", "not valid JSON");
  std::string bad_hash = manifest(stage(0, 0, 5));
  bad_hash.replace(bad_hash.find(std::string(64, 'b')), 64, "zz");
  expect_error(bad_hash, "stages[0].weights_sha256");
  std::string no_policy = manifest(stage(0, 0, 5));
  no_policy.replace(no_policy.find(R"(, "policy": )"), std::string(R"(, "policy": )").size() + std::strlen(kPolicy), "");
  expect_error(no_policy, "stages[0].policy: missing");
  std::string empty_allow = manifest(stage(0, 0, 5));
  empty_allow.replace(empty_allow.find(R"(["sim"])"), 7, "[]");
  expect_error(empty_allow, "stages[0].policy");
}

TEST(Balance, MinimisesLargestStage) {
  auto r = balance_layers({10, 10, 10, 10}, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0], (std::pair<uint32_t, uint32_t>{0, 2}));
  EXPECT_EQ((*r)[1], (std::pair<uint32_t, uint32_t>{2, 4}));
  auto uneven = balance_layers({1, 1, 1, 1, 10}, 2);
  EXPECT_EQ((*uneven)[0], (std::pair<uint32_t, uint32_t>{0, 4}));
  auto three = balance_layers(std::vector<uint64_t>(5, 7), 3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ((*three)[0].first, 0u);
  EXPECT_EQ((*three)[2].second, 5u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ((*three)[i].second, (*three)[i + 1].first);
  uint32_t largest = 0;
  for (auto [b, e] : *three) largest = std::max(largest, e - b);
  EXPECT_EQ(largest, 2u);
  EXPECT_FALSE(balance_layers({1, 2}, 3).ok());
  EXPECT_FALSE(balance_layers({1, 2}, 0).ok());
}

TEST(Balance, CountsTheOutputHeadInTheLastStage) {
  // Twelve equal layers and a head the size of five (GPT-2 124M's proportions): equal layer counts would leave the
  // last stage 6 + 5 = 11 units against 6; counting the head gives 8 | 4 + 5 (80 | 90, ties to the earlier stage).
  auto r = balance_layers(std::vector<uint64_t>(12, 10), 2, 50);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0], (std::pair<uint32_t, uint32_t>{0, 8}));
  EXPECT_EQ((*r)[1], (std::pair<uint32_t, uint32_t>{8, 12}));
  auto three = balance_layers(std::vector<uint64_t>(12, 10), 3, 50);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ((*three)[2], (std::pair<uint32_t, uint32_t>{11, 12})) << "one layer + the head: 60, the others 60 and 50";
  // A head larger than everything else still leaves the last stage at least one layer.
  auto huge = balance_layers({1, 1, 1}, 2, 1000);
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ((*huge)[1], (std::pair<uint32_t, uint32_t>{2, 3}));
}

TEST(Balance, DecodeCostsSplitLayersAndHead) {
  const std::vector<TensorSize> tensors = {
      {"token_embd.weight", 1000}, {"position_embd.weight", 300}, {"blk.0.attn_qkv.weight", 40},
      {"blk.0.ffn_up.weight", 60},  {"blk.1.attn_qkv.weight", 45}, {"output_norm.weight", 2},
      {"output_norm.bias", 2},      {"output.weight", 700}};
  DecodeCosts c = decode_costs(tensors);
  EXPECT_EQ(c.layer_bytes, (std::vector<uint64_t>{100, 45}));
  EXPECT_EQ(c.head_bytes, 704u) << "output.weight and the output norm; the embeddings are the front's";
  // Tied output: the last stage multiplies by the token embedding.
  const std::vector<TensorSize> tied = {{"token_embd.weight", 1000}, {"blk.0.ffn_up.weight", 60},
                                        {"output_norm.weight", 2}};
  EXPECT_EQ(decode_costs(tied).head_bytes, 1002u);
}

TEST(Schedule, MicroBatchesCoverPromptInOrder) {
  auto mb = split_micro_batches(10, 4);
  ASSERT_EQ(mb.size(), 4u);
  EXPECT_EQ(mb[0].begin, 0u);
  EXPECT_EQ(mb[0].end, 3u);
  EXPECT_EQ(mb[3].end, 10u);
  for (size_t i = 1; i < mb.size(); ++i) EXPECT_EQ(mb[i].begin, mb[i - 1].end);
  EXPECT_EQ(split_micro_batches(2, 8).size(), 2u);
  EXPECT_TRUE(split_micro_batches(0, 4).empty());
}

TEST(Schedule, FillDrainRunsEachMicroBatchOnEachStageOnceInOrder) {
  const uint32_t S = 4, M = 16;
  auto steps = fill_drain_schedule(S, M);
  ASSERT_EQ(steps.size(), S + M - 1);
  std::vector<std::vector<int>> when(S, std::vector<int>(M, -1));
  for (size_t t = 0; t < steps.size(); ++t) {
    std::vector<bool> busy(S, false);
    for (auto slot : steps[t]) {
      EXPECT_FALSE(busy[slot.stage]) << "stage runs twice in one step";
      busy[slot.stage] = true;
      EXPECT_EQ(when[slot.stage][slot.micro_batch], -1);
      when[slot.stage][slot.micro_batch] = static_cast<int>(t);
    }
  }
  for (uint32_t s = 0; s < S; ++s) {
    for (uint32_t m = 0; m < M; ++m) {
      ASSERT_GE(when[s][m], 0);
      if (s > 0) {
        EXPECT_GT(when[s][m], when[s - 1][m]) << "stage before its input is ready";
      }
      if (m > 0) {
        EXPECT_GT(when[s][m], when[s][m - 1]) << "micro-batches out of order";
      }
    }
  }
  EXPECT_EQ(steps[S - 1].size(), S);  // the pipeline is full once filled
  EXPECT_EQ(fill_drain_schedule(1, 1).size(), 1u);
  EXPECT_TRUE(fill_drain_schedule(0, 3).empty());
}

}  // namespace
}  // namespace veil::pipeline

namespace veil::pipeline {
namespace {

TEST(Propose, BalancedManifestForSealedStories260K) {
  auto file = gguf::File::open(std::string(VEIL_SHARED_DIR) + "/models/stories260K/stories260K.gguf");
  ASSERT_TRUE(file.ok()) << file.error().message();
  SecretBytes key(crypto::random_bytes(32));
  sealed::SealOptions so;
  so.model_id = "stories260K";
  so.model_version = 4;
  auto sealed_bytes = sealed::seal_gguf(*file, key, so);
  ASSERT_TRUE(sealed_bytes.ok()) << sealed_bytes.error().message();
  auto header = sealed::parse_header(*sealed_bytes);
  ASSERT_TRUE(header.ok()) << header.error().message();
  auto digest = crypto::sha256(*sealed_bytes);

  ProposeOptions p;
  p.n_stages = 2;
  p.endpoints = {"127.0.0.1:7400", "127.0.0.1:7401"};
  p.policy_json = R"({"allowed_types": ["sim"], "allow_simulated": true})";
  auto m = propose_manifest(*header, digest, p);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_EQ(m->model_id, "stories260K");
  EXPECT_EQ(m->model_version, 4u);
  EXPECT_EQ(m->n_layers, 5u);
  ASSERT_EQ(m->stages.size(), 2u);
  EXPECT_EQ(m->stages[0].layer_begin, 0u);
  // Five equal layers of 178 KiB and a 128 KiB output head that the last stage runs: 3 | 2 + head (532 | 483 KiB)
  // rather than 2 | 3 + head (355 | 660 KiB).
  EXPECT_EQ(m->stages[0].layer_end, 3u);
  EXPECT_EQ(m->stages[1].layer_end, 5u);
  EXPECT_EQ(m->stages[1].weights_sha256, *range_weights_sha256(*header, 3, 5));
  EXPECT_NE(m->stages[0].weights_sha256, m->stages[1].weights_sha256);
  EXPECT_EQ(to_hex(m->sealed_model_sha256), to_hex(digest));

  p.endpoints.pop_back();
  EXPECT_EQ(propose_manifest(*header, digest, p).error().code(), ErrorCode::kUsage);
  p.endpoints = {"a:1", "b:2", "c:3", "d:4", "e:5", "f:6"};
  p.n_stages = 6;
  EXPECT_FALSE(propose_manifest(*header, digest, p).ok());  // more stages than layers
  EXPECT_FALSE(range_weights_sha256(*header, 4, 6).ok());
}

}  // namespace
}  // namespace veil::pipeline
