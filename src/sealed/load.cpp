// Loading: authenticate the header, decrypt and verify chunks into locked anonymous memory.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "sealed/format.h"

namespace veil::sealed {
namespace {

size_t page_size() {
  static const size_t p = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}
uint64_t page_down(uint64_t v) { return v / page_size() * page_size(); }
uint64_t page_up(uint64_t v) { return (v + page_size() - 1) / page_size() * page_size(); }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

// ---- PlaintextBuffer ----

Result<std::unique_ptr<PlaintextBuffer>> PlaintextBuffer::allocate(size_t size) {
  size_t mapped = page_up(std::max<size_t>(size, 1));
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return make_error(ErrorCode::kResourceExhausted, "cannot allocate {} bytes for a decrypted model: {}", size,
                      std::strerror(errno));
  }
#ifdef MADV_DONTDUMP
  ::madvise(p, mapped, MADV_DONTDUMP);
#endif
#ifdef MADV_HUGEPAGE
  ::madvise(p, mapped, MADV_HUGEPAGE);  // fewer page faults while decrypting (advice only)
#endif
  return std::unique_ptr<PlaintextBuffer>(new PlaintextBuffer(static_cast<uint8_t*>(p), size, mapped));
}

void PlaintextBuffer::finalize(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  // Page-rounded loaded ranges, merged.
  std::vector<std::pair<uint64_t, uint64_t>> pages;
  for (auto [b, e] : ranges) {
    if (b >= e) continue;
    uint64_t pb = page_down(b), pe = std::min<uint64_t>(page_up(e), mapped_);
    if (!pages.empty() && pb <= pages.back().second) {
      pages.back().second = std::max(pages.back().second, pe);
    } else {
      pages.emplace_back(pb, pe);
    }
  }
  loaded_ = pages;
  finalized_ = true;
  locked_ = true;
  for (auto [b, e] : pages) {
    if (::mlock(data_ + b, e - b) != 0) locked_ = false;
  }
  if (!locked_) {
    for (auto [b, e] : pages) ::munlock(data_ + b, e - b);
    spdlog::debug("sealed: mlock of {} bytes refused (RLIMIT_MEMLOCK); plaintext may be swapped", size_);
  }
  // Read-only where loaded, inaccessible elsewhere: a layer-range load cannot silently read zeros.
  ::mprotect(data_, mapped_, PROT_NONE);
  for (auto [b, e] : pages) ::mprotect(data_ + b, e - b, PROT_READ);
}

PlaintextBuffer::~PlaintextBuffer() {
  if (data_ == nullptr) return;
  if (!finalized_) {
    // Never finalized (a failed load): the whole mapping is still writable.
    secure_zero(data_, mapped_);
  } else {
    for (auto [b, e] : loaded_) {
      ::mprotect(data_ + b, e - b, PROT_READ | PROT_WRITE);
      secure_zero(data_ + b, e - b);
      if (locked_) ::munlock(data_ + b, e - b);
    }
  }
  ::munmap(data_, mapped_);
}

// ---- SealedReader ----

Result<SealedReader> SealedReader::open(const std::filesystem::path& path) {
  SealedReader r;
  VEIL_ASSIGN_OR_RETURN(r.file_, MappedFile::open(path));
  r.data_ = r.file_.view();
  r.name_ = path.string();
  if (r.file_.size() > 0) {  // read ahead: the body is read once, front to back
    ::madvise(const_cast<uint8_t*>(r.file_.data()), r.file_.size(), MADV_SEQUENTIAL);
    ::madvise(const_cast<uint8_t*>(r.file_.data()), r.file_.size(), MADV_WILLNEED);
  }
  return from_view(std::move(r));
}

Result<SealedReader> SealedReader::open_memory(ByteView data, std::string name) {
  SealedReader r;
  r.data_ = data;
  r.name_ = std::move(name);
  return from_view(std::move(r));
}

Result<SealedReader> SealedReader::from_view(SealedReader r) {
  const std::string& path = r.name_;
  auto h = parse_header(r.data_);
  if (!h.ok()) return std::move(h).error().wrap(fmt::format("sealed model {}", path));
  r.header_ = std::move(*h);
  const Header& hd = r.header_;
  uint64_t expected = hd.sealed_size();
  if (r.data_.size() < expected) {
    uint64_t have = r.data_.size();
    uint64_t i = 0;
    while (i + 1 < hd.chunk_count() && hd.chunk_file_offset(i + 1) <= have) ++i;
    return make_error(ErrorCode::kCorrupt,
                      "sealed model {}: truncated: chunk {} of {} ends at byte {} but the file ends at byte {}",
                      path, i, hd.chunk_count(), hd.chunk_file_offset(i) + hd.chunk_sizes[i] + 16, have);
  }
  if (r.data_.size() > expected) {
    return make_error(ErrorCode::kCorrupt,
                      "sealed model {}: {} unexpected bytes after the final chunk {} (byte offset {})", path,
                      r.data_.size() - expected, hd.chunk_count() - 1, expected);
  }
  return r;
}

Status SealedReader::authenticate(const SecretBytes& key) {
  const std::string& p = name_;
  if (key.size() != kModelKeySize) {
    return make_error(ErrorCode::kInvalidArgument, "sealed model {}: a model key is {} bytes, not {}", p,
                      kModelKeySize, key.size());
  }
  VEIL_TRY(check_key_id(key_id_for(key.view())));
  detail::FileKeys keys = detail::file_keys_from_model_key(header_, key.view());
  VEIL_TRY(check_header_tag(keys.header_mac));
  chunk_keys_ = std::move(keys.chunk);
  key_holder_ = "the model key";
  authenticated_ = true;
  return ok_status();
}

Status SealedReader::authenticate(const RangeKeySet& keys) {
  const std::string& p = name_;
  if (header_.format_version == kFormatVersion1) {
    return make_error(ErrorCode::kUnsupported,
                      "sealed model {}: field 'format_version' at byte offset 8: format 1 has one key for the whole "
                      "file, so a range key set cannot open it (re-seal it: veil seal writes format 2)",
                      p);
  }
  if (keys.model_id() != header_.model_id || keys.model_version() != header_.model_version) {
    return make_error(ErrorCode::kSecurity,
                      "sealed model {}: field 'model_id': the range key set is for model '{}' version {}, the file "
                      "holds '{}' version {}",
                      p, keys.model_id(), keys.model_version(), header_.model_id, header_.model_version);
  }
  if (!keys.holds(kPartRest)) {
    return make_error(ErrorCode::kInvalidArgument, "sealed model {}: the range key set is empty", p);
  }
  VEIL_TRY(check_key_id(keys.key_id()));
  VEIL_TRY(check_header_tag(detail::derive_v2_header_mac_key(keys.part_key(kPartRest), header_.file_salt)));
  chunk_keys_.clear();
  for (uint32_t part : header_.chunk_parts) {
    if (chunk_keys_.count(part) != 0 || !keys.holds(part)) continue;
    chunk_keys_.emplace(part, detail::derive_part_chunk_key(keys.part_key(part), header_.file_salt));
  }
  key_holder_ = fmt::format("the range key set ({})", keys.describe());
  authenticated_ = true;
  return ok_status();
}

Status SealedReader::check_key_id(const std::array<uint8_t, 16>& id) const {
  if (!ct_equal(id, header_.key_id)) {
    return make_error(ErrorCode::kSecurity,
                      "sealed model {}: field 'key_id' at byte offset 104: wrong key (the key's id is not the "
                      "header's key id {})",
                      name_, to_hex(header_.key_id));
  }
  return ok_status();
}

Status SealedReader::check_header_tag(const SecretBytes& mac_key) const {
  size_t body = header_.header_size - detail::kTagSize;
  Bytes tag = crypto::hmac(crypto::HashAlg::kSha256, mac_key.view(), data_.subspan(0, body));
  if (!ct_equal(tag, data_.subspan(body, detail::kTagSize))) {
    return make_error(ErrorCode::kSecurity,
                      "sealed model {}: field 'header_tag' at byte offset {}: header authentication failed (a header "
                      "field in bytes 0..{} was altered)",
                      name_, body, body);
  }
  return ok_status();
}

uint32_t SealedReader::part_of_chunk(uint64_t i) const {
  return header_.format_version == kFormatVersion1 ? kPartRest : header_.chunk_parts[i];
}

Status SealedReader::decrypt(const std::vector<uint64_t>& chunks, uint8_t* out, unsigned threads) const {
  if (!authenticated_) return make_error(ErrorCode::kInternal, "sealed: decrypt before authenticate");
  const Header& h = header_;
  if (chunks.empty()) return ok_status();
  uint64_t bytes = 0;
  for (uint64_t c : chunks) {
    if (c >= h.chunk_count()) return make_error(ErrorCode::kInvalidArgument, "sealed: chunk {} does not exist", c);
    if (chunk_keys_.count(part_of_chunk(c)) == 0) {  // fail closed before decrypting anything
      return make_error(ErrorCode::kSecurity, "sealed model {}: chunk {} belongs to {}, whose key {} does not hold",
                        name_, c, part_name(part_of_chunk(c)), key_holder_);
    }
    bytes += h.chunk_sizes[c];
  }
  if (threads == 0) threads = std::min(2u, std::max(1u, std::thread::hardware_concurrency()));
  if (bytes < (8u << 20) || chunks.size() < 2) threads = 1;
  threads = static_cast<unsigned>(std::min<size_t>(threads, chunks.size()));

  // Each worker takes a contiguous slice and stops at its first failure; the lowest failing chunk
  // overall is reported, so the error does not depend on scheduling.
  std::vector<uint64_t> failed(threads, UINT64_MAX);
  std::vector<std::string> setup_error(threads);
  auto work = [&](unsigned w, size_t begin, size_t end) {
    std::optional<crypto::Aead> aead;
    uint32_t aead_part = 0;
    uint8_t nonce[crypto::kAeadNonceSize];
    uint8_t aad[detail::kAadSize];
    for (size_t k = begin; k < end; ++k) {
      uint64_t i = chunks[k];
      if (!aead || part_of_chunk(i) != aead_part) {  // a part's chunks are contiguous: one context per run
        aead_part = part_of_chunk(i);
        auto a = crypto::Aead::create(h.suite, chunk_keys_.at(aead_part).view());
        if (!a.ok()) {
          setup_error[w] = a.error().message();
          return;
        }
        aead.emplace(std::move(*a));
      }
      detail::chunk_nonce(i, nonce);
      detail::chunk_aad(h.header_hash, i, i + 1 == h.chunk_count(), aad);
      ByteView sealed = data_.subspan(h.chunk_file_offset(i), h.chunk_sizes[i] + crypto::kAeadTagSize);
      if (!aead->open_into({nonce, sizeof nonce}, {aad, sizeof aad}, sealed, out + h.chunk_offsets[i]).ok()) {
        failed[w] = i;
        return;
      }
    }
  };
  // Split by bytes so both workers get similar work.
  std::vector<size_t> bounds{0};
  uint64_t acc = 0, per = (bytes + threads - 1) / threads;
  for (size_t k = 0; k < chunks.size() && bounds.size() < threads; ++k) {
    acc += h.chunk_sizes[chunks[k]];
    if (acc >= per * bounds.size()) bounds.push_back(k + 1);
  }
  while (bounds.size() < threads + 1) bounds.push_back(chunks.size());
  bounds.back() = chunks.size();
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < threads; ++w) pool.emplace_back(work, w, bounds[w], bounds[w + 1]);
  work(0, bounds[0], bounds[1]);
  for (auto& t : pool) t.join();
  for (unsigned w = 0; w < threads; ++w) {
    if (!setup_error[w].empty()) return make_error(ErrorCode::kInternal, "sealed: {}", setup_error[w]);
  }
  uint64_t bad = *std::min_element(failed.begin(), failed.end());
  if (bad != UINT64_MAX) {
    uint64_t off = h.chunk_file_offset(bad);
    return make_error(ErrorCode::kSecurity,
                      "sealed model {}: chunk {} (file bytes {}..{}): authentication failed (the chunk was altered, "
                      "moved, or comes from another file or version)",
                      name_, bad, off, off + h.chunk_sizes[bad] + crypto::kAeadTagSize);
  }
  return ok_status();
}

