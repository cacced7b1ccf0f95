// Model loading (architecture registry, hyper-parameters, tensor binding, repacking) and the batched forward pass.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "engine/arch.h"
#include "engine/ops.h"

namespace veil::engine {

namespace {

const ArchSpec* const kArchitectures[] = {&llama_arch(), &qwen2_arch(), &gpt2_arch()};

const ArchSpec* find_arch(std::string_view name) {
  for (const ArchSpec* a : kArchitectures) {
    if (name == a->name) return a;
  }
  return nullptr;
}

}  // namespace

std::vector<std::string> supported_architectures() {
  std::vector<std::string> out;
  for (const ArchSpec* a : kArchitectures) out.emplace_back(a->name);
  return out;
}

std::string layer_tensor(uint32_t layer, std::string_view name) { return fmt::format("blk.{}.{}", layer, name); }

// ---------------- Binder ----------------

namespace {
kernels::Type kernel_type(gguf::TensorType t) { return static_cast<kernels::Type>(t); }
}  // namespace

Result<Matrix> Binder::matrix(const std::string& name, uint64_t cols, uint64_t rows) const {
  const gguf::TensorInfo* t = f_.find_tensor(name);
  if (!t) return make_error(ErrorCode::kCorrupt, "model {}: tensor '{}' is missing", f_.name(), name);
  if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
    std::string got;
    for (uint64_t d : t->dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
    return make_error(ErrorCode::kCorrupt, "model {}: tensor '{}' has shape [{}], expected [{}, {}]", f_.name(), name,
                      got, cols, rows);
  }
  const kernels::Type kt = kernel_type(t->type);
  if (!kernels::type_supported(kt)) {
    return make_error(ErrorCode::kUnsupported, "model {}: tensor '{}' has type {}, which Veil cannot compute with",
                      f_.name(), name, gguf::type_name(t->type));
  }
  return Matrix{kt, t->data, rows, cols, kernels::row_bytes(kt, cols)};
}

Result<Vec> Binder::vec(const std::string& name, uint64_t n) const {
  const gguf::TensorInfo* t = f_.find_tensor(name);
  if (!t) return make_error(ErrorCode::kCorrupt, "model {}: tensor '{}' is missing", f_.name(), name);
  if (t->n_elements != n || t->dims[0] != n) {
    return make_error(ErrorCode::kCorrupt, "model {}: tensor '{}' has {} elements, expected {}", f_.name(), name,
                      t->n_elements, n);
  }
  if (!kernels::type_supported(kernel_type(t->type))) {
    return make_error(ErrorCode::kUnsupported, "model {}: tensor '{}' has type {}, which Veil cannot compute with",
                      f_.name(), name, gguf::type_name(t->type));
  }
  return kernels::dequantize(kernel_type(t->type), t->data, n);
}

// ---------------- hyper-parameters ----------------

namespace {

Result<uint32_t> read_dim(const gguf::File& f, const std::string& key, uint64_t max) {
  VEIL_ASSIGN_OR_RETURN(uint64_t v, f.get_uint(key));
  if (v == 0 || v > max) {
    return make_error(ErrorCode::kCorrupt, "model {}: metadata '{}' = {} is out of range (1..{})", f.name(), key, v, max);
  }
  return static_cast<uint32_t>(v);
}

Result<uint32_t> read_dim_or(const gguf::File& f, const std::string& key, uint64_t max, uint32_t fallback) {
  if (!f.find(key)) return fallback;
  return read_dim(f, key, max);
}

}  // namespace

Status read_common_hparams(const gguf::File& f, HParams& hp, bool needs_ff) {
  const std::string a = hp.arch + ".";
  VEIL_ASSIGN_OR_RETURN(hp.n_embd, read_dim(f, a + "embedding_length", 1 << 16));
  VEIL_ASSIGN_OR_RETURN(hp.n_layer, read_dim(f, a + "block_count", 1024));
  VEIL_ASSIGN_OR_RETURN(hp.n_head, read_dim(f, a + "attention.head_count", 1024));
  VEIL_ASSIGN_OR_RETURN(hp.n_head_kv, read_dim_or(f, a + "attention.head_count_kv", 1024, hp.n_head));
  if (needs_ff) {
    VEIL_ASSIGN_OR_RETURN(hp.n_ff, read_dim(f, a + "feed_forward_length", 1 << 18));
  }
  VEIL_ASSIGN_OR_RETURN(hp.n_ctx_train, read_dim_or(f, a + "context_length", 1 << 24, 2048));
  if (hp.n_head % hp.n_head_kv != 0) {
    return make_error(ErrorCode::kCorrupt, "model {}: head_count {} is not a multiple of head_count_kv {}", f.name(),
                      hp.n_head, hp.n_head_kv);
  }
  uint32_t default_hd = hp.n_embd / hp.n_head;
  VEIL_ASSIGN_OR_RETURN(hp.head_dim, read_dim_or(f, a + "attention.key_length", 1 << 12, default_hd));
  if (hp.head_dim == 0 || (hp.head_dim == default_hd && hp.n_embd % hp.n_head != 0)) {
    return make_error(ErrorCode::kCorrupt, "model {}: embedding_length {} is not a multiple of head_count {}", f.name(),
                      hp.n_embd, hp.n_head);
  }
  if (f.find(a + "attention.value_length")) {
    VEIL_ASSIGN_OR_RETURN(uint64_t vl, f.get_uint(a + "attention.value_length"));
    if (vl != hp.head_dim) {
      return make_error(ErrorCode::kUnsupported, "model {}: value_length {} differs from key_length {}", f.name(), vl,
                        hp.head_dim);
    }
  }
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb || emb->dims.size() != 2) {
    return make_error(ErrorCode::kCorrupt, "model {}: tensor 'token_embd.weight' is missing or not 2-D", f.name());
  }
  if (emb->dims[1] > (1u << 24)) return make_error(ErrorCode::kCorrupt, "model {}: vocabulary too large", f.name());
  hp.n_vocab = static_cast<uint32_t>(emb->dims[1]);
  if (f.find(a + "vocab_size")) {
    VEIL_ASSIGN_OR_RETURN(uint64_t nv, f.get_uint(a + "vocab_size"));
    if (nv != hp.n_vocab) {
      return make_error(ErrorCode::kCorrupt, "model {}: metadata '{}vocab_size' = {} but token_embd has {} rows",
                        f.name(), a, nv, hp.n_vocab);
    }
  }
  if (const gguf::Value* s = f.find("veil.synthetic")) {
    const bool* b = std::get_if<bool>(&s->v);
    hp.synthetic = b && *b;
  }
  return ok_status();
}

