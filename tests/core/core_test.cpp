#include <gtest/gtest.h>

#include <filesystem>

#include "core/core.h"
#include "support/temp_dir.h"

namespace veil {
namespace {

TEST(Result, CarriesValueOrError) {
  Result<int> ok = 7;
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
  Result<int> bad = make_error(ErrorCode::kCorrupt, "field {} at offset {}", "n_tensors", 24);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(bad.error().message(), "field n_tensors at offset 24");
  EXPECT_EQ(bad.error().wrap("model.gguf").message(), "model.gguf: field n_tensors at offset 24");
}

Status fails() { return make_error(ErrorCode::kIo, "boom"); }
Result<int> uses_try() {
  VEIL_TRY(fails());
  return 1;
}
Result<int> twice(Result<int> in) {
  VEIL_ASSIGN_OR_RETURN(int v, std::move(in));
  return v * 2;
}

TEST(Result, MacrosPropagate) {
  EXPECT_EQ(uses_try().error().message(), "boom");
  EXPECT_EQ(*twice(21), 42);
  EXPECT_FALSE(twice(make_error(ErrorCode::kIo, "x")).ok());
}

TEST(Hex, RoundTripAndErrors) {
  Bytes b{0x00, 0xab, 0xff};
  EXPECT_EQ(to_hex(b), "00abff");
  EXPECT_EQ(*from_hex("00ABff"), b);
  EXPECT_FALSE(from_hex("abc").ok());
  auto bad = from_hex("zz");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("offset 0"), std::string::npos);
}

TEST(Bytes, ConstantTimeEqual) {
  Bytes a{1, 2, 3}, b{1, 2, 3}, c{1, 2, 4};
  EXPECT_TRUE(ct_equal(a, b));
  EXPECT_FALSE(ct_equal(a, c));
  EXPECT_FALSE(ct_equal(a, Bytes{1, 2}));
}

TEST(File, AtomicWriteAndRead) {
  testsupport::TempDir dir{"veil-core-test"};
  auto p = dir / "x.bin";
  ASSERT_TRUE(write_file_atomic(p, to_bytes("hello")).ok());
  EXPECT_EQ(*read_text_file(p), "hello");
  ASSERT_TRUE(write_file_atomic(p, to_bytes("world!"), 0600).ok());
  EXPECT_EQ(*read_text_file(p), "world!");
  EXPECT_EQ(std::filesystem::status(p).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto too_big = read_file(p, 3);
  EXPECT_EQ(too_big.error().code(), ErrorCode::kResourceExhausted);
  auto m = MappedFile::open(p);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(as_chars(m->view()), "world!");
  EXPECT_EQ(read_file(dir / "missing").error().code(), ErrorCode::kNotFound);
}

TEST(ModelPath, FlagWinsAndMissingNamesEveryPlace) {
  auto missing = resolve_model_path("/nonexistent/model.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  ::setenv("VEIL_MODEL", "/nonexistent/env.gguf", 1);
  ::setenv("HOME", "/nonexistent-home", 1);
  auto r = resolve_model_path("");  // a missing $VEIL_MODEL never falls back to another model
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("$VEIL_MODEL=/nonexistent/env.gguf"), std::string::npos);
  EXPECT_NE(r.error().message().find("-m/--model"), std::string::npos);
  EXPECT_NE(r.error().message().find("stories260K.gguf"), std::string::npos);
  EXPECT_NE(r.error().message().find("/nonexistent-home/.cache/veil/models"), std::string::npos);
  ::unsetenv("VEIL_MODEL");
}

TEST(Cpu, FeaturesStringIsNonEmpty) { EXPECT_FALSE(cpu_features_string().empty()); }

}  // namespace
}  // namespace veil
