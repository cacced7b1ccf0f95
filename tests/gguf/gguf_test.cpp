#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "gguf/gguf.h"
#include "gguf/writer.h"

using namespace veil;
using namespace veil::gguf;

namespace {

const std::string kShared = VEIL_SHARED_DIR;

Result<File> parse(const Bytes& b) {
  auto owner = std::make_shared<Bytes>(b);
  return File::from_memory(owner, ByteView(owner->data(), owner->size()), "test.gguf");
}

Bytes small_file() {
  Writer w;
  w.set("general.architecture", make_string("llama"));
  w.set("llama.block_count", make_u32(2));
  w.set("x.neg", make_i32(-5));
  w.set("x.f", make_f32(0.5f));
  w.set("x.flag", make_bool(true));
  w.set("tokenizer.ggml.tokens", make_string_array({"a", "b", "c"}));
  w.set("tokenizer.ggml.scores", make_f32_array({1.0f, 2.0f, 3.0f}));
  w.set("tokenizer.ggml.token_type", make_i32_array({1, 3, 6}));
  Bytes t0(4 * 8);
  for (size_t i = 0; i < t0.size(); ++i) t0[i] = static_cast<uint8_t>(i);
  EXPECT_TRUE(w.add_tensor("a", {4, 2}, TensorType::kF32, t0).ok());
  EXPECT_TRUE(w.add_tensor("b", {32}, TensorType::kQ8_0, Bytes(34, 7)).ok());
  EXPECT_TRUE(w.add_tensor("c", {8}, TensorType::kF32, Bytes(32, 1)).ok());
  return w.finish();
}

std::string error_of(const Bytes& b) {
  auto r = parse(b);
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : r.error().message();
}

}  // namespace

TEST(Gguf, ReadsStories260K) {
  auto f = File::open(kShared + "/models/stories260K/stories260K.gguf");
  ASSERT_TRUE(f.ok()) << f.error().message();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_uint("llama.embedding_length"), 64u);
  EXPECT_EQ(*f->get_uint("llama.block_count"), 5u);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens")->size(), 512u);
  EXPECT_EQ(f->get_float_array("tokenizer.ggml.scores")->size(), 512u);
  const TensorInfo* emb = f->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dims, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(emb->type, TensorType::kF32);
  EXPECT_EQ(emb->n_bytes, 64u * 512 * 4);
  for (const auto& t : f->tensors()) {
    EXPECT_GE(t.data, f->bytes().data() + f->data_offset());
    EXPECT_LE(t.data + t.n_bytes, f->bytes().data() + f->bytes().size());
  }
  // Typed accessor mismatches name the key.
  auto bad = f->get_string("llama.block_count");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(bad.error().message().find("llama.block_count"), std::string::npos);
  EXPECT_EQ(f->get_uint("no.such.key").error().code(), ErrorCode::kNotFound);
}

TEST(Gguf, ReadsVocabularyOnlyFiles) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(kShared + "/testdata/tokenizer")) {
    if (e.path().extension() != ".gguf") continue;
    auto f = File::open(e.path());
    ASSERT_TRUE(f.ok()) << f.error().message();
    EXPECT_TRUE(f->tensors().empty());
    EXPECT_TRUE(f->get_string_array("tokenizer.ggml.tokens").ok()) << e.path();
    EXPECT_TRUE(f->get_string("tokenizer.ggml.model").ok());
    ++n;
  }
  EXPECT_GE(n, 5);
}

TEST(Gguf, WriterRoundTrip) {
  Bytes b = small_file();
  auto f = parse(b);
  ASSERT_TRUE(f.ok()) << f.error().message();
  EXPECT_EQ(*f->get_int("x.neg"), -5);
  EXPECT_FALSE(f->get_uint("x.neg").ok());
  EXPECT_DOUBLE_EQ(*f->get_float("x.f"), 0.5);
  EXPECT_TRUE(*f->get_bool("x.flag"));
  EXPECT_EQ(*f->get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 3, 6}));
  ASSERT_EQ(f->tensors().size(), 3u);
  const TensorInfo* a = f->find_tensor("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->n_elements, 8u);
  EXPECT_EQ(a->data[5], 5);
  const TensorInfo* q = f->find_tensor("b");
  EXPECT_EQ(q->n_bytes, 34u);
  EXPECT_EQ(q->offset % 32, 0u);
  EXPECT_EQ(q->data[0], 7);
  // write() goes through the atomic writer.
  auto path = std::filesystem::path(VEIL_BINARY_DIR) / "gguf_roundtrip_test.gguf";
  Writer w;
  w.set("k", make_u64(123));
  ASSERT_TRUE(w.write(path).ok());
  auto g = File::open(path);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*g->get_uint("k"), 123u);
  std::filesystem::remove(path);
}

TEST(Gguf, RejectsEveryTruncation) {
  Bytes b = small_file();
  for (size_t n = 0; n < b.size(); ++n) {
    Bytes t(b.begin(), b.begin() + static_cast<long>(n));
    auto r = parse(t);
    if (r.ok()) {
      // Only a cut inside the trailing padding of the last tensor could still be valid: never here, since the
      // last tensor ends exactly at an aligned offset.
      ADD_FAILURE() << "truncated to " << n << " bytes accepted";
      continue;
    }
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << r.error().message();
    EXPECT_NE(r.error().message().find("at byte"), std::string::npos) << r.error().message();
  }
}

TEST(Gguf, RejectsBadMagicAndVersion) {
  Bytes b = small_file();
  Bytes m = b;
  m[0] = 'X';
  EXPECT_NE(error_of(m).find("magic at byte 0"), std::string::npos);
  Bytes v = b;
  v[4] = 1;
  auto r = parse(v);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
}