// ---------------- KvCache / Context ----------------

const char* kv_type_name(KvType t) { return t == KvType::kF16 ? "f16" : "f32"; }

Result<KvType> parse_kv_type(std::string_view name) {
  if (name == "f32") return KvType::kF32;
  if (name == "f16") return KvType::kF16;
  return make_error(ErrorCode::kInvalidArgument, "unknown KV cache type '{}' (f32 or f16)", name);
}

KvCache::KvCache(uint32_t n_ctx, LayerRange range, uint32_t n_head_kv, uint32_t head_dim, KvType type)
    : n_ctx_(n_ctx), n_head_kv_(n_head_kv), head_dim_(head_dim), type_(type), range_(range) {
  size_t n = size_t{range.end - range.begin} * n_ctx * kv_dim() * elem_bytes();
  k_.assign(n, 0);
  v_.assign(n, 0);
}

void KvCache::store(uint32_t layer, uint32_t pos, const float* k, const float* v) {
  const size_t eb = elem_bytes();
  auto put = [&](uint8_t* dst, float x) {  // one element in the cache's type
    if (type_ == KvType::kF32) {
      std::memcpy(dst, &x, sizeof x);
    } else {
      const uint16_t h = kernels::f32_to_fp16(x);
      std::memcpy(dst, &h, sizeof h);
    }
  };
  for (uint32_t h = 0; h < n_head_kv_; ++h) {  // head h's K row of `pos`
    uint8_t* kr = k_rows(layer, h) + size_t{pos} * head_dim_ * eb;
    for (size_t d = 0; d < head_dim_; ++d) put(kr + d * eb, k[size_t{h} * head_dim_ + d]);
  }
  uint8_t* vt = v_rows(layer) + size_t{pos} * eb;  // column `pos` of the transposed V
  const size_t stride = size_t{n_ctx_} * eb;
  for (size_t d = 0; d < kv_dim(); ++d) put(vt + d * stride, v[d]);
}

