// Sealed-model header: encoding, structural parsing and the key schedule.
#include "sealed/format.h"

#include <algorithm>
#include <set>

namespace veil::sealed {
namespace detail {
namespace {

void put_u16(Bytes& b, uint16_t v) { for (int i = 0; i < 2; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i))); }
void put_u32(Bytes& b, uint32_t v) { for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i))); }
void put_u64(Bytes& b, uint64_t v) { for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i))); }
void put_raw(Bytes& b, ByteView v) { b.insert(b.end(), v.begin(), v.end()); }
void put_str16(Bytes& b, std::string_view s) {
  put_u16(b, static_cast<uint16_t>(s.size()));
  put_raw(b, as_bytes(s));
}

// Reads little-endian fields from the header, turning every out-of-bounds read into an error that
// names the field and its byte offset.
class FieldReader {
 public:
  FieldReader(ByteView data, size_t limit) : data_(data), limit_(limit) {}
  size_t pos() const { return pos_; }

  Error corrupt(std::string_view field, size_t at, std::string_view why) const {
    return make_error(ErrorCode::kCorrupt, "sealed header: field '{}' at byte offset {}: {}", field, at, why);
  }
  Status need(std::string_view field, size_t n) const {
    if (n > limit_ - pos_) {
      return corrupt(field, pos_, fmt::format("needs {} bytes but the header ends at byte {}", n, limit_));
    }
    return ok_status();
  }
  template <typename T>
  Result<T> uint(std::string_view field) {
    VEIL_TRY(need(field, sizeof(T)));
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(data_[pos_ + i]) << (8 * i));
    pos_ += sizeof(T);
    return v;
  }
  Result<ByteView> raw(std::string_view field, size_t n) {
    VEIL_TRY(need(field, n));
    ByteView v = data_.subspan(pos_, n);
    pos_ += n;
    return v;
  }
  template <size_t N>
  Status fixed(std::string_view field, std::array<uint8_t, N>& out) {
    VEIL_ASSIGN_OR_RETURN(ByteView v, raw(field, N));
    std::copy(v.begin(), v.end(), out.begin());
    return ok_status();
  }

 private:
  ByteView data_;
  size_t limit_;
  size_t pos_ = 0;
};

bool printable(std::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

bool valid_model_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '/' || c == '+' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool valid_label(std::string_view label) { return label.size() <= kMaxIdLength && printable(label); }

uint32_t layer_of(std::string_view name) {
  constexpr std::string_view kPrefix = "blk.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return kNoLayer;
  size_t i = kPrefix.size();
  uint64_t v = 0;
  size_t digits = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 7) {
    v = v * 10 + static_cast<uint64_t>(name[i] - '0');
    ++i;
    ++digits;
  }
  if (digits == 0 || i >= name.size() || name[i] != '.') return kNoLayer;
  return static_cast<uint32_t>(v);
}

Bytes encode_header_body(const Header& h) {
  Bytes b;
  b.reserve(h.header_size);
  put_raw(b, as_bytes(kMagic));
  put_u16(b, h.format_version);
  put_u16(b, static_cast<uint16_t>(h.suite));
  put_u32(b, h.header_size);
  put_u32(b, h.chunk_size);
  put_u32(b, 0);  // flags
  put_u64(b, h.plaintext_size);
  put_u64(b, h.model_version);
  put_raw(b, h.file_salt);
  put_raw(b, h.plaintext_sha256);
  put_raw(b, h.key_id);
  put_str16(b, h.model_id);
  put_str16(b, h.version_label);
  put_u32(b, static_cast<uint32_t>(h.tensors.size()));
  for (const TensorEntry& t : h.tensors) {
    put_str16(b, t.name);
    put_u64(b, t.offset);
    put_u64(b, t.size);
    put_u32(b, t.layer);
    put_raw(b, t.sha256);
  }
  put_u32(b, static_cast<uint32_t>(h.layers.size()));
  for (const LayerEntry& l : h.layers) {
    put_u32(b, l.layer);
    put_raw(b, l.digest);
  }
  put_u32(b, static_cast<uint32_t>(h.chunk_sizes.size()));
  for (uint32_t s : h.chunk_sizes) put_u32(b, s);
  return b;
}

