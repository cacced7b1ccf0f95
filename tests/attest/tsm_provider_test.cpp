// configfs-tsm providers against a fake tsm tree in a temp dir: the test plays the kernel through
// TsmHooks (after mkdir it creates the attributes; after the inblob write it produces the outblob
// from a real quote and advances the generation).
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/tdx.h"
#include "attest/tsm.h"
#include "support/temp_dir.h"

namespace veil::attest {
namespace {

namespace fs = std::filesystem;

void put(const fs::path& p, ByteView data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}
void put(const fs::path& p, std::string_view s) { put(p, as_bytes(s)); }
Bytes get(const fs::path& p) { return *read_file(p); }

struct FakeKernel {
  std::string provider = "tdx_guest";
  Bytes report;             // what outblob returns
  int generation_step = 1;  // 2 simulates a concurrent writer
  Bytes seen_inblob;
  TsmHooks hooks() {
    TsmHooks h;
    h.after_mkdir = [this](const fs::path& e) {
      put(e / "provider", provider + "\n");
      put(e / "generation", "0\n");
      put(e / "inblob", "");
    };
    h.after_inblob_write = [this](const fs::path& e) {
      seen_inblob = get(e / "inblob");
      put(e / "outblob", report);
      put(e / "generation", std::to_string(generation_step) + "\n");
    };
    return h;
  }
};

ReportData rd(uint8_t v) {
  ReportData r;
  r.fill(v);
  return r;
}

TEST(TsmProvider, TdxQuoteThroughFakeTree) {
  testsupport::TempDir root{"veil-tsm"};
  FakeKernel k;
  auto quote = read_file(fs::path(VEIL_SHARED_DIR) / "testdata/attestation/tdx/dcap-qvl/tdx_quote");
  if (!quote.ok()) GTEST_SKIP() << "no ../shared test data";
  k.report = *quote;
  ProviderOptions opts;
  opts.tsm_root = root.path();
  auto p = make_tsm_provider(TeeType::kTdx, opts, k.hooks());
  ASSERT_TRUE(p.ok()) << p.error().message();
  auto ev = (*p)->quote(rd(0x42));
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  EXPECT_EQ(ev->type, TeeType::kTdx);
  EXPECT_EQ(ev->data, *quote);
  ASSERT_EQ(k.seen_inblob.size(), 64u);
  EXPECT_EQ(k.seen_inblob, Bytes(64, 0x42));
  EXPECT_TRUE(parse_tdx_quote(ev->data).ok());
  EXPECT_FALSE((*p)->sealing_root().ok());  // TDX has no hardware sealing key
}

TEST(TsmProvider, SnpReportThroughFakeTree) {
  testsupport::TempDir root{"veil-tsm"};
  FakeKernel k;
  k.provider = "sev_guest";
  k.report = Bytes(1184, 0);
  ProviderOptions opts;
  opts.tsm_root = root.path();
  auto p = make_tsm_provider(TeeType::kSevSnp, opts, k.hooks());
  ASSERT_TRUE(p.ok());
  auto ev = (*p)->quote(rd(1));
  ASSERT_TRUE(ev.ok()) << ev.error().message();
  EXPECT_EQ(ev->type, TeeType::kSevSnp);
  EXPECT_EQ(ev->data.size(), 1184u);
}

TEST(TsmProvider, WrongProviderRefused) {
  testsupport::TempDir root{"veil-tsm"};
  FakeKernel k;
  k.provider = "sev_guest";
  k.report = Bytes(10, 1);
  auto r = tsm_get_report(root.path(), "tdx_guest", rd(1), k.hooks());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("provider"), std::string::npos);
}

TEST(TsmProvider, ConcurrentWriterDetectedByGeneration) {
  testsupport::TempDir root{"veil-tsm"};
  FakeKernel k;
  k.report = Bytes(10, 1);
  k.generation_step = 2;
  auto r = tsm_get_report(root.path(), "tdx_guest", rd(1), k.hooks());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("generation"), std::string::npos);
}

TEST(TsmProvider, EmptyOutblobAndMissingRoot) {
  testsupport::TempDir root{"veil-tsm"};
  FakeKernel k;
  auto r = tsm_get_report(root.path(), "tdx_guest", rd(1), k.hooks());
  ASSERT_FALSE(r.ok());
  ProviderOptions opts;
  opts.tsm_root = root.path() / "absent";
  auto p = make_provider("tdx", opts);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code(), ErrorCode::kUnsupported);
  auto s = make_provider("sev-snp", opts);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace veil::attest