std::vector<size_t> SealedReader::tensors_for(const std::optional<LayerRange>& layers) const {
  const Header& h = header_;
  std::vector<size_t> out;
  uint32_t last_layer = h.layers.empty() ? 0 : h.layers.back().layer;
  bool tied = true;
  for (const TensorEntry& t : h.tensors) tied = tied && t.name != "output.weight";
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorEntry& t = h.tensors[i];
    bool need = true;
    if (layers) {
      bool first_stage = layers->first == 0, last_stage = layers->last >= last_layer;
      if (t.layer != kNoLayer) {
        need = t.layer >= layers->first && t.layer <= layers->last;
      } else if (starts_with(t.name, "token_embd.") || starts_with(t.name, "pos_embd.")) {
        need = first_stage || (last_stage && tied && starts_with(t.name, "token_embd."));
      } else if (starts_with(t.name, "output.") || starts_with(t.name, "output_norm.")) {
        need = last_stage;
      }
    }
    if (need) out.push_back(i);
  }
  return out;
}

std::vector<size_t> SealedReader::metadata_tensors() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < header_.tensors.size(); ++i) {
    if (part_of_tensor(header_.tensors[i].name) == kPartRest) out.push_back(i);
  }
  return out;
}

std::vector<uint64_t> SealedReader::metadata_chunks() const { return chunks_holding(metadata_tensors()); }

