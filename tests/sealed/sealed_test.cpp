// Sealed models: round trip, tamper detection (header, body, chunks, truncation), layer ranges, keys.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>

#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "attest/sim.h"
#include "sealed/sealed.h"

namespace veil::sealed {
namespace {

namespace fs = std::filesystem;

const fs::path kStories = fs::path(VEIL_SHARED_DIR) / "models/stories260K/stories260K.gguf";

// Temporary folders, removed when the test binary exits.
struct TempDirs {
  std::vector<fs::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
};

fs::path temp_dir() {
  static std::atomic<int> n{0};
  static TempDirs all;
  fs::path d = fs::path(::testing::TempDir()) / fmt::format("veil_sealed_{}_{}", ::getpid(), n++);
  fs::create_directories(d);
  all.dirs.push_back(d);
  return d;
}

SealOptions options(std::string id = "stories260K", uint64_t version = 1) {
  SealOptions o;
  o.model_id = std::move(id);
  o.model_version = version;
  o.version_label = "v" + std::to_string(version);
  o.chunk_size = 4096;
  return o;
}

// Seals stories260K once per test with small chunks, so the body has many chunks.
struct Sealed {
  fs::path dir = temp_dir();
  fs::path path = dir / "stories.vsm";
  SecretBytes key = generate_model_key();
  Bytes bytes;
  Header header;
};

Sealed seal_stories(uint64_t version = 1, const SecretBytes* key = nullptr) {
  Sealed s;
  if (key) s.key = *key;
  Status st = seal_file(kStories, s.path, s.key, options("stories260K", version));
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().message());
  s.bytes = *read_file(s.path);
  s.header = *parse_header(s.bytes);
  return s;
}

// Opens and fully decrypts a sealed model held in memory; returns the first error.
Status open_all(ByteView data, const SecretBytes& key) {
  VEIL_ASSIGN_OR_RETURN(SealedReader r, SealedReader::open_memory(data, "mem.vsm"));
  VEIL_TRY(r.authenticate(key));
  std::vector<uint8_t> out(r.header().plaintext_size);
  return r.decrypt(r.chunks_for(std::nullopt), out.data(), 1);
}

TEST(Sealed, RoundTripStories260KIsByteIdentical) {
  Sealed s = seal_stories();
  Bytes original = *read_file(kStories);
  EXPECT_EQ(s.header.plaintext_size, original.size());
  EXPECT_EQ(s.header.plaintext_sha256, crypto::sha256(original));
  LoadOptions lo;
  lo.expected_model_id = "stories260K";
  lo.expected_version = 1;
  lo.verify_plaintext_hashes = true;
  auto m = load_sealed_model(s.path, s.key, lo);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_TRUE(m->complete);
  ASSERT_EQ(m->buffer->size(), original.size());
  EXPECT_EQ(0, std::memcmp(m->buffer->data(), original.data(), original.size()));
  auto plain = gguf::File::open(kStories);
  ASSERT_TRUE(plain.ok());
  ASSERT_EQ(m->gguf.tensors().size(), plain->tensors().size());
  EXPECT_EQ(m->loaded_tensors.size(), plain->tensors().size());
  EXPECT_EQ(*m->gguf.get_string("general.architecture"), *plain->get_string("general.architecture"));
  // The sealed file holds no long run of the plaintext.
  ASSERT_GT(original.size(), 4096u);
  ByteView probe(original.data() + original.size() / 2, 64);
  EXPECT_EQ(std::search(s.bytes.begin(), s.bytes.end(), probe.begin(), probe.end()), s.bytes.end());
}

TEST(Sealed, ChunkBoundariesFallOnTensorStarts) {
  Sealed s = seal_stories();
  for (const TensorEntry& t : s.header.tensors) {
    EXPECT_TRUE(std::binary_search(s.header.chunk_offsets.begin(), s.header.chunk_offsets.end(), t.offset)) << t.name;
  }
  EXPECT_FALSE(s.header.layers.empty());
}

TEST(Sealed, EveryHeaderByteFlipIsRefusedNamingAField) {
  Sealed s = seal_stories();
  ASSERT_TRUE(open_all(s.bytes, s.key).ok());
  for (size_t i = 0; i < s.header.header_size; ++i) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}}) {
      Bytes b = s.bytes;
      b[i] ^= mask;
      Status st = open_all(b, s.key);
      ASSERT_FALSE(st.ok()) << "flip at header byte " << i << " was not detected";
      const std::string& msg = st.error().message();
      EXPECT_NE(msg.find("field '"), std::string::npos) << "byte " << i << ": " << msg;
      EXPECT_TRUE(st.error().code() == ErrorCode::kSecurity || st.error().code() == ErrorCode::kCorrupt ||
                  st.error().code() == ErrorCode::kUnsupported)
          << msg;
    }
  }
}