TEST(Gguf, RejectsHugeCounts) {
  Bytes b = small_file();
  Bytes t = b;
  uint64_t huge = uint64_t{1} << 60;
  std::memcpy(t.data() + 8, &huge, 8);
  EXPECT_NE(error_of(t).find("tensor count at byte 8"), std::string::npos);
  Bytes k = b;
  std::memcpy(k.data() + 16, &huge, 8);
  EXPECT_NE(error_of(k).find("metadata count at byte 16"), std::string::npos);
  // A string length far past the end: the first key's length at byte 24.
  Bytes s = b;
  std::memcpy(s.data() + 24, &huge, 8);
  std::string e = error_of(s);
  EXPECT_NE(e.find("metadata key #0 at byte 24"), std::string::npos) << e;
}

TEST(Gguf, RejectsHugeArrayAndWrongTypes) {
  Writer w;
  w.set("arr", make_f32_array({1, 2, 3}));
  Bytes b = w.finish();
  // layout: 24 header, key: 8 + 3, type 4 (at 35), element type 4 (at 39), length 8 (at 43)
  Bytes a = b;
  uint64_t huge = uint64_t{1} << 40;
  std::memcpy(a.data() + 43, &huge, 8);
  std::string e = error_of(a);
  EXPECT_NE(e.find("array length) at byte 43"), std::string::npos) << e;
  Bytes t = b;
  uint32_t bad_type = 99;
  std::memcpy(t.data() + 35, &bad_type, 4);
  e = error_of(t);
  EXPECT_NE(e.find("type of 'arr' at byte 35"), std::string::npos) << e;
  Bytes et = b;
  std::memcpy(et.data() + 39, &bad_type, 4);
  e = error_of(et);
  EXPECT_NE(e.find("unknown array element type 99"), std::string::npos) << e;
}

TEST(Gguf, RejectsBadTensorInfo) {
  Writer w;
  w.set("a", make_u32(1));
  ASSERT_TRUE(w.add_tensor("t", {32}, TensorType::kF32, Bytes(128)).ok());
  Bytes b = w.finish();
  // header 24, kv: 8+1+4+4 = 17 -> tensor name at 41: 8 + 1; n_dims at 50; dim at 54; type at 62; offset at 66.
  auto with = [&](size_t at, auto v) {
    Bytes c = b;
    std::memcpy(c.data() + at, &v, sizeof(v));
    return error_of(c);
  };
  EXPECT_NE(with(50, uint32_t{9}).find("dimension count at byte 50"), std::string::npos);
  EXPECT_NE(with(54, uint64_t{0}).find("dimension is 0"), std::string::npos);
  std::string e = with(54, uint64_t{1} << 40);
  EXPECT_NE(e.find("run past the end"), std::string::npos) << e;
  auto r = parse([&] { Bytes c = b; uint32_t ty = 77; std::memcpy(c.data() + 62, &ty, 4); return c; }());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message().find("at byte 62"), std::string::npos);
  EXPECT_NE(with(62, uint32_t{12}).find("not a multiple of the Q4_K block size"), std::string::npos);
  EXPECT_NE(with(66, uint64_t{3}).find("offset at byte 66"), std::string::npos);
  e = with(66, uint64_t{1} << 62);
  EXPECT_NE(e.find("run past the end"), std::string::npos) << e;
}

TEST(Gguf, RejectsBadAlignmentAndDuplicates) {
  Writer w(64);
  ASSERT_TRUE(w.add_tensor("t", {32}, TensorType::kF32, Bytes(128)).ok());
  Bytes b = w.finish();
  ASSERT_TRUE(parse(b).ok());
  EXPECT_EQ(parse(b)->alignment(), 64u);
  Bytes c = b;
  // general.alignment value: 24 + 8 + 17 + 4 = 53
  uint32_t three = 3;
  std::memcpy(c.data() + 53, &three, 4);
  EXPECT_NE(error_of(c).find("general.alignment"), std::string::npos);

  Writer d;
  ASSERT_TRUE(d.add_tensor("x", {1}, TensorType::kF32, Bytes(4)).ok());
  ASSERT_TRUE(d.add_tensor("y", {1}, TensorType::kF32, Bytes(4)).ok());
  Bytes db = d.finish();
  // second tensor's name: 24 + (8+1+4+8+4+8) = 57 -> name byte at 65
  db[65] = 'x';
  EXPECT_NE(error_of(db).find("duplicate tensor name"), std::string::npos);
}

TEST(Gguf, TypeTraits) {
  EXPECT_EQ(type_traits(TensorType::kQ4_K)->type_size, 144u);
  EXPECT_EQ(type_traits(TensorType::kQ6_K)->type_size, 210u);
  EXPECT_EQ(type_traits(TensorType::kQ5_1)->type_size, 24u);
  EXPECT_EQ(*parse_type_name("q4_k"), TensorType::kQ4_K);
  EXPECT_EQ(*parse_type_name("BF16"), TensorType::kBF16);
  EXPECT_FALSE(parse_type_name("Q2_K").ok());
  EXPECT_EQ(type_name(static_cast<TensorType>(99)), "type99");
}

TEST(Gguf, FuzzSeedsParse) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(VEIL_SOURCE_DIR) + "/fuzz/corpus/gguf")) {
    if (e.path().extension() != ".gguf") continue;
    auto f = File::open(e.path());
    EXPECT_TRUE(f.ok()) << e.path() << ": " << f.error().message();
    ++n;
  }
  EXPECT_GE(n, 3);
  auto q = File::open(std::string(VEIL_SOURCE_DIR) + "/fuzz/corpus/gguf/quantised_align64.gguf");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->alignment(), 64u);
  EXPECT_EQ(q->find_tensor("q6_k")->n_bytes, 210u);
}
