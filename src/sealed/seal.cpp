// Sealing: GGUF -> .vsm; key files; the header description for `veil model info`.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "sealed/format.h"

namespace veil::sealed {

SecretBytes generate_model_key() {
  SecretBytes key(kModelKeySize);
  crypto::random_bytes(key.span());
  return key;
}

Status write_key_file(const std::filesystem::path& path, const SecretBytes& key) {
  if (key.size() != kModelKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "key file {}: a model key is {} bytes, not {}", path.string(),
                      kModelKeySize, key.size());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  SecretBytes text(kModelKeySize * 2 + 1);
  for (size_t i = 0; i < kModelKeySize; ++i) {
    text.data()[2 * i] = static_cast<uint8_t>(kHex[key.data()[i] >> 4]);
    text.data()[2 * i + 1] = static_cast<uint8_t>(kHex[key.data()[i] & 15]);
  }
  text.data()[kModelKeySize * 2] = '\n';
  return write_file_atomic(path, text.view(), 0600);
}

Result<SecretBytes> read_key_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error(ErrorCode::kNotFound, "key file {}: cannot stat: {}", path.string(), std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return make_error(ErrorCode::kSecurity,
                      "key file {}: permissions {:o} let other users read it; run chmod 600 {}", path.string(),
                      st.st_mode & 0777, path.string());
  }
  auto raw = read_file(path, 4096);
  if (!raw.ok()) return std::move(raw).error().wrap("key file");
  SecretBytes text{ByteView(*raw)};
  secure_zero(raw->data(), raw->size());
  size_t n = text.size();
  while (n > 0 && (text.data()[n - 1] == '\n' || text.data()[n - 1] == '\r' || text.data()[n - 1] == ' ')) --n;
  if (n != kModelKeySize * 2) {
    return make_error(ErrorCode::kCorrupt, "key file {}: expected {} hex characters, found {}", path.string(),
                      kModelKeySize * 2, n);
  }
  SecretBytes key(kModelKeySize);
  for (size_t i = 0; i < n; ++i) {
    uint8_t c = text.data()[i];
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (v < 0) {
      return make_error(ErrorCode::kCorrupt, "key file {}: byte offset {}: not a hex character", path.string(), i);
    }
    key.data()[i / 2] = static_cast<uint8_t>(key.data()[i / 2] | (i % 2 == 0 ? v << 4 : v));
  }
  return key;
}

