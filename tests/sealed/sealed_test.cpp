// Sealed models: round trip, tamper detection (header, body, chunks, truncation), layer ranges, keys.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "sealed/format.h"
#include "sealed/sealed.h"
#include "support/sim_tee.h"
#include "support/temp_dir.h"

namespace veil::sealed {
namespace {

namespace fs = std::filesystem;

const fs::path kStories = fs::path(VEIL_SHARED_DIR) / "models/stories260K/stories260K.gguf";

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
  testsupport::TempDir tmp{"veil-sealed"};
  fs::path dir = tmp.path();
  fs::path path = dir / "stories.vsm";
  SecretBytes key = generate_model_key();
  Bytes bytes;
  Header header;
};

Sealed seal_stories(uint64_t version = 1, const SecretBytes* key = nullptr, uint16_t format = kFormatVersion2) {
  Sealed s;
  if (key) s.key = *key;
  SealOptions o = options("stories260K", version);
  o.format_version = format;
  Status st = seal_file(kStories, s.path, s.key, o);
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
  testsupport::TempDir tmp{"veil-sealed"};
  const fs::path& d = tmp.path();
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

// Simulated workloads on one machine (one platform key); `collateral` verifies their evidence.
struct SimSetup {
  testsupport::TempDir tmp{"veil-sealed"};
  fs::path dir = tmp.path();
  attest::Collateral collateral;
  std::shared_ptr<attest::Provider> make(const std::string& config_text) {
    auto tee = testsupport::make_sim_tee(dir, config_text);
    EXPECT_TRUE(tee.ok()) << (tee.ok() ? "" : tee.error().message());
    if (!tee.ok()) return nullptr;
    collateral = tee->collateral;
    return tee->provider;
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
  const attest::Collateral& col = sim.collateral;
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


// ---- Format 2: per-part keys and range key sets ----

RangeKeySet range_keys(const Sealed& s, LayerRange layers) {
  auto spec = range_spec_for(s.header, layers);
  EXPECT_TRUE(spec.ok()) << spec.error().message();
  auto set = RangeKeySet::derive(s.key, s.header.model_id, s.header.model_version, *spec);
  EXPECT_TRUE(set.ok()) << set.error().message();
  return std::move(*set);
}

LoadOptions range_options(LayerRange layers) {
  LoadOptions lo;
  lo.layers = layers;
  lo.verify_plaintext_hashes = true;
  return lo;
}

TEST(RangeKeys, ChunksBelongToTheirTensorsParts) {
  Sealed s = seal_stories();
  ASSERT_EQ(s.header.format_version, kFormatVersion2);
  ASSERT_EQ(s.header.chunk_parts.size(), s.header.chunk_count());
  EXPECT_EQ(s.header.chunk_parts[0], kPartRest);  // GGUF header, metadata, vocabulary
  for (const TensorEntry& t : s.header.tensors) {
    auto c = std::lower_bound(s.header.chunk_offsets.begin(), s.header.chunk_offsets.end(), t.offset) -
             s.header.chunk_offsets.begin();
    EXPECT_EQ(s.header.chunk_parts[c], part_of_tensor(t.name)) << t.name;
  }
  EXPECT_EQ(part_of_tensor("blk.3.attn_q.weight"), 3u);
  EXPECT_EQ(part_of_tensor("token_embd.weight"), kPartInput);
  EXPECT_EQ(part_of_tensor("output_norm.weight"), kPartOutput);
  EXPECT_EQ(part_of_tensor("rope_freqs.weight"), kPartRest);
}

TEST(RangeKeys, SpecFollowsTheLayerRangeRule) {
  auto first = range_spec_for(LayerRange{0, 1}, 5, false);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->input);
  EXPECT_FALSE(first->output);
  auto middle = range_spec_for(LayerRange{2, 3}, 5, true);
  ASSERT_TRUE(middle.ok());
  EXPECT_FALSE(middle->input || middle->output);
  auto last = range_spec_for(LayerRange{4, 4}, 5, false);
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(last->output);
  EXPECT_FALSE(last->input);
  auto tied = range_spec_for(LayerRange{4, 4}, 5, true);  // the head is token_embd: the last stage needs it
  ASSERT_TRUE(tied.ok());
  EXPECT_TRUE(tied->input && tied->output);
  EXPECT_FALSE(range_spec_for(LayerRange{2, 1}, 5, false).ok());
  EXPECT_FALSE(range_spec_for(LayerRange{0, 5}, 5, false).ok());
  EXPECT_FALSE(range_spec_for(LayerRange{0, 0}, 0, false).ok());
  EXPECT_FALSE(range_spec_for(LayerRange{0, kMaxRangeLayers}, kMaxModelLayers, false).ok());
}

TEST(RangeKeys, ASetDecryptsItsLayersAndRefusesAnotherLayersChunks) {
  Sealed s = seal_stories();
  Bytes original = *read_file(kStories);
  ASSERT_EQ(layer_count(s.header), 5u);
  RangeKeySet head = range_keys(s, {0, 1});
  EXPECT_TRUE(head.holds(0) && head.holds(1) && head.holds(kPartInput) && head.holds(kPartRest));
  EXPECT_FALSE(head.holds(2) || head.holds(kPartOutput));
  auto m = load_sealed_model(s.path, head, range_options({0, 1}));
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_FALSE(m->complete);
  EXPECT_TRUE(m->has_tensor("token_embd.weight"));
  for (const TensorEntry& t : s.header.tensors) {
    if (!m->has_tensor(t.name)) continue;
    EXPECT_EQ(0, std::memcmp(m->buffer->data() + t.offset, original.data() + t.offset, t.size)) << t.name;
  }
  // A sub-range is fine; a layer outside the set, or the whole model, is refused before decrypting, naming the part.
  EXPECT_TRUE(load_sealed_model(s.path, head, range_options({0, 0})).ok());
  auto other = load_sealed_model(s.path, head, range_options({1, 2}));
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(other.error().message().find("belongs to layer 2"), std::string::npos) << other.error().message();
  EXPECT_NE(other.error().message().find("range key set (layers 0..1 + rest + input)"), std::string::npos)
      << other.error().message();
  EXPECT_EQ(other.error().message().find('\n'), std::string::npos);
  EXPECT_FALSE(load_sealed_model(s.path, head, LoadOptions{}).ok());
  // A middle stage holds neither embeddings nor head; asking for the last layer needs the output globals.
  RangeKeySet middle = range_keys(s, {2, 3});
  auto mm = load_sealed_model(s.path, middle, range_options({2, 3}));
  ASSERT_TRUE(mm.ok()) << mm.error().message();
  EXPECT_FALSE(mm->has_tensor("token_embd.weight"));
  auto tail = load_sealed_model(s.path, middle, range_options({3, 4}));
  ASSERT_FALSE(tail.ok());
  // The first chunk it lacks (in file order) is named: layer 4's or the output globals'.
  EXPECT_TRUE(tail.error().message().find("belongs to layer 4") != std::string::npos ||
              tail.error().message().find("belongs to the output globals") != std::string::npos)
      << tail.error().message();
  EXPECT_NE(tail.error().message().find("(layers 2..3 + rest)"), std::string::npos) << tail.error().message();
  RangeKeySet last = range_keys(s, {4, 4});
  auto lm = load_sealed_model(s.path, last, range_options({4, 4}));
  ASSERT_TRUE(lm.ok()) << lm.error().message();
  EXPECT_TRUE(lm->has_tensor("output_norm.weight"));
}

TEST(RangeKeys, ALayerZeroKeyCannotOpenALayerOneChunk) {
  Sealed s = seal_stories();
  RangeKeySet zero = range_keys(s, {0, 0});
  RangeKeySet one = range_keys(s, {1, 1});
  EXPECT_TRUE(zero.part_key(1).empty());
  uint64_t chunk = std::find(s.header.chunk_parts.begin(), s.header.chunk_parts.end(), 1u) - s.header.chunk_parts.begin();
  ASSERT_LT(chunk, s.header.chunk_count());
  auto try_open = [&](ByteView part_key) {
    SecretBytes ck = detail::derive_part_chunk_key(part_key, s.header.file_salt);
    auto aead = crypto::Aead::create(s.header.suite, ck.view());
    EXPECT_TRUE(aead.ok());
    uint8_t nonce[crypto::kAeadNonceSize], aad[detail::kAadSize];
    detail::chunk_nonce(chunk, nonce);
    detail::chunk_aad(s.header.header_hash, chunk, chunk + 1 == s.header.chunk_count(), aad);
    Bytes out(s.header.chunk_sizes[chunk]);
    ByteView sealed(s.bytes.data() + s.header.chunk_file_offset(chunk), out.size() + crypto::kAeadTagSize);
    return aead->open_into({nonce, sizeof nonce}, {aad, sizeof aad}, sealed, out.data()).ok();
  };
  EXPECT_TRUE(try_open(one.part_key(1)));
  for (uint32_t part : {0u, kPartRest, kPartInput}) EXPECT_FALSE(try_open(zero.part_key(part))) << part;
  // The set's wire form holds neither the model key nor another layer's key.
  SecretBytes wire = zero.serialize();
  SecretBytes k1 = detail::derive_part_key(s.key.view(), "stories260K", 1, 1);
  for (ByteView secret : {s.key.view(), k1.view()}) {
    EXPECT_EQ(std::search(wire.view().begin(), wire.view().end(), secret.begin(), secret.end()), wire.view().end());
  }
  // Part keys are bound to the model id and version: another version's layer key differs.
  SecretBytes k1v2 = detail::derive_part_key(s.key.view(), "stories260K", 2, 1);
  EXPECT_FALSE(ct_equal(k1.view(), k1v2.view()));
}

TEST(RangeKeys, SetsFromAnotherKeyModelOrVersionAreRefused) {
  Sealed s = seal_stories();
  Sealed other = seal_stories();  // another model key
  RangeKeySet foreign = range_keys(other, {0, 1});
  auto wrong = load_sealed_model(s.path, foreign, range_options({0, 1}));
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("field 'key_id'"), std::string::npos) << wrong.error().message();
  auto spec = range_spec_for(s.header, {0, 1});
  auto v9 = RangeKeySet::derive(s.key, "stories260K", 9, *spec);
  ASSERT_TRUE(v9.ok());
  auto stale = load_sealed_model(s.path, *v9, range_options({0, 1}));
  ASSERT_FALSE(stale.ok());
  EXPECT_NE(stale.error().message().find("version 9"), std::string::npos) << stale.error().message();
}

TEST(RangeKeys, WireFormRoundTripsAndMalformedSetsAreRefused) {
  Sealed s = seal_stories();
  RangeKeySet set = range_keys(s, {3, 4});
  SecretBytes wire = set.serialize();
  auto back = RangeKeySet::parse(wire.view());
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->model_id(), "stories260K");
  EXPECT_EQ(back->model_version(), 1u);
  EXPECT_EQ(back->key_id(), s.header.key_id);
  EXPECT_EQ(back->describe(), "layers 3..4 + rest + output");
  EXPECT_TRUE(ct_equal(back->part_key(4), set.part_key(4)));
  EXPECT_TRUE(load_sealed_model(s.path, *back, range_options({3, 4})).ok());
  Bytes w(wire.view().begin(), wire.view().end());
  auto refused = [](Bytes b) { return !RangeKeySet::parse(b).ok(); };
  EXPECT_TRUE(refused(Bytes(w.begin(), w.end() - 1)));  // a key byte short
  Bytes longer = w;
  longer.push_back(0);
  EXPECT_TRUE(refused(longer));
  Bytes version = w;
  version[0] = 3;
  EXPECT_TRUE(refused(version));
  version[0] = RangeKeySet::kWireVersionMetadata;  // a range set's bytes read as metadata-only: wrong length
  EXPECT_TRUE(refused(version));
  size_t at = 19 + std::string("stories260K").size();  // model_version, first, last, flags follow the id
  Bytes flags = w;
  flags[at + 16] |= 4;
  EXPECT_TRUE(refused(flags));
  Bytes inverted = w;
  inverted[at + 8] = 5;  // first 5 > last 4
  EXPECT_TRUE(refused(inverted));
  for (size_t n = 0; n < 40; ++n) EXPECT_TRUE(refused(Bytes(w.begin(), w.begin() + n))) << n;
}

// True if the process can read [p, p + n): write() reports EFAULT instead of faulting on a PROT_NONE page.
bool readable(const uint8_t* p, size_t n) {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  bool ok = ::write(fds[1], p, n) == static_cast<ssize_t>(n);
  ::close(fds[0]);
  ::close(fds[1]);
  return ok;
}

TEST(RangeKeys, AMetadataOnlySetOpensTheTokenizerAndNoLayer) {
  Sealed s = seal_stories();
  auto set = RangeKeySet::derive(s.key, s.header.model_id, s.header.model_version, metadata_only_spec());
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_EQ(set->describe(), "metadata only (rest)");
  EXPECT_TRUE(set->holds(kPartRest));
  for (uint32_t part : {0u, 1u, 4u, kPartInput, kPartOutput}) EXPECT_FALSE(set->holds(part)) << part_name(part);
  // A metadata-only set contradicting itself is refused.
  RangeSpec contradiction = metadata_only_spec();
  contradiction.input = true;
  EXPECT_FALSE(RangeKeySet::derive(s.key, s.header.model_id, s.header.model_version, contradiction).ok());

  LoadOptions meta;
  meta.metadata_only = true;
  meta.verify_plaintext_hashes = true;
  auto m = load_sealed_model(s.path, *set, meta);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_FALSE(m->complete);
  auto tokenizer = m->gguf.get_string("tokenizer.ggml.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message();
  EXPECT_EQ(*tokenizer, "llama");
  auto tokens = m->gguf.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.error().message();
  EXPECT_EQ(tokens->size(), 512u);
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  size_t guarded_pages = 0;
  for (const TensorEntry& t : s.header.tensors) {
    EXPECT_EQ(m->has_tensor(t.name), part_of_tensor(t.name) == kPartRest) << t.name;
    if (part_of_tensor(t.name) == kPartRest) continue;
    // Not decrypted, and not readable either: a stray read of a page wholly inside the tensor faults instead
    // of seeing zeros (a page it shares with the metadata is readable, as for any range load).
    for (uint64_t p = (t.offset + page - 1) / page * page; p + page <= t.offset + t.size; p += page, ++guarded_pages) {
      EXPECT_FALSE(readable(m->buffer->data() + p, 1)) << t.name << " page at " << p;
    }
  }
  EXPECT_GT(guarded_pages, 0u);
  EXPECT_TRUE(readable(m->buffer->data(), 64));  // the GGUF header

  // Layer 0's chunks and the input globals need keys the set does not hold: refused, naming the part.
  auto reader = SealedReader::open(s.path);
  ASSERT_TRUE(reader.ok()) << reader.error().message();
  ASSERT_TRUE(reader->authenticate(*set).ok());
  Bytes out(s.header.plaintext_size);
  for (uint32_t part : {0u, kPartInput}) {
    uint64_t chunk =
        std::find(s.header.chunk_parts.begin(), s.header.chunk_parts.end(), part) - s.header.chunk_parts.begin();
    ASSERT_LT(chunk, s.header.chunk_count()) << part_name(part);
    Status st = reader->decrypt({chunk}, out.data(), 1);
    ASSERT_FALSE(st.ok()) << part_name(part);
    EXPECT_EQ(st.error().code(), ErrorCode::kSecurity);
    EXPECT_NE(st.error().message().find("belongs to " + part_name(part) + ", whose key the range key set (metadata "
                                        "only (rest)) does not hold"),
              std::string::npos)
        << st.error().message();
    EXPECT_EQ(st.error().message().find('\n'), std::string::npos);
  }
  EXPECT_TRUE(reader->decrypt(reader->metadata_chunks(), out.data(), 1).ok());
  // Through load_sealed_model: a layer range (layer 0 with its embeddings) or the whole model is refused.
  auto layer0 = load_sealed_model(s.path, *set, range_options({0, 0}));
  ASSERT_FALSE(layer0.ok());
  EXPECT_EQ(layer0.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(layer0.error().message().find("metadata only (rest)"), std::string::npos) << layer0.error().message();
  EXPECT_FALSE(load_sealed_model(s.path, *set, LoadOptions{}).ok());
  LoadOptions both = meta;
  both.layers = LayerRange{0, 0};
  auto contradictory = load_sealed_model(s.path, *set, both);
  ASSERT_FALSE(contradictory.ok());
  EXPECT_EQ(contradictory.error().code(), ErrorCode::kInvalidArgument);

  // The header MAC is checked exactly as for a range set: a flipped salt byte is refused.
  Bytes tampered = s.bytes;
  tampered[50] ^= 1;
  fs::path bad = s.dir / "tampered.vsm";
  ASSERT_TRUE(write_file_atomic(bad, tampered).ok());
  auto forged = load_sealed_model(bad, *set, meta);
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(forged.error().message().find("header_tag"), std::string::npos) << forged.error().message();

  // The model key can load the metadata only too (format 1 and 2): the same parts.
  auto with_key = load_sealed_model(s.path, s.key, meta);
  ASSERT_TRUE(with_key.ok()) << with_key.error().message();
  EXPECT_EQ(with_key->loaded_tensors, m->loaded_tensors);
  Sealed v1 = seal_stories(1, nullptr, kFormatVersion1);
  auto v1_meta = load_sealed_model(v1.path, v1.key, meta);
  ASSERT_TRUE(v1_meta.ok()) << v1_meta.error().message();
  EXPECT_FALSE(v1_meta->has_tensor("token_embd.weight"));
}

TEST(RangeKeys, MetadataOnlyWireFormIsVersionTwoAndExact) {
  Sealed s = seal_stories();
  auto set = RangeKeySet::derive(s.key, s.header.model_id, s.header.model_version, metadata_only_spec());
  ASSERT_TRUE(set.ok());
  SecretBytes wire = set->serialize();
  Bytes w(wire.view().begin(), wire.view().end());
  const size_t id = std::string("stories260K").size();
  ASSERT_EQ(w.size(), 1 + 16 + 2 + id + 8 + 32);  // no first/last/flags, one key
  EXPECT_EQ(w[0], RangeKeySet::kWireVersionMetadata);
  EXPECT_TRUE(ct_equal(ByteView(w).subspan(w.size() - 32), set->part_key(kPartRest)));
  auto back = RangeKeySet::parse(wire.view());
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_TRUE(back->spec().metadata_only);
  EXPECT_EQ(back->describe(), "metadata only (rest)");
  EXPECT_FALSE(back->holds(0) || back->holds(kPartInput) || back->holds(kPartOutput));
  LoadOptions meta;
  meta.metadata_only = true;
  EXPECT_TRUE(load_sealed_model(s.path, *back, meta).ok());
  auto refused = [](Bytes b) { return !RangeKeySet::parse(b).ok(); };
  EXPECT_TRUE(refused(Bytes(w.begin(), w.end() - 1)));
  Bytes longer = w;
  longer.push_back(0);
  EXPECT_TRUE(refused(longer));
  Bytes as_range = w;
  as_range[0] = RangeKeySet::kWireVersion;  // read as a range set: the fields do not fit
  EXPECT_TRUE(refused(as_range));
  for (size_t n = 0; n < w.size(); ++n) EXPECT_TRUE(refused(Bytes(w.begin(), w.begin() + n))) << n;
}

TEST(RangeKeys, FormatOneStillLoadsButNotWithARangeSet) {
  Sealed s = seal_stories(1, nullptr, kFormatVersion1);
  ASSERT_EQ(s.header.format_version, kFormatVersion1);
  EXPECT_TRUE(s.header.chunk_parts.empty());
  LoadOptions lo;
  lo.verify_plaintext_hashes = true;
  auto whole = load_sealed_model(s.path, s.key, lo);
  ASSERT_TRUE(whole.ok()) << whole.error().message();
  EXPECT_TRUE(whole->complete);
  EXPECT_TRUE(load_sealed_model(s.path, s.key, range_options({1, 2})).ok());
  auto spec = range_spec_for(s.header, {0, 1});
  auto set = RangeKeySet::derive(s.key, "stories260K", 1, *spec);
  ASSERT_TRUE(set.ok());
  auto refused = load_sealed_model(s.path, *set, range_options({0, 1}));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(refused.error().message().find("format 1"), std::string::npos) << refused.error().message();
  auto text = describe_sealed_model(s.path, false);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find("v1 (one key per file)"), std::string::npos) << *text;
}

TEST(RangeKeys, TensorsStraddlingPartsAreRefused) {
  SecretBytes k = generate_model_key();
  Bytes plain(20000, 7);
  SealOptions o = options();
  // Two parts starting at one offset, and a layer-0 tensor running into layer 1's chunk.
  auto same_start = seal_bytes(plain, {{"blk.0.a", 5000, 100}, {"blk.1.b", 5000, 100}}, k, o);
  ASSERT_FALSE(same_start.ok());
  EXPECT_NE(same_start.error().message().find("another part"), std::string::npos) << same_start.error().message();
  auto overlap = seal_bytes(plain, {{"blk.0.a", 5000, 3000}, {"blk.1.b", 6000, 100}}, k, o);
  ASSERT_FALSE(overlap.ok());
  EXPECT_NE(overlap.error().message().find("straddle"), std::string::npos) << overlap.error().message();
  // Format 1 had no parts: the same spans seal there.
  o.format_version = kFormatVersion1;
  EXPECT_TRUE(seal_bytes(plain, {{"blk.0.a", 5000, 3000}, {"blk.1.b", 6000, 100}}, k, o).ok());
  // A parsed format-2 header whose tensor straddles a part is kCorrupt, naming the tensor.
  o.format_version = kFormatVersion2;
  auto good = seal_bytes(plain, {{"blk.0.a", 5000, 1000}, {"blk.1.b", 6000, 100}}, k, o);
  ASSERT_TRUE(good.ok()) << good.error().message();
  auto h = parse_header(*good);
  ASSERT_TRUE(h.ok()) << h.error().message();
  h->tensors[0].size = 1500;  // now runs into blk.1's chunk
  h->tensors[0].sha256 = crypto::sha256(ByteView(plain.data() + 5000, 1500));
  h->layers[0].digest = detail::layer_digest(h->tensors, 0);
  Bytes forged = detail::encode_header_body(*h);
  forged.resize(forged.size() + detail::kTagSize);
  auto bad = parse_header(forged);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(bad.error().message().find("field 'tensor[0]'"), std::string::npos) << bad.error().message();
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
  EXPECT_GE(n, 4);
}

// fuzz/make_sealed_v2_seed.py built a format-2 file from docs/sealed-format.md alone (its own HKDF, MAC and
// AES-GCM): this reader authenticates and decrypts it with the model key and with a range key set, so the
// documented key schedule is the implemented one.
TEST(SealedFormat, FormatTwoSeedFromTheSpecDecrypts) {
  auto bytes = read_file(fs::path(VEIL_SOURCE_DIR) / "fuzz/corpus/sealed_header/v2_four_parts");
  ASSERT_TRUE(bytes.ok());
  Bytes plain(11364);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>((i * 7 + 3) & 0xFF);
  SecretBytes key(32);
  for (size_t i = 0; i < 32; ++i) key.data()[i] = static_cast<uint8_t>(i);
  auto r = SealedReader::open_memory(*bytes, "v2_four_parts");
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->header().format_version, kFormatVersion2);
  EXPECT_EQ(r->header().chunk_parts, (std::vector<uint32_t>{kPartRest, kPartInput, 0, 1, kPartOutput}));
  ASSERT_TRUE(r->authenticate(key).ok());
  Bytes out(plain.size());
  ASSERT_TRUE(r->decrypt(r->chunks_for(std::nullopt), out.data(), 1).ok());
  EXPECT_EQ(out, plain);
  auto spec = range_spec_for(r->header(), {1, 1});
  ASSERT_TRUE(spec.ok());
  auto set = RangeKeySet::derive(key, "synthetic-seed", 3, *spec);
  ASSERT_TRUE(set.ok());
  auto r2 = SealedReader::open_memory(*bytes, "v2_four_parts");
  ASSERT_TRUE(r2->authenticate(*set).ok());
  Bytes part(plain.size());
  ASSERT_TRUE(r2->decrypt({0, 3, 4}, part.data(), 1).ok());  // rest, layer 1, output
  EXPECT_EQ(0, std::memcmp(part.data() + 9216, plain.data() + 9216, 2148));
  auto refused = r2->decrypt({2}, part.data(), 1);  // layer 0
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("chunk 2 belongs to layer 0"), std::string::npos) << refused.error().message();
}

}  // namespace
}  // namespace veil::sealed