// HKDF-SHA256 with the file salt over `ikm`, expanded under `label` to 32 bytes: every key below except the part
// keys, which are not bound to a file.
static SecretBytes salted_key(ByteView ikm, ByteView file_salt, std::string_view label) {
  SecretBytes prk = crypto::hkdf_extract(crypto::HashAlg::kSha256, file_salt, ikm);
  return crypto::hkdf_expand(crypto::HashAlg::kSha256, prk.view(), as_bytes(label), 32);
}

SecretBytes derive_chunk_key(ByteView model_key, ByteView file_salt) {
  return salted_key(model_key, file_salt, "veil-sealed-v1 chunk key");
}

SecretBytes derive_header_mac_key(ByteView model_key, ByteView file_salt) {
  return salted_key(model_key, file_salt, "veil-sealed-v1 header mac");
}

SecretBytes derive_part_key(ByteView model_key, std::string_view model_id, uint64_t model_version, uint32_t part) {
  SecretBytes prk = crypto::hkdf_extract(crypto::HashAlg::kSha256, as_bytes("veil-sealed-v2 part keys"), model_key);
  Bytes info = to_bytes("veil-sealed-v2 part");
  info.push_back(0);
  put_str16(info, model_id);
  put_u64(info, model_version);
  put_u32(info, part);
  return crypto::hkdf_expand(crypto::HashAlg::kSha256, prk.view(), info, 32);
}

SecretBytes derive_part_chunk_key(ByteView part_key, ByteView file_salt) {
  return salted_key(part_key, file_salt, "veil-sealed-v2 chunk key");
}

SecretBytes derive_v2_header_mac_key(ByteView rest_key, ByteView file_salt) {
  return salted_key(rest_key, file_salt, "veil-sealed-v2 header mac");
}

FileKeys file_keys_from_model_key(const Header& h, ByteView model_key) {
  FileKeys k;
  if (h.format_version == kFormatVersion1) {
    k.header_mac = derive_header_mac_key(model_key, h.file_salt);
    k.chunk.emplace(kPartRest, derive_chunk_key(model_key, h.file_salt));
    return k;
  }
  SecretBytes rest = derive_part_key(model_key, h.model_id, h.model_version, kPartRest);
  k.header_mac = derive_v2_header_mac_key(rest.view(), h.file_salt);
  for (uint32_t part : h.chunk_parts) {
    if (k.chunk.count(part) != 0) continue;
    SecretBytes pk = derive_part_key(model_key, h.model_id, h.model_version, part);
    k.chunk.emplace(part, derive_part_chunk_key(pk.view(), h.file_salt));
  }
  return k;
}

std::optional<PartViolation> assign_chunk_parts(Header& h) {
  // Tensors with bytes, by start offset; a chunk belongs to the last one starting at or before it.
  std::vector<size_t> order;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    if (h.tensors[i].size > 0) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return h.tensors[a].offset < h.tensors[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorEntry& a = h.tensors[order[k - 1]];
    const TensorEntry& b = h.tensors[order[k]];
    if (a.offset == b.offset && part_of_tensor(a.name) != part_of_tensor(b.name)) {
      return PartViolation{order[k], fmt::format("starts at byte {} like '{}', which is in another part", b.offset, a.name)};
    }
  }
  h.chunk_parts.assign(h.chunk_count(), kPartRest);
  size_t t = 0;
  for (uint64_t c = 0; c < h.chunk_count(); ++c) {
    while (t < order.size() && h.tensors[order[t]].offset <= h.chunk_offsets[c]) ++t;
    if (t > 0) h.chunk_parts[c] = part_of_tensor(h.tensors[order[t - 1]].name);
  }
  // run_end[c]: the first chunk after c of another part, so a tensor's chunks are checked in O(log n).
  std::vector<uint64_t> run_end(h.chunk_count());
  for (uint64_t c = h.chunk_count(); c-- > 0;) {
    run_end[c] = c + 1 < h.chunk_count() && h.chunk_parts[c + 1] == h.chunk_parts[c] ? run_end[c + 1] : c + 1;
  }
  for (size_t i : order) {
    const TensorEntry& e = h.tensors[i];
    auto first = static_cast<uint64_t>(
        std::upper_bound(h.chunk_offsets.begin(), h.chunk_offsets.end(), e.offset) - h.chunk_offsets.begin() - 1);
    auto end = static_cast<uint64_t>(
        std::lower_bound(h.chunk_offsets.begin(), h.chunk_offsets.end(), e.offset + e.size) - h.chunk_offsets.begin());
    uint32_t part = part_of_tensor(e.name);
    if (h.chunk_parts[first] != part || run_end[first] < end) {
      uint64_t bad = h.chunk_parts[first] != part ? first : run_end[first];
      return PartViolation{i, fmt::format("its bytes lie in chunk {}, which belongs to {} (chunks must not straddle "
                                          "parts)", bad, part_name(h.chunk_parts[bad]))};
    }
  }
  return std::nullopt;
}