Context::Context(const HParams& hp, ContextOptions options)
    : n_embd_(hp.n_embd),
      n_vocab_(hp.n_vocab),
      pool_(static_cast<int>(std::clamp<uint32_t>(options.threads, 1, 1024)), options.pin_threads),
      kernels_(options.kernels ? options.kernels : &kernels::active_table()) {}

void Context::set_hidden(std::span<const float> h) {
  x_.assign(h.begin(), h.end());
  n_tokens_ = n_embd_ ? h.size() / n_embd_ : 0;
}

// ---------------- Matrix ----------------

void dequantize_row(const Matrix& m, size_t r, float* dst, std::vector<uint8_t>& scratch) {
  if (!m.x4) {
    kernels::dequantize_row(m.type, m.data + r * m.row_stride, dst, m.cols);
    return;
  }
  if (scratch.size() < m.row_stride) scratch.resize(m.row_stride);
  kernels::extract_row_x4(m.type, m.data, m.cols, r, scratch.data());
  kernels::dequantize_row(m.type, scratch.data(), dst, m.cols);
}

// ---------------- Model ----------------

Result<std::shared_ptr<const Model>> Model::load(std::shared_ptr<const gguf::File> file, LoadOptions options) {
  if (!file) return make_error(ErrorCode::kInvalidArgument, "model: no file given");
  const gguf::File& f = *file;
  VEIL_ASSIGN_OR_RETURN(std::string arch_name, f.get_string("general.architecture"));
  const ArchSpec* arch = find_arch(arch_name);
  if (!arch) {
    std::string names;
    for (const auto& n : supported_architectures()) names += (names.empty() ? "" : ", ") + n;
    return make_error(ErrorCode::kUnsupported, "model {}: architecture '{}' is not supported ({})", f.name(),
                      arch_name, names);
  }
  auto m = std::make_shared<Model>();
  m->file_ = file;
  m->arch_ = arch;
  m->hp_.arch = arch_name;
  VEIL_TRY(arch->read_hparams(f, m->hp_));
  HParams& hp = m->hp_;
  if (hp.rope != RopeStyle::kNone) {
    if (hp.rope_dim == 0) hp.rope_dim = hp.head_dim;
    if (hp.rope_dim % 2 != 0 || hp.rope_dim > hp.head_dim) {
      return make_error(ErrorCode::kCorrupt, "model {}: rope dimension {} must be even and at most the head size {}",
                        f.name(), hp.rope_dim, hp.head_dim);
    }
  }
  LayerRange r = options.layers;
  r.end = std::min(r.end, hp.n_layer);
  if (r.begin >= r.end) {
    return make_error(ErrorCode::kInvalidArgument, "model {}: layer range [{}, {}) is empty (model has {} layers)",
                      f.name(), options.layers.begin, options.layers.end, hp.n_layer);
  }
  m->range_ = r;

  Binder b(f);
  Weights& w = m->w_;
  VEIL_ASSIGN_OR_RETURN(w.token_embd, b.matrix("token_embd.weight", hp.n_embd, hp.n_vocab));
  if (b.has("output.weight")) {
    VEIL_ASSIGN_OR_RETURN(w.output, b.matrix("output.weight", hp.n_embd, hp.n_vocab));
  } else {
    w.output = w.token_embd;
    w.tied_output = true;
  }
  // The final norm is read (widened) only by the range ending at the last layer: a pipeline stage of a sealed
  // model has not decrypted it (sealed.h LayerRange). Learned positions (gpt2) bound every stage's context.
  if (r.end == hp.n_layer) {
    VEIL_TRY(arch->bind_head(b, hp, w));
  } else if (const gguf::TensorInfo* p = f.find_tensor("position_embd.weight"); p && p->dims.size() == 2) {
    VEIL_ASSIGN_OR_RETURN(w.pos_embd, b.matrix("position_embd.weight", hp.n_embd, p->dims[1]));
  }
  w.layers.resize(hp.n_layer);
  for (uint32_t l = r.begin; l < r.end; ++l) VEIL_TRY(arch->bind_layer(b, hp, l, w.layers[l]));
  VEIL_TRY(m->repack(options.repack));
  return std::shared_ptr<const Model>(std::move(m));
}