TEST(Sealed, SampledBodyByteFlipsNameTheChunk) {
  Sealed s = seal_stories();
  const Header& h = s.header;
  uint64_t body = s.bytes.size() - h.header_size;
  int checked = 0;
  for (uint64_t k = 0; k < 257; ++k) {
    uint64_t pos = h.header_size + (k * 7919 * 131 + k) % body;
    if (k == 0) pos = h.header_size;
    if (k == 256) pos = s.bytes.size() - 1;
    uint64_t chunk = 0;
    while (chunk + 1 < h.chunk_count() && h.chunk_file_offset(chunk + 1) <= pos) ++chunk;
    Bytes b = s.bytes;
    b[pos] ^= 0x04;
    Status st = open_all(b, s.key);
    ASSERT_FALSE(st.ok()) << "flip at byte " << pos;
    EXPECT_EQ(st.error().code(), ErrorCode::kSecurity);
    EXPECT_NE(st.error().message().find(fmt::format("chunk {} ", chunk)), std::string::npos)
        << pos << ": " << st.error().message();
    ++checked;
  }
  EXPECT_EQ(checked, 257);
}

TEST(Sealed, FailedLoadHandsOutNothing) {
  Sealed s = seal_stories();
  Bytes b = s.bytes;
  b[b.size() / 2] ^= 1;
  ASSERT_TRUE(write_file_atomic(s.path, b).ok());
  auto m = load_sealed_model(s.path, s.key);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(m.error().message().find("chunk "), std::string::npos);
}

TEST(Sealed, WrongKeyIsRefused) {
  Sealed s = seal_stories();
  SecretBytes other = generate_model_key();
  auto m = load_sealed_model(s.path, other);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(m.error().message().find("wrong key"), std::string::npos) << m.error().message();
  // No key bytes in the message.
  EXPECT_EQ(m.error().message().find(to_hex(other.view())), std::string::npos);
  EXPECT_EQ(m.error().message().find(to_hex(s.key.view())), std::string::npos);
}

TEST(Sealed, WrongModelIdAndVersionAreRefused) {
  Sealed s = seal_stories();
  LoadOptions lo;
  lo.expected_model_id = "tinyllama";
  auto m = load_sealed_model(s.path, s.key, lo);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(m.error().message().find("model_id"), std::string::npos) << m.error().message();
  LoadOptions lv;
  lv.expected_version = 2;
  auto v = load_sealed_model(s.path, s.key, lv);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message().find("model_version"), std::string::npos) << v.error().message();
}

TEST(Sealed, ChunksSwappedWithinAFileAreRefused) {
  Sealed s = seal_stories();
  const Header& h = s.header;
  uint64_t a = UINT64_MAX;
  for (uint64_t i = 1; i + 1 < h.chunk_count(); ++i) {
    if (h.chunk_sizes[i] == h.chunk_sizes[i + 1]) { a = i; break; }
  }
  ASSERT_NE(a, UINT64_MAX);
  Bytes b = s.bytes;
  size_t n = h.chunk_sizes[a] + crypto::kAeadTagSize;
  std::swap_ranges(b.begin() + h.chunk_file_offset(a), b.begin() + h.chunk_file_offset(a) + n,
                   b.begin() + h.chunk_file_offset(a + 1));
  Status st = open_all(b, s.key);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(st.error().message().find(fmt::format("chunk {} ", a)), std::string::npos) << st.error().message();
}