Result<Bytes> seal_bytes(ByteView plaintext, const std::vector<TensorSpan>& tensors, const SecretBytes& key,
                         const SealOptions& options) {
  using namespace detail;
  if (key.size() != kModelKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "seal: the model key must be {} bytes", kModelKeySize);
  }
  if (!valid_model_id(options.model_id)) {
    return make_error(ErrorCode::kInvalidArgument, "seal: model id '{}' must be 1..128 characters of [A-Za-z0-9._:/+-]",
                      options.model_id);
  }
  if (!valid_label(options.version_label)) {
    return make_error(ErrorCode::kInvalidArgument, "seal: version label must be 0..128 printable ASCII characters");
  }
  if (options.chunk_size < kMinChunkSize || options.chunk_size > kMaxChunkSize) {
    return make_error(ErrorCode::kInvalidArgument, "seal: chunk size {} is outside {}..{}", options.chunk_size,
                      kMinChunkSize, kMaxChunkSize);
  }
  if (plaintext.empty()) return make_error(ErrorCode::kInvalidArgument, "seal: the model is empty");
  if (options.format_version != kFormatVersion1 && options.format_version != kFormatVersion2) {
    return make_error(ErrorCode::kInvalidArgument, "seal: format version {} is not 1 or 2", options.format_version);
  }

  Header h;
  h.format_version = options.format_version;
  h.suite = options.suite;
  h.chunk_size = options.chunk_size;
  h.plaintext_size = plaintext.size();
  h.model_version = options.model_version;
  crypto::random_bytes(h.file_salt);
  h.plaintext_sha256 = crypto::sha256(plaintext);
  h.key_id = key_id_for(key.view());
  h.model_id = options.model_id;
  h.version_label = options.version_label;

  // Tensors, and chunk boundaries at every tensor start.
  std::set<uint64_t> starts{0};
  std::set<uint32_t> layers;
  std::set<std::string, std::less<>> names;
  for (const TensorSpan& t : tensors) {
    if (t.offset > plaintext.size() || t.size > plaintext.size() - t.offset) {
      return make_error(ErrorCode::kInvalidArgument, "seal: tensor '{}' lies outside the model", t.name);
    }
    if (t.name.empty() || t.name.size() > kMaxNameLength || !names.insert(t.name).second) {
      return make_error(ErrorCode::kInvalidArgument, "seal: tensor name '{}' is empty, too long or repeated", t.name);
    }
    TensorEntry e;
    e.name = t.name;
    e.offset = t.offset;
    e.size = t.size;
    e.layer = layer_of(t.name);
    e.sha256 = crypto::sha256(plaintext.subspan(t.offset, t.size));
    if (e.layer != kNoLayer) layers.insert(e.layer);
    if (t.offset < plaintext.size()) starts.insert(t.offset);
    h.tensors.push_back(std::move(e));
  }
  if (h.tensors.size() > kMaxTensors) return make_error(ErrorCode::kInvalidArgument, "seal: too many tensors");
  for (uint32_t l : layers) h.layers.push_back({l, layer_digest(h.tensors, l)});
  std::vector<uint64_t> seg(starts.begin(), starts.end());
  seg.push_back(plaintext.size());
  uint64_t pos = 0;
  for (size_t i = 0; i + 1 < seg.size(); ++i) {
    for (uint64_t p = seg[i]; p < seg[i + 1];) {
      uint64_t n = std::min<uint64_t>(options.chunk_size, seg[i + 1] - p);
      h.chunk_offsets.push_back(pos);
      h.chunk_sizes.push_back(static_cast<uint32_t>(n));
      pos += n;
      p += n;
    }
  }
  if (h.chunk_sizes.size() > kMaxChunks) return make_error(ErrorCode::kInvalidArgument, "seal: too many chunks");
  if (h.format_version == kFormatVersion2) {
    if (auto bad = assign_chunk_parts(h)) {
      return make_error(ErrorCode::kInvalidArgument, "seal: tensor '{}': {}", h.tensors[bad->tensor].name, bad->why);
    }
  }

  h.header_size = static_cast<uint32_t>(encode_header_body(h).size() + kTagSize);
  if (h.header_size > kMaxHeaderSize) return make_error(ErrorCode::kInvalidArgument, "seal: header too large");
  Bytes out = encode_header_body(h);
  FileKeys keys = file_keys_from_model_key(h, key.view());
  Bytes tag = crypto::hmac(crypto::HashAlg::kSha256, keys.header_mac.view(), out);
  out.insert(out.end(), tag.begin(), tag.end());
  h.header_hash = crypto::sha256(out);

  out.resize(h.sealed_size());
  std::optional<crypto::Aead> aead;
  uint32_t aead_part = 0;
  uint8_t nonce[crypto::kAeadNonceSize];
  uint8_t aad[kAadSize];
  for (uint64_t i = 0; i < h.chunk_count(); ++i) {
    uint32_t part = h.format_version == kFormatVersion1 ? kPartRest : h.chunk_parts[i];
    if (!aead || part != aead_part) {  // chunks of one part are contiguous: one context per run
      VEIL_ASSIGN_OR_RETURN(crypto::Aead a, crypto::Aead::create(h.suite, keys.chunk.at(part).view()));
      aead.emplace(std::move(a));
      aead_part = part;
    }
    chunk_nonce(i, nonce);
    chunk_aad(h.header_hash, i, i + 1 == h.chunk_count(), aad);
    VEIL_TRY(aead->seal_into({nonce, sizeof nonce}, {aad, sizeof aad},
                             plaintext.subspan(h.chunk_offsets[i], h.chunk_sizes[i]),
                             out.data() + h.chunk_file_offset(i)));
  }
  return out;
}

Result<Bytes> seal_gguf(const gguf::File& file, const SecretBytes& key, const SealOptions& options) {
  std::vector<TensorSpan> spans;
  spans.reserve(file.tensors().size());
  for (const gguf::TensorInfo& t : file.tensors()) {
    spans.push_back({t.name, static_cast<uint64_t>(t.data - file.bytes().data()), t.n_bytes});
  }
  return seal_bytes(file.bytes(), spans, key, options);
}