// Repacking: each Q4_0 / Q8_0 matrix the forward pass multiplies with is copied into the kernels' x4 layout, in
// one anonymous mapping. For a file mapped from disk, the pages of each source matrix are released right after
// its copy (MADV_DONTNEED on a read-only file mapping: the bytes stay in the file and fault back in if anyone
// reads them again, e.g. another Model on the same gguf::File), so the resident set peaks at about the weights
// plus one matrix. A model decrypted into memory cannot give pages back: its copies are made only when they are
// small (kRepackInMemoryLimit) or asked for (Repack::kAlways).
Status Model::repack(Repack mode) {
  if (mode == Repack::kNever) return ok_status();
  std::vector<Matrix*> targets;
  auto consider = [&](Matrix& mat) {
    if (mat.data == nullptr || mat.x4 || !kernels::has_x4_layout(mat.type) || mat.cols % 32 != 0) return;
    for (Matrix* t : targets) {
      if (t->data == mat.data) return;  // tied output: the token embedding, once
    }
    targets.push_back(&mat);
  };
  for (uint32_t l = range_.begin; l < range_.end; ++l) {
    LayerWeights& lw = w_.layers[l];
    for (Matrix* mat : {&lw.attn_q, &lw.attn_k, &lw.attn_v, &lw.attn_qkv, &lw.attn_out, &lw.ffn_gate, &lw.ffn_up,
                        &lw.ffn_down}) {
      consider(*mat);
    }
  }
  if (last_stage()) consider(w_.output);
  if (targets.empty()) return ok_status();

  auto padded = [](size_t n) { return (n + 63) / 64 * 64; };
  size_t total = 0;
  for (const Matrix* t : targets) total += padded(kernels::repacked_bytes(t->type, t->rows, t->cols));
  const bool mapped = file_->mapped();
  if (mode == Repack::kAuto && !mapped && total > kRepackInMemoryLimit) {
    spdlog::debug("model {}: {} MiB of Q4_0/Q8_0 weights held in memory: kept in the plain layout", file_->name(),
                  total >> 20);
    return ok_status();
  }
  void* mem = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    return make_error(ErrorCode::kResourceExhausted, "model {}: cannot allocate {} bytes for repacked weights",
                      file_->name(), total);
  }
  ::madvise(mem, total, MADV_HUGEPAGE);
  // The copies are model weights: never in a core dump; from a model held in memory (a sealed model's plaintext)
  // also locked where the limit allows and wiped on release, as src/sealed treats the plaintext itself.
  ::madvise(mem, total, MADV_DONTDUMP);
  const bool secret = !mapped;
  const bool locked = secret && ::mlock(mem, total) == 0;
  packed_ = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(mem), [total, secret, locked](uint8_t* p) {
    if (secret) secure_zero(p, total);
    if (locked) ::munlock(p, total);
    ::munmap(p, total);
  });
  packed_bytes_ = total;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uint8_t* dst = packed_.get();
  for (Matrix* t : targets) {
    const uint8_t* src = t->data;
    VEIL_TRY(kernels::repack_x4(t->type, src, t->row_stride, t->rows, t->cols, dst));
    if (mapped) {  // whole pages of the source only: a neighbour's first or last page stays
      auto b = (reinterpret_cast<uintptr_t>(src) + page - 1) / page * page;
      auto e = (reinterpret_cast<uintptr_t>(src) + t->rows * t->row_stride) / page * page;
      if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
    }
    const uint8_t* old = t->data;
    t->data = dst;
    t->x4 = true;
    if (w_.output.data == old) w_.output = *t;
    if (w_.token_embd.data == old) w_.token_embd = *t;
    dst += padded(kernels::repacked_bytes(t->type, t->rows, t->cols));
  }
  return ok_status();
}