std::vector<uint64_t> SealedReader::chunks_for(const std::optional<LayerRange>& layers) const {
  const Header& h = header_;
  if (!layers || h.tensors.empty()) {
    std::vector<uint64_t> all(h.chunk_count());
    for (uint64_t i = 0; i < all.size(); ++i) all[i] = i;
    return all;
  }
  return chunks_holding(tensors_for(layers));
}

std::vector<uint64_t> SealedReader::chunks_holding(const std::vector<size_t>& tensors) const {
  const Header& h = header_;
  std::vector<bool> need(h.chunk_count(), false);
  auto mark = [&](uint64_t b, uint64_t e) {  // [b, e)
    if (b >= e) return;
    auto first = std::upper_bound(h.chunk_offsets.begin(), h.chunk_offsets.end(), b) - h.chunk_offsets.begin() - 1;
    for (uint64_t i = static_cast<uint64_t>(first); i < h.chunk_count() && h.chunk_offsets[i] < e; ++i) need[i] = true;
  };
  uint64_t first_tensor = h.plaintext_size;
  for (const TensorEntry& t : h.tensors) first_tensor = std::min(first_tensor, t.offset);
  mark(0, first_tensor);  // GGUF header, metadata, tokenizer
  for (size_t i : tensors) mark(h.tensors[i].offset, h.tensors[i].offset + h.tensors[i].size);
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < need.size(); ++i) {
    if (need[i]) out.push_back(i);
  }
  return out;
}