TEST(Sealed, ChunkFromAnotherVersionIsRefused) {
  Sealed v1 = seal_stories(1);
  Sealed v2 = seal_stories(2, &v1.key);  // same key, same plaintext, new version
  ASSERT_EQ(v1.header.chunk_sizes, v2.header.chunk_sizes);
  uint64_t c = 3;
  Bytes b = v2.bytes;
  size_t n = v2.header.chunk_sizes[c] + crypto::kAeadTagSize;
  std::copy_n(v1.bytes.begin() + v1.header.chunk_file_offset(c), n, b.begin() + v2.header.chunk_file_offset(c));
  Status st = open_all(b, v1.key);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("chunk 3 "), std::string::npos) << st.error().message();
  // v1's header on v2's body: chunk 0 already fails.
  Bytes mixed(v1.bytes.begin(), v1.bytes.begin() + v1.header.header_size);
  mixed.insert(mixed.end(), v2.bytes.begin() + v2.header.header_size, v2.bytes.end());
  Status st2 = open_all(mixed, v1.key);
  ASSERT_FALSE(st2.ok());
  EXPECT_NE(st2.error().message().find("chunk 0 "), std::string::npos) << st2.error().message();
}

TEST(Sealed, TruncationIsRefused) {
  Sealed s = seal_stories();
  const Header& h = s.header;
  for (uint64_t cut : {s.bytes.size() - 1, s.bytes.size() - h.chunk_sizes.back() - 16,
                       static_cast<uint64_t>(h.header_size) + 100, static_cast<uint64_t>(h.header_size)}) {
    ByteView v(s.bytes.data(), cut);
    Status st = open_all(v, s.key);
    ASSERT_FALSE(st.ok()) << cut;
    EXPECT_NE(st.error().message().find("truncated"), std::string::npos) << st.error().message();
  }
  ByteView header_cut(s.bytes.data(), h.header_size - 1);
  Status st = open_all(header_cut, s.key);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("truncated"), std::string::npos) << st.error().message();
  Bytes longer = s.bytes;
  longer.push_back(0);
  Status st2 = open_all(longer, s.key);
  ASSERT_FALSE(st2.ok());
  EXPECT_NE(st2.error().message().find("after the final chunk"), std::string::npos) << st2.error().message();
}

TEST(Sealed, LayerRangeDecryptsOnlyItsChunks) {
  Sealed s = seal_stories();
  Bytes original = *read_file(kStories);
  uint32_t last = s.header.layers.back().layer;
  ASSERT_GE(last, 1u);
  auto reader = SealedReader::open(s.path);
  ASSERT_TRUE(reader.ok());
  size_t part = reader->chunks_for(LayerRange{0, 0}).size();
  EXPECT_LT(part, s.header.chunk_count());
  LoadOptions lo;
  lo.layers = LayerRange{0, 0};
  lo.verify_plaintext_hashes = true;
  auto m = load_sealed_model(s.path, s.key, lo);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_FALSE(m->complete);
  EXPECT_TRUE(m->has_tensor("token_embd.weight"));
  EXPECT_FALSE(m->has_tensor("output_norm.weight"));
  bool saw_blk0 = false;
  for (const auto& name : m->loaded_tensors) {
    if (name.rfind("blk.", 0) == 0) {
      EXPECT_EQ(name.rfind("blk.0.", 0), 0u) << name;
      saw_blk0 = true;
    }
  }
  EXPECT_TRUE(saw_blk0);
  for (const TensorEntry& t : s.header.tensors) {
    if (!m->has_tensor(t.name)) continue;
    EXPECT_EQ(0, std::memcmp(m->buffer->data() + t.offset, original.data() + t.offset, t.size)) << t.name;
  }
  // The last stage gets the output tensors and its layer, not layer 0.
  lo.layers = LayerRange{last, last};
  auto tail = load_sealed_model(s.path, s.key, lo);
  ASSERT_TRUE(tail.ok()) << tail.error().message();
  EXPECT_TRUE(tail->has_tensor("output_norm.weight"));
  EXPECT_FALSE(tail->has_tensor("blk.0.attn_norm.weight"));
  lo.layers = LayerRange{0, last + 1};
  EXPECT_FALSE(load_sealed_model(s.path, s.key, lo).ok());
}