crypto::Sha256Digest layer_digest(const std::vector<TensorEntry>& tensors, uint32_t layer) {
  Bytes buf;
  for (const TensorEntry& t : tensors) {
    if (t.layer != layer) continue;
    put_str16(buf, t.name);
    put_raw(buf, t.sha256);
  }
  return crypto::sha256(buf);
}

void chunk_nonce(uint64_t index, uint8_t out[12]) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(index >> (8 * i));
  out[8] = out[9] = out[10] = out[11] = 0;
}

void chunk_aad(const crypto::Sha256Digest& header_hash, uint64_t index, bool final, uint8_t out[kAadSize]) {
  std::copy(header_hash.begin(), header_hash.end(), out);
  for (int i = 0; i < 8; ++i) out[32 + i] = static_cast<uint8_t>(index >> (8 * i));
  out[40] = final ? 1 : 0;
}

}  // namespace detail

uint32_t part_of_tensor(std::string_view name) {
  uint32_t layer = detail::layer_of(name);
  if (layer != kNoLayer) return layer;
  auto starts = [&](std::string_view p) { return name.substr(0, p.size()) == p; };
  if (starts("token_embd.") || starts("pos_embd.")) return kPartInput;
  if (starts("output.") || starts("output_norm.")) return kPartOutput;
  return kPartRest;
}

std::string part_name(uint32_t part) {
  switch (part) {
    case kPartRest: return "the rest (metadata, tokenizer, other globals)";
    case kPartInput: return "the input globals (token_embd/pos_embd)";
    case kPartOutput: return "the output globals (output/output_norm)";
    default: return fmt::format("layer {}", part);
  }
}

std::array<uint8_t, 16> key_id_for(ByteView model_key) {
  SecretBytes okm = crypto::hkdf(crypto::HashAlg::kSha256, {}, model_key, as_bytes("veil-sealed-v1 key id"), 16);
  std::array<uint8_t, 16> id{};
  std::copy(okm.data(), okm.data() + 16, id.begin());
  return id;
}