Status seal_file(const std::filesystem::path& gguf_path, const std::filesystem::path& out_path,
                 const SecretBytes& key, const SealOptions& options) {
  auto file = gguf::File::open(gguf_path);
  if (!file.ok()) return std::move(file).error().wrap("seal: reading the model");
  VEIL_ASSIGN_OR_RETURN(Bytes sealed, seal_gguf(*file, key, options));
  Status st = write_file_atomic(out_path, sealed, 0644);
  if (!st.ok()) return std::move(st).error().wrap("seal: writing the sealed model");
  return ok_status();
}

bool is_sealed_model(const std::filesystem::path& path) {
  auto f = MappedFile::open(path);
  if (!f.ok() || f->size() < detail::kMagic.size()) return false;
  return as_chars(f->view().subspan(0, detail::kMagic.size())) == detail::kMagic;
}

Result<std::string> describe_sealed_model(const std::filesystem::path& path, bool json) {
  VEIL_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  auto parsed = parse_header(f.view());
  if (!parsed.ok()) return std::move(parsed).error().wrap(fmt::format("sealed model {}", path.string()));
  const Header& h = *parsed;
  bool complete = f.size() == h.sealed_size();
  uint64_t n_global = 0;
  for (const TensorEntry& t : h.tensors) n_global += t.layer == kNoLayer ? 1 : 0;
  if (json) {
    nlohmann::ordered_json j;
    j["format"] = "veil-sealed-model";
    j["format_version"] = h.format_version;
    j["key_schedule"] = h.format_version == kFormatVersion1 ? "one key per file" : "one key per part";
    j["model_id"] = h.model_id;
    j["model_version"] = h.model_version;
    j["version_label"] = h.version_label;
    j["cipher_suite"] = crypto::aead_suite_name(h.suite);
    j["key_id"] = to_hex(h.key_id);
    j["plaintext_size"] = h.plaintext_size;
    j["plaintext_sha256"] = to_hex(h.plaintext_sha256);
    j["sealed_size"] = h.sealed_size();
    j["file_size"] = f.size();
    j["complete"] = complete;
    j["chunk_size"] = h.chunk_size;
    j["chunk_count"] = h.chunk_count();
    j["header_size"] = h.header_size;
    j["header_sha256"] = to_hex(h.header_hash);
    j["header_authenticated"] = false;  // needs the key
    j["layer_count"] = h.layers.size();
    j["tensor_count"] = h.tensors.size();
    auto& layers = j["layers"] = nlohmann::ordered_json::array();
    for (const LayerEntry& l : h.layers) layers.push_back({{"layer", l.layer}, {"digest", to_hex(l.digest)}});
    auto& tensors = j["tensors"] = nlohmann::ordered_json::array();
    for (const TensorEntry& t : h.tensors) {
      nlohmann::ordered_json e;
      e["name"] = t.name;
      e["offset"] = t.offset;
      e["size"] = t.size;
      if (t.layer == kNoLayer) e["layer"] = nullptr; else e["layer"] = t.layer;
      e["sha256"] = to_hex(t.sha256);
      tensors.push_back(std::move(e));
    }
    return j.dump(2) + "\n";
  }
  std::string s;
  s += fmt::format("file:              {}\n", path.string());
  s += fmt::format("format:            Veil sealed model v{} ({})\n", h.format_version,
                   h.format_version == kFormatVersion1 ? "one key per file"
                                                       : "one key per layer, input, output and rest");
  s += fmt::format("model id:          {}\n", h.model_id);
  s += fmt::format("model version:     {}{}\n", h.model_version,
                   h.version_label.empty() ? "" : fmt::format(" ({})", h.version_label));
  s += fmt::format("cipher suite:      {}\n", crypto::aead_suite_name(h.suite));
  s += fmt::format("key id:            {}\n", to_hex(h.key_id));
  s += fmt::format("plaintext:         {} bytes, sha256 {}\n", h.plaintext_size, to_hex(h.plaintext_sha256));
  s += fmt::format("chunks:            {} (at most {} bytes each)\n", h.chunk_count(), h.chunk_size);
  s += fmt::format("tensors:           {} ({} in {} layers, {} global)\n", h.tensors.size(),
                   h.tensors.size() - n_global, h.layers.size(), n_global);
  s += fmt::format("sealed size:       {} bytes{}\n", h.sealed_size(),
                   complete ? "" : fmt::format(" (file has {}: incomplete)", f.size()));
  s += "header:            structure valid; authenticity is checked when loading with the key\n";
  return s;
}

}  // namespace veil::sealed