bool LoadedModel::has_tensor(std::string_view name) const {
  return std::find(loaded_tensors.begin(), loaded_tensors.end(), name) != loaded_tensors.end();
}

namespace {

// Shared by both load_sealed_model overloads: `authenticate` is the only step that differs.
Result<LoadedModel> load_with(const std::filesystem::path& path, const LoadOptions& options,
                              const std::function<Status(SealedReader&)>& authenticate) {
  VEIL_ASSIGN_OR_RETURN(SealedReader reader, SealedReader::open(path));
  const Header& h = reader.header();
  const std::string p = path.string();
  if (!options.expected_model_id.empty() && options.expected_model_id != h.model_id) {
    return make_error(ErrorCode::kSecurity, "sealed model {}: field 'model_id': the file holds '{}', expected '{}'", p,
                      h.model_id, options.expected_model_id);
  }
  if (options.expected_version && *options.expected_version != h.model_version) {
    return make_error(ErrorCode::kSecurity, "sealed model {}: field 'model_version': the file holds version {}, "
                      "expected {}", p, h.model_version, *options.expected_version);
  }
  if (options.layers && options.metadata_only) {
    return make_error(ErrorCode::kInvalidArgument, "sealed model {}: a load is either a layer range or metadata only, "
                      "not both", p);
  }
  if (options.layers) {
    uint32_t last = h.layers.empty() ? 0 : h.layers.back().layer;
    if (h.layers.empty() || options.layers->first > options.layers->last || options.layers->last > last) {
      return make_error(ErrorCode::kInvalidArgument, "sealed model {}: layer range {}..{} is not within the model's "
                        "layers 0..{}", p, options.layers->first, options.layers->last, last);
    }
  }
  VEIL_TRY(authenticate(reader));
  std::vector<uint64_t> chunks = options.metadata_only ? reader.metadata_chunks() : reader.chunks_for(options.layers);
  VEIL_ASSIGN_OR_RETURN(std::unique_ptr<PlaintextBuffer> buf, PlaintextBuffer::allocate(h.plaintext_size));
  VEIL_TRY(reader.decrypt(chunks, buf->data(), options.threads));

  LoadedModel m;
  m.complete = chunks.size() == h.chunk_count();
  std::vector<size_t> tensors = options.metadata_only ? reader.metadata_tensors() : reader.tensors_for(options.layers);
  if (options.verify_plaintext_hashes) {
    for (size_t i : tensors) {
      const TensorEntry& t = h.tensors[i];
      if (crypto::sha256({buf->data() + t.offset, t.size}) != t.sha256) {
        return make_error(ErrorCode::kSecurity, "sealed model {}: tensor '{}': SHA-256 differs from the header's "
                          "tensor hash", p, t.name);
      }
    }
    if (m.complete && crypto::sha256(buf->view()) != h.plaintext_sha256) {
      return make_error(ErrorCode::kSecurity, "sealed model {}: field 'plaintext_sha256': the decrypted model's "
                        "SHA-256 differs", p);
    }
  }
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (uint64_t c : chunks) ranges.emplace_back(h.chunk_offsets[c], h.chunk_offsets[c] + h.chunk_sizes[c]);
  buf->finalize(ranges);
  for (size_t i : tensors) m.loaded_tensors.push_back(h.tensors[i].name);

  std::shared_ptr<PlaintextBuffer> shared(std::move(buf));
  ByteView view = shared->view();
  auto file = gguf::File::from_memory(std::shared_ptr<const void>(shared, shared.get()), view,
                                      path.filename().string());
  if (!file.ok()) return std::move(file).error().wrap(fmt::format("sealed model {}: decrypted GGUF", p));
  m.header = h;
  m.buffer = std::move(shared);
  m.gguf = std::move(*file);
  return m;
}

}  // namespace

Result<LoadedModel> load_sealed_model(const std::filesystem::path& path, const SecretBytes& key,
                                      const LoadOptions& options) {
  return load_with(path, options, [&](SealedReader& r) { return r.authenticate(key); });
}

Result<LoadedModel> load_sealed_model(const std::filesystem::path& path, const RangeKeySet& keys,
                                      const LoadOptions& options) {
  if (!options.layers && !options.metadata_only) {
    return make_error(ErrorCode::kInvalidArgument,
                      "sealed model {}: a range key set ({}) cannot load the whole model: give the layer range (or "
                      "load the metadata only)",
                      path.string(), keys.describe());
  }
  return load_with(path, options, [&](SealedReader& r) { return r.authenticate(keys); });
}

}  // namespace veil::sealed