Result<Header> parse_header(ByteView file) {
  using namespace detail;
  FieldReader r(file, file.size());
  Header h;
  VEIL_ASSIGN_OR_RETURN(ByteView magic, r.raw("magic", kMagic.size()));
  if (as_chars(magic) != kMagic) return r.corrupt("magic", 0, "not a Veil sealed model (expected \"VEILSMDL\")");
  VEIL_ASSIGN_OR_RETURN(h.format_version, r.uint<uint16_t>("format_version"));
  if (h.format_version != kFormatVersion1 && h.format_version != kFormatVersion2) {
    return make_error(ErrorCode::kUnsupported,
                      "sealed header: field 'format_version' at byte offset 8: version {} is not supported (this "
                      "build reads versions {} and {})",
                      h.format_version, kFormatVersion1, kFormatVersion2);
  }
  VEIL_ASSIGN_OR_RETURN(uint16_t suite, r.uint<uint16_t>("cipher_suite"));
  auto s = crypto::aead_suite_from_id(suite);
  if (!s.ok()) {
    return make_error(ErrorCode::kUnsupported,
                      "sealed header: field 'cipher_suite' at byte offset 10: unknown suite id {}", suite);
  }
  h.suite = *s;
  VEIL_ASSIGN_OR_RETURN(h.header_size, r.uint<uint32_t>("header_size"));
  size_t min_header = kFixedSize + 2 + 1 + 2 + 4 + 4 + 4 + 4 + kTagSize;
  if (h.header_size < min_header || h.header_size > kMaxHeaderSize) {
    return r.corrupt("header_size", 12, fmt::format("{} is outside {}..{}", h.header_size, min_header, kMaxHeaderSize));
  }
  if (h.header_size > file.size()) {
    return r.corrupt("header_size", 12,
                     fmt::format("the header is {} bytes but the file has only {} (truncated)", h.header_size,
                                 file.size()));
  }
  FieldReader hr(file, h.header_size - kTagSize);  // fields must end where the tag begins
  VEIL_TRY(hr.raw("header_size", 16));  // magic..header_size, checked above
  VEIL_ASSIGN_OR_RETURN(h.chunk_size, hr.uint<uint32_t>("chunk_size"));
  if (h.chunk_size < kMinChunkSize || h.chunk_size > kMaxChunkSize) {
    return hr.corrupt("chunk_size", 16, fmt::format("{} is outside {}..{}", h.chunk_size, kMinChunkSize, kMaxChunkSize));
  }
  VEIL_ASSIGN_OR_RETURN(uint32_t flags, hr.uint<uint32_t>("flags"));
  if (flags != 0) return hr.corrupt("flags", 20, fmt::format("reserved flags 0x{:x} must be 0", flags));
  VEIL_ASSIGN_OR_RETURN(h.plaintext_size, hr.uint<uint64_t>("plaintext_size"));
  if (h.plaintext_size == 0 || h.plaintext_size > (uint64_t{1} << 46)) {
    return hr.corrupt("plaintext_size", 24, fmt::format("{} is outside 1..2^46", h.plaintext_size));
  }
  VEIL_ASSIGN_OR_RETURN(h.model_version, hr.uint<uint64_t>("model_version"));
  VEIL_TRY(hr.fixed("file_salt", h.file_salt));
  VEIL_TRY(hr.fixed("plaintext_sha256", h.plaintext_sha256));
  VEIL_TRY(hr.fixed("key_id", h.key_id));

  size_t at = hr.pos();
  VEIL_ASSIGN_OR_RETURN(uint16_t id_len, hr.uint<uint16_t>("model_id.length"));
  VEIL_ASSIGN_OR_RETURN(ByteView id, hr.raw("model_id", id_len));
  h.model_id.assign(as_chars(id));
  if (!valid_model_id(h.model_id)) {
    return hr.corrupt("model_id", at, "must be 1..128 characters of [A-Za-z0-9._:/+-]");
  }
  at = hr.pos();
  VEIL_ASSIGN_OR_RETURN(uint16_t label_len, hr.uint<uint16_t>("version_label.length"));
  VEIL_ASSIGN_OR_RETURN(ByteView label, hr.raw("version_label", label_len));
  h.version_label.assign(as_chars(label));
  if (!valid_label(h.version_label)) return hr.corrupt("version_label", at, "must be 0..128 printable ASCII characters");

  at = hr.pos();
  VEIL_ASSIGN_OR_RETURN(uint32_t n_tensors, hr.uint<uint32_t>("tensor_count"));
  if (n_tensors > kMaxTensors) return hr.corrupt("tensor_count", at, fmt::format("{} exceeds {}", n_tensors, kMaxTensors));
  std::set<std::string, std::less<>> names;
  std::set<uint32_t> tensor_layers;
  std::vector<size_t> tensor_at;  // byte offset of each tensor entry, for format-2 part errors
  h.tensors.reserve(std::min<uint32_t>(n_tensors, 4096));
  for (uint32_t i = 0; i < n_tensors; ++i) {
    TensorEntry t;
    std::string f = fmt::format("tensor[{}]", i);
    at = hr.pos();
    tensor_at.push_back(at);
    VEIL_ASSIGN_OR_RETURN(uint16_t nl, hr.uint<uint16_t>(f + ".name.length"));
    VEIL_ASSIGN_OR_RETURN(ByteView name, hr.raw(f + ".name", nl));
    t.name.assign(as_chars(name));
    if (t.name.empty() || t.name.size() > kMaxNameLength || !printable(t.name)) {
      return hr.corrupt(f + ".name", at, "must be 1..256 printable ASCII characters");
    }
    if (!names.insert(t.name).second) return hr.corrupt(f + ".name", at, fmt::format("duplicate tensor '{}'", t.name));
    at = hr.pos();
    VEIL_ASSIGN_OR_RETURN(t.offset, hr.uint<uint64_t>(f + ".offset"));
    VEIL_ASSIGN_OR_RETURN(t.size, hr.uint<uint64_t>(f + ".size"));
    if (t.offset > h.plaintext_size || t.size > h.plaintext_size - t.offset) {
      return hr.corrupt(f + ".offset", at,
                        fmt::format("tensor '{}' spans {}+{}, beyond plaintext_size {}", t.name, t.offset, t.size,
                                    h.plaintext_size));
    }
    at = hr.pos();
    VEIL_ASSIGN_OR_RETURN(t.layer, hr.uint<uint32_t>(f + ".layer"));
    if (t.layer != layer_of(t.name)) {
      return hr.corrupt(f + ".layer", at, fmt::format("layer {} does not match tensor name '{}'", t.layer, t.name));
    }
    if (t.layer != kNoLayer) tensor_layers.insert(t.layer);
    VEIL_TRY(hr.fixed(f + ".sha256", t.sha256));
    h.tensors.push_back(std::move(t));
  }

  at = hr.pos();
  VEIL_ASSIGN_OR_RETURN(uint32_t n_layers, hr.uint<uint32_t>("layer_count"));
  if (n_layers != tensor_layers.size()) {
    return hr.corrupt("layer_count", at,
                      fmt::format("{} layers listed but the tensors use {}", n_layers, tensor_layers.size()));
  }
  auto expect_layer = tensor_layers.begin();
  for (uint32_t i = 0; i < n_layers; ++i, ++expect_layer) {
    LayerEntry l;
    std::string f = fmt::format("layer[{}]", i);
    at = hr.pos();
    VEIL_ASSIGN_OR_RETURN(l.layer, hr.uint<uint32_t>(f + ".index"));
    if (l.layer != *expect_layer) {
      return hr.corrupt(f + ".index", at, fmt::format("expected layer {}, found {}", *expect_layer, l.layer));
    }
    at = hr.pos();
    VEIL_TRY(hr.fixed(f + ".digest", l.digest));
    if (l.digest != layer_digest(h.tensors, l.layer)) {
      return hr.corrupt(f + ".digest", at, fmt::format("does not match the hashes of layer {}'s tensors", l.layer));
    }
    h.layers.push_back(l);
  }

  at = hr.pos();
  VEIL_ASSIGN_OR_RETURN(uint32_t n_chunks, hr.uint<uint32_t>("chunk_count"));
  uint64_t min_chunks = (h.plaintext_size + h.chunk_size - 1) / h.chunk_size;
  if (n_chunks < min_chunks || n_chunks > kMaxChunks || n_chunks > h.plaintext_size) {
    return hr.corrupt("chunk_count", at,
                      fmt::format("{} chunks cannot hold {} bytes in chunks of at most {}", n_chunks, h.plaintext_size,
                                  h.chunk_size));
  }
  VEIL_TRY(hr.need("chunk_sizes", size_t{n_chunks} * 4));
  h.chunk_sizes.resize(n_chunks);
  h.chunk_offsets.resize(n_chunks);
  uint64_t total = 0;
  for (uint32_t i = 0; i < n_chunks; ++i) {
    at = hr.pos();
    VEIL_ASSIGN_OR_RETURN(uint32_t cs, hr.uint<uint32_t>("chunk_sizes"));
    if (cs == 0 || cs > h.chunk_size) {
      return hr.corrupt(fmt::format("chunk_sizes[{}]", i), at,
                        fmt::format("{} is outside 1..chunk_size ({})", cs, h.chunk_size));
    }
    h.chunk_offsets[i] = total;
    h.chunk_sizes[i] = cs;
    total += cs;
  }
  if (total != h.plaintext_size) {
    return hr.corrupt("chunk_sizes", at,
                      fmt::format("chunks add up to {} bytes, plaintext_size says {}", total, h.plaintext_size));
  }
  if (hr.pos() != h.header_size - kTagSize) {
    return hr.corrupt("header_size", 12,
                      fmt::format("fields end at byte {} but header_size puts the tag at {}", hr.pos(),
                                  h.header_size - kTagSize));
  }
  if (h.format_version == kFormatVersion2) {
    if (auto bad = assign_chunk_parts(h)) {
      return hr.corrupt(fmt::format("tensor[{}]", bad->tensor), tensor_at[bad->tensor],
                        fmt::format("tensor '{}': {}", h.tensors[bad->tensor].name, bad->why));
    }
  }
  h.header_hash = crypto::sha256(file.subspan(0, h.header_size));
  return h;
}

}  // namespace veil::sealed