uint64_t Model::weight_bytes_per_token() const {
  uint64_t total = 0;
  for (uint32_t l = range_.begin; l < range_.end; ++l) {
    const LayerWeights& lw = w_.layers[l];
    for (const Matrix* mat : {&lw.attn_q, &lw.attn_k, &lw.attn_v, &lw.attn_qkv, &lw.attn_out, &lw.ffn_gate,
                              &lw.ffn_up, &lw.ffn_down}) {
      if (mat->data) total += mat->bytes();
    }
  }
  if (last_stage()) total += w_.output.bytes();
  return total;
}

KvCache Model::new_cache(uint32_t n_ctx, KvType type) const {
  if (n_ctx == 0) n_ctx = hp_.n_ctx_train;
  if (w_.pos_embd.data) n_ctx = std::min<uint32_t>(n_ctx, static_cast<uint32_t>(w_.pos_embd.rows));
  return KvCache(n_ctx, range_, hp_.n_head_kv, hp_.head_dim, type);
}

Status Model::forward(std::span<ForwardRequest> requests, Context& ctx) const {
  if (requests.empty()) return make_error(ErrorCode::kInvalidArgument, "forward: no requests");
  size_t total = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ForwardRequest& q = requests[i];
    if (!q.cache) return make_error(ErrorCode::kInvalidArgument, "forward: request {} has no cache", i);
    const KvCache& c = *q.cache;  // the K rows are laid out by head, so the head split must match, not only kv_dim
    if (c.range_.begin != range_.begin || c.range_.end != range_.end || c.n_head_kv_ != hp_.n_head_kv ||
        c.head_dim_ != hp_.head_dim) {
      return make_error(ErrorCode::kInvalidArgument, "forward: request {}: cache was made for another model or range", i);
    }
    for (size_t j = 0; j < i; ++j) {
      if (requests[j].cache == q.cache) return make_error(ErrorCode::kInvalidArgument, "forward: request {} repeats a cache", i);
    }
    size_t n = first_stage() ? q.tokens.size() : q.n_tokens;
    if (n == 0) return make_error(ErrorCode::kInvalidArgument, "forward: request {} has no tokens", i);
    if (size_t{q.cache->n_past_} + n > q.cache->n_ctx_) {
      return make_error(ErrorCode::kResourceExhausted, "forward: request {}: {} tokens exceed the context of {} ({} used)",
                        i, n, q.cache->n_ctx_, q.cache->n_past_);
    }
    if (w_.pos_embd.data && size_t{q.cache->n_past_} + n > w_.pos_embd.rows) {
      return make_error(ErrorCode::kResourceExhausted, "forward: request {}: position beyond the model's {} learned positions",
                        i, w_.pos_embd.rows);
    }
    if (first_stage()) {
      for (TokenId t : q.tokens) {
        if (t < 0 || static_cast<uint32_t>(t) >= hp_.n_vocab) {
          return make_error(ErrorCode::kInvalidArgument, "forward: request {}: token id out of range (vocabulary {})", i,
                            hp_.n_vocab);
        }
      }
    }
    total += n;
  }
  if (!first_stage() && ctx.n_tokens_ != total) {
    return make_error(ErrorCode::kInvalidArgument, "forward: {} hidden-state rows given for {} tokens", ctx.n_tokens_, total);
  }

  // Size the scratch buffers (grow only).
  auto& B = ctx.buf;
  const size_t d = hp_.n_embd, qd = size_t{hp_.n_head} * hp_.head_dim, kv_dim = size_t{hp_.n_head_kv} * hp_.head_dim;
  const size_t wide = std::max({d, qd, size_t{hp_.n_ff}, 3 * d});
  auto grow = [](std::vector<float>& v, size_t n) { if (v.size() < n) v.resize(n); };
  grow(ctx.x_, total * d);
  grow(B.xb, total * std::max(d, qd));
  grow(B.xb2, total * std::max(d, qd));
  grow(B.q, total * qd);
  grow(B.k, total * kv_dim);
  grow(B.v, total * kv_dim);
  grow(B.att, total * qd);
  grow(B.hb, total * wide);
  grow(B.hb2, total * wide);
  if (B.pos.size() < total) {
    B.pos.resize(total);
    B.seq.resize(total);
  }
  if (B.first.size() < requests.size() + 1) B.first.resize(requests.size() + 1);
  for (size_t i = 0, t = 0; i < requests.size(); ++i) {
    size_t n = first_stage() ? requests[i].tokens.size() : requests[i].n_tokens;
    B.first[i] = static_cast<uint32_t>(t);
    B.first[i + 1] = static_cast<uint32_t>(t + n);
    for (size_t j = 0; j < n; ++j, ++t) {
      B.pos[t] = requests[i].cache->n_past_ + static_cast<uint32_t>(j);
      B.seq[t] = static_cast<uint32_t>(i);
    }
  }

  float* x = ctx.x_.data();
  if (first_stage()) {
    for (size_t i = 0, t = 0; i < requests.size(); ++i) {
      for (TokenId tok : requests[i].tokens) {
        dequantize_row(w_.token_embd, static_cast<size_t>(tok), x + t * d, B.row);
        if (w_.pos_embd.data) {
          float* tmp = B.xb.data();
          dequantize_row(w_.pos_embd, B.pos[t], tmp, B.row);
          for (size_t j = 0; j < d; ++j) x[t * d + j] += tmp[j];
        }
        ++t;
      }
    }
  }
  Batch batch{*this, ctx, requests, total, x};
  for (uint32_t l = range_.begin; l < range_.end; ++l) arch_->block(batch, l);
  for (auto& q : requests) q.cache->n_past_ += static_cast<uint32_t>(first_stage() ? q.tokens.size() : q.n_tokens);
  ctx.n_tokens_ = total;

  ctx.n_logit_rows_ = 0;
  if (!last_stage()) return ok_status();
  // Gather the rows that need logits, normalise them, project to the vocabulary.
  size_t rows = 0;
  for (size_t i = 0, t = 0; i < requests.size(); ++i) {
    size_t n = first_stage() ? requests[i].tokens.size() : requests[i].n_tokens;
    size_t from = requests[i].logits == LogitsMode::kAll ? 0 : requests[i].logits == LogitsMode::kLast ? n - 1 : n;
    for (size_t j = from; j < n; ++j, ++rows) std::memcpy(B.xb.data() + rows * d, x + (t + j) * d, d * sizeof(float));
    t += n;
  }
  if (rows == 0) return ok_status();
  arch_->final_norm(*this, B.xb.data(), B.xb2.data(), rows);
  grow(ctx.logits_, rows * hp_.n_vocab);
  ops::matmul(ctx, w_.output, B.xb2.data(), rows, ctx.logits_.data());
  ctx.n_logit_rows_ = rows;
  return ok_status();
}

}  // namespace veil::engine