TEST(Sealed, DescribeNeedsNoKey) {
  Sealed s = seal_stories(7);
  auto text = describe_sealed_model(s.path, false);
  ASSERT_TRUE(text.ok()) << text.error().message();
  EXPECT_NE(text->find("stories260K"), std::string::npos);
  auto js = describe_sealed_model(s.path, true);
  ASSERT_TRUE(js.ok());
  auto j = nlohmann::json::parse(*js);
  EXPECT_EQ(j["model_id"], "stories260K");
  EXPECT_EQ(j["model_version"], 7);
  EXPECT_EQ(j["version_label"], "v7");
  EXPECT_EQ(j["key_id"], to_hex(key_id_for(s.key.view())));
  EXPECT_EQ(j["complete"], true);
  EXPECT_EQ(j["tensor_count"], s.header.tensors.size());
  EXPECT_TRUE(is_sealed_model(s.path));
  EXPECT_FALSE(is_sealed_model(kStories));
  EXPECT_FALSE(describe_sealed_model(kStories, false).ok());
}

TEST(Sealed, KeyFilesAreHexAndPrivate) {
  fs::path d = temp_dir();
  SecretBytes k = generate_model_key();
  ASSERT_TRUE(write_key_file(d / "k", k).ok());
  struct stat st {};
  ASSERT_EQ(::stat((d / "k").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = read_key_file(d / "k");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_TRUE(ct_equal(back->view(), k.view()));
  ::chmod((d / "k").c_str(), 0644);
  auto refused = read_key_file(d / "k");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kSecurity);
  ASSERT_TRUE(write_file_atomic(d / "bad", as_bytes("zz"), 0600).ok());
  EXPECT_EQ(read_key_file(d / "bad").error().code(), ErrorCode::kCorrupt);
}

TEST(Sealed, SealRefusesBadOptions) {
  Bytes plain(10000, 7);  // synthetic plaintext
  SecretBytes k = generate_model_key();
  SealOptions o = options("bad id with spaces");
  EXPECT_FALSE(seal_bytes(plain, {}, k, o).ok());
  o = options();
  o.chunk_size = 100;
  EXPECT_FALSE(seal_bytes(plain, {}, k, o).ok());
  o = options();
  EXPECT_FALSE(seal_bytes(plain, {{"blk.0.x", 9000, 2000}}, k, o).ok());
  auto ok = seal_bytes(plain, {{"blk.0.x", 5000, 2000}, {"token_embd.weight", 100, 10}}, k, o);
  ASSERT_TRUE(ok.ok());
  auto h = parse_header(*ok);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->layers.size(), 1u);
  EXPECT_EQ(h->tensors[0].layer, 0u);
  EXPECT_EQ(h->tensors[1].layer, kNoLayer);
}

TEST(Sealed, ChaChaSuiteRoundTrips) {
  Bytes plain(50000);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>(i * 31);  // synthetic
  SecretBytes k = generate_model_key();
  SealOptions o = options();
  o.suite = crypto::AeadSuite::kChaCha20Poly1305;
  auto sealed = seal_bytes(plain, {{"blk.0.w", 4000, 20000}}, k, o);
  ASSERT_TRUE(sealed.ok());
  auto r = SealedReader::open_memory(*sealed, "synthetic.vsm");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->header().suite, crypto::AeadSuite::kChaCha20Poly1305);
  ASSERT_TRUE(r->authenticate(k).ok());
  Bytes out(plain.size());
  ASSERT_TRUE(r->decrypt(r->chunks_for(std::nullopt), out.data(), 2).ok());
  EXPECT_EQ(out, plain);
}

// ---- TEE-derived keys (sim provider) ----

struct SimSetup {
  fs::path dir = temp_dir();
  std::unique_ptr<attest::Provider> make(const std::string& config_text) {
    attest::ProviderOptions o;
    o.sim_platform_key = dir / "platform.key";
    o.sim_create_key = true;
    o.sim_config = dir / ("config-" + std::to_string(std::hash<std::string>{}(config_text)));
    EXPECT_TRUE(write_file_atomic(o.sim_config, as_bytes(config_text)).ok());
    auto p = attest::make_provider("sim", o);
    EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message());
    return std::move(*p);
  }
};

TEST(DeriveKey, StableForTheSameMeasurementDifferentOtherwise) {
  SimSetup sim;
  auto a1 = sim.make("measured configuration A");
  auto a2 = sim.make("measured configuration A");  // a "restart" with the same measurement
  auto b = sim.make("measured configuration B");
  auto k1 = derive_key(*a1, "node-signing-key");
  auto k2 = derive_key(*a2, "node-signing-key");
  auto kb = derive_key(*b, "node-signing-key");
  auto kp = derive_key(*a1, "local-state");
  ASSERT_TRUE(k1.ok() && k2.ok() && kb.ok() && kp.ok()) << (k1.ok() ? "" : k1.error().message());
  EXPECT_EQ(k1->size(), 32u);
  EXPECT_TRUE(ct_equal(k1->view(), k2->view()));
  EXPECT_FALSE(ct_equal(k1->view(), kb->view()));
  EXPECT_FALSE(ct_equal(k1->view(), kp->view()));

  // With collateral, the verified measurement is folded in too; still stable, still distinct.
  attest::Collateral col;
  auto pk = attest::sim_platform_public_key(sim.dir / "platform.key", false);
  ASSERT_TRUE(pk.ok()) << pk.error().message();
  col.items["sim_platform_public_key"] = *pk;
  auto m1 = derive_key(*a1, "node-signing-key", &col);
  auto m2 = derive_key(*a2, "node-signing-key", &col);
  auto mb = derive_key(*b, "node-signing-key", &col);
  ASSERT_TRUE(m1.ok()) << m1.error().message();
  ASSERT_TRUE(m2.ok() && mb.ok());
  EXPECT_TRUE(ct_equal(m1->view(), m2->view()));
  EXPECT_FALSE(ct_equal(m1->view(), mb->view()));
  EXPECT_FALSE(ct_equal(m1->view(), k1->view()));
  // Evidence from a platform the collateral does not trust is refused.
  attest::Collateral wrong;
  wrong.items["sim_platform_public_key"] = Bytes(32, 1);
  EXPECT_FALSE(derive_key(*a1, "node-signing-key", &wrong).ok());
  EXPECT_FALSE(derive_key(*a1, "").ok());
}

}  // namespace
}  // namespace veil::sealed

namespace veil::sealed {
namespace {

// The fuzz seeds were written from docs/sealed-format.md by an independent script; they must parse.
TEST(SealedFormat, FuzzSeedsWrittenFromTheSpecParse) {
  fs::path dir = fs::path(VEIL_SOURCE_DIR) / "fuzz/corpus/sealed_header";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto bytes = read_file(e.path());
    ASSERT_TRUE(bytes.ok());
    auto r = SealedReader::open_memory(*bytes, e.path().filename().string());
    ASSERT_TRUE(r.ok()) << e.path() << ": " << r.error().message();
    EXPECT_EQ(r->header().model_id, "synthetic-seed");
    EXPECT_EQ(r->header().model_version, 3u);
    // Their tags are not MACs under any key we hold.
    EXPECT_EQ(r->authenticate(generate_model_key()).error().code(), ErrorCode::kSecurity);
    ++n;
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace veil::sealed
