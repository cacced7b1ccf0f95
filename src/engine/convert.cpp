#include "engine/convert.h"

#include <cmath>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "kernels/kernels.h"

namespace veil::engine {

using gguf::TensorType;

namespace {

// ---------------- llama2.c ----------------

struct L2cConfig {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

class Reader {
 public:
  Reader(ByteView b, std::string_view name) : b_(b), name_(name) {}
  template <typename T>
  Result<T> get(std::string_view field) {
    if (b_.size() - pos_ < sizeof(T) || pos_ > b_.size()) {
      return make_error(ErrorCode::kCorrupt, "{}: {} at byte {}: truncated", name_, field, pos_);
    }
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  size_t pos() const { return pos_; }
  void seek(size_t p) { pos_ = p; }
  ByteView bytes() const { return b_; }
  const std::string& name() const { return name_; }

 private:
  ByteView b_;
  std::string name_;
  size_t pos_ = 0;
};

Status add_f32(gguf::Writer& w, const std::string& name, std::vector<uint64_t> dims, const uint8_t* data) {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return w.add_tensor(name, std::move(dims), TensorType::kF32, Bytes(data, data + n * 4));
}

}  // namespace

Result<Metadata> llama2c_vocabulary(ByteView tokenizer, std::string_view name, uint32_t n_vocab) {
  Reader r(tokenizer, name);
  VEIL_ASSIGN_OR_RETURN(int32_t max_len, r.get<int32_t>("max_token_length"));
  if (max_len <= 0 || max_len > (1 << 16)) {
    return make_error(ErrorCode::kCorrupt, "{}: max_token_length at byte 0: {} is out of range", name, max_len);
  }
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (uint32_t i = 0; i < n_vocab; ++i) {
    VEIL_ASSIGN_OR_RETURN(float score, r.get<float>(fmt::format("token {} score", i)));
    size_t len_at = r.pos();
    VEIL_ASSIGN_OR_RETURN(int32_t len, r.get<int32_t>(fmt::format("token {} length", i)));
    if (len < 0 || len > max_len || static_cast<size_t>(len) > tokenizer.size() - r.pos()) {
      return make_error(ErrorCode::kCorrupt, "{}: token {} length at byte {}: {} is out of range", name, i, len_at, len);
    }
    std::string text(reinterpret_cast<const char*>(tokenizer.data() + r.pos()), static_cast<size_t>(len));
    r.seek(r.pos() + static_cast<size_t>(len));
    int32_t type = 1;
    if (i == 0) {
      type = 2;  // <unk>
    } else if (i == 1 || i == 2) {
      text = i == 1 ? "<s>" : "</s>";  // llama2.c stores them as "\n<s>\n" / "\n</s>\n"
      type = 3;
    } else if (text.size() == 6 && text.rfind("<0x", 0) == 0 && text[5] == '>') {
      type = 6;
    } else {
      std::string sp;
      for (char c : text) sp += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
      text = std::move(sp);
    }
    tokens.push_back(std::move(text));
    scores.push_back(score);
    types.push_back(type);
  }
  Metadata m;
  m.emplace_back("tokenizer.ggml.model", gguf::make_string("llama"));
  m.emplace_back("tokenizer.ggml.tokens", gguf::make_string_array(tokens));
  m.emplace_back("tokenizer.ggml.scores", gguf::make_f32_array(scores));
  m.emplace_back("tokenizer.ggml.token_type", gguf::make_i32_array(types));
  m.emplace_back("tokenizer.ggml.unknown_token_id", gguf::make_u32(0));
  m.emplace_back("tokenizer.ggml.bos_token_id", gguf::make_u32(1));
  m.emplace_back("tokenizer.ggml.eos_token_id", gguf::make_u32(2));
  return m;
}

Result<gguf::Writer> convert_llama2c(ByteView ckpt, std::string_view ckpt_name, ByteView tok, std::string_view tok_name) {
  Reader r(ckpt, ckpt_name);
  VEIL_ASSIGN_OR_RETURN(uint32_t magic, r.get<uint32_t>("magic"));
  L2cConfig c{};
  bool shared = true;
  size_t header = 0;
  bool legacy = magic != 0x616b3432;
  if (!legacy) {
    VEIL_ASSIGN_OR_RETURN(int32_t version, r.get<int32_t>("version"));
    if (version != 1) {
      return make_error(ErrorCode::kUnsupported, "{}: version at byte 4: llama2.c format version {} is not supported (legacy or 1)",
                        ckpt_name, version);
    }
  } else {
    r.seek(0);
  }
  int32_t* fields[] = {&c.dim, &c.hidden_dim, &c.n_layers, &c.n_heads, &c.n_kv_heads, &c.vocab_size, &c.seq_len};
  const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    VEIL_ASSIGN_OR_RETURN(*fields[i], r.get<int32_t>(names[i]));
  }
  if (legacy) {
    shared = c.vocab_size > 0;
    c.vocab_size = std::abs(c.vocab_size);
    header = 28;
  } else {
    VEIL_ASSIGN_OR_RETURN(uint8_t flag, r.get<uint8_t>("shared_classifier"));
    if (flag > 1) return make_error(ErrorCode::kCorrupt, "{}: shared_classifier at byte 36: {} is not 0 or 1", ckpt_name, flag);
    shared = flag == 1;
    header = 256;
  }
  for (int i = 0; i < 7; ++i) {
    if (*fields[i] <= 0 || *fields[i] > (1 << 20)) {
      return make_error(ErrorCode::kCorrupt, "{}: {} at byte {}: {} is out of range", ckpt_name, names[i],
                        (legacy ? 0 : 8) + 4 * i, *fields[i]);
    }
  }
  if (c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0 || (c.dim / c.n_heads) % 2 != 0) {
    return make_error(ErrorCode::kCorrupt, "{}: header: dim {}, n_heads {}, n_kv_heads {} are inconsistent", ckpt_name,
                      c.dim, c.n_heads, c.n_kv_heads);
  }
  const uint64_t d = static_cast<uint64_t>(c.dim), hd = d / static_cast<uint64_t>(c.n_heads);
  const uint64_t kvd = hd * static_cast<uint64_t>(c.n_kv_heads), L = static_cast<uint64_t>(c.n_layers);
  const uint64_t ff = static_cast<uint64_t>(c.hidden_dim), V = static_cast<uint64_t>(c.vocab_size);
  uint64_t floats = V * d + 2 * L * d + L * d * d + 2 * L * d * kvd + L * d * d + 3 * L * d * ff + d;
  if (legacy) floats += static_cast<uint64_t>(c.seq_len) * hd;  // freq_cis_real + freq_cis_imag
  if (!shared) floats += V * d;
  if (ckpt.size() != header + floats * 4) {
    return make_error(ErrorCode::kCorrupt, "{}: size {} bytes does not match the header (expected {} bytes)", ckpt_name,
                      ckpt.size(), header + floats * 4);
  }
  VEIL_ASSIGN_OR_RETURN(Metadata vocab, llama2c_vocabulary(tok, tok_name, static_cast<uint32_t>(V)));

  gguf::Writer w;
  w.set("general.architecture", gguf::make_string("llama"));
  w.set("general.name", gguf::make_string(std::string(ckpt_name)));
  w.set("llama.context_length", gguf::make_u32(static_cast<uint32_t>(c.seq_len)));
  w.set("llama.embedding_length", gguf::make_u32(static_cast<uint32_t>(d)));
  w.set("llama.feed_forward_length", gguf::make_u32(static_cast<uint32_t>(ff)));
  w.set("llama.attention.head_count", gguf::make_u32(static_cast<uint32_t>(c.n_heads)));
  w.set("llama.attention.head_count_kv", gguf::make_u32(static_cast<uint32_t>(c.n_kv_heads)));
  w.set("llama.block_count", gguf::make_u32(static_cast<uint32_t>(L)));
  w.set("llama.rope.dimension_count", gguf::make_u32(static_cast<uint32_t>(hd)));
  w.set("llama.attention.layer_norm_rms_epsilon", gguf::make_f32(1e-5f));
  for (auto& [k, v] : vocab) w.set(k, std::move(v));

  const uint8_t* p = ckpt.data() + header;
  auto take = [&](uint64_t n) {
    const uint8_t* at = p;
    p += n * 4;
    return at;
  };
  auto per_layer = [&](const char* name, std::vector<uint64_t> dims) -> Status {
    uint64_t n = 1;
    for (uint64_t x : dims) n *= x;
    const uint8_t* base = take(n * L);
    for (uint64_t l = 0; l < L; ++l) {
      VEIL_TRY(add_f32(w, fmt::format("blk.{}.{}", l, name), dims, base + l * n * 4));
    }
    return ok_status();
  };
  const uint8_t* emb;
  if (legacy) {
    emb = take(V * d);
    VEIL_TRY(add_f32(w, "token_embd.weight", {d, V}, emb));
    VEIL_TRY(per_layer("attn_norm.weight", {d}));
    VEIL_TRY(per_layer("attn_q.weight", {d, d}));
    VEIL_TRY(per_layer("attn_k.weight", {d, kvd}));
    VEIL_TRY(per_layer("attn_v.weight", {d, kvd}));
    VEIL_TRY(per_layer("attn_output.weight", {d, d}));
    VEIL_TRY(per_layer("ffn_norm.weight", {d}));
    VEIL_TRY(per_layer("ffn_gate.weight", {d, ff}));
    VEIL_TRY(per_layer("ffn_down.weight", {ff, d}));
    VEIL_TRY(per_layer("ffn_up.weight", {d, ff}));
    VEIL_TRY(add_f32(w, "output_norm.weight", {d}, take(d)));
    take(static_cast<uint64_t>(c.seq_len) * hd);
  } else {
    VEIL_TRY(per_layer("attn_norm.weight", {d}));
    VEIL_TRY(per_layer("ffn_norm.weight", {d}));
    VEIL_TRY(add_f32(w, "output_norm.weight", {d}, take(d)));
    emb = take(V * d);
    VEIL_TRY(add_f32(w, "token_embd.weight", {d, V}, emb));
    VEIL_TRY(per_layer("attn_q.weight", {d, d}));
    VEIL_TRY(per_layer("attn_k.weight", {d, kvd}));
    VEIL_TRY(per_layer("attn_v.weight", {d, kvd}));
    VEIL_TRY(per_layer("attn_output.weight", {d, d}));
    VEIL_TRY(per_layer("ffn_gate.weight", {d, ff}));
    VEIL_TRY(per_layer("ffn_down.weight", {ff, d}));
    VEIL_TRY(per_layer("ffn_up.weight", {d, ff}));
  }
  if (!shared) VEIL_TRY(add_f32(w, "output.weight", {d, V}, take(V * d)));
  return w;
}

// ---------------- quantize ----------------

namespace {

kernels::Type kt(TensorType t) { return static_cast<kernels::Type>(t); }

TensorType fallback_type(TensorType want, uint64_t row) {
  if (row % kernels::block_elems(kt(want)) == 0) return want;
  TensorType alt = TensorType::kF16;
  switch (want) {
    case TensorType::kQ4_K: alt = TensorType::kQ5_0; break;
    case TensorType::kQ5_K: alt = TensorType::kQ5_1; break;
    case TensorType::kQ6_K: alt = TensorType::kQ8_0; break;
    default: break;
  }
  return row % kernels::block_elems(kt(alt)) == 0 ? alt : TensorType::kF16;
}

uint32_t file_type_for(TensorType t) {
  switch (t) {
    case TensorType::kF32: return 0;
    case TensorType::kF16: return 1;
    case TensorType::kQ4_0: return 2;
    case TensorType::kQ4_1: return 3;
    case TensorType::kQ8_0: return 7;
    case TensorType::kQ5_0: return 8;
    case TensorType::kQ5_1: return 9;
    case TensorType::kQ4_K: return 15;
    case TensorType::kQ5_K: return 17;
    case TensorType::kQ6_K: return 18;
    case TensorType::kBF16: return 32;
  }
  return 0;
}

Status add_quantized(gguf::Writer& w, const std::string& name, const std::vector<uint64_t>& dims,
                     const std::vector<float>& values, TensorType type, QuantizeReport* rep) {
  if (dims.size() < 2) {
    if (rep) ++rep->kept;
    return w.add_tensor(name, dims, TensorType::kF32,
                        Bytes(reinterpret_cast<const uint8_t*>(values.data()),
                              reinterpret_cast<const uint8_t*>(values.data() + values.size())));
  }
  TensorType t = fallback_type(type, dims[0]);
  if (rep) ++(t == type ? rep->quantized : rep->fallback);
  VEIL_ASSIGN_OR_RETURN(Bytes q, kernels::quantize(kt(t), values, dims[0]));
  return w.add_tensor(name, dims, t, std::move(q));
}

}  // namespace

Result<QuantizeReport> quantize_model(const gguf::File& in, TensorType type, gguf::Writer& out) {
  if (!kernels::type_supported(kt(type))) {
    return make_error(ErrorCode::kUnsupported, "quantize: type {} is not supported", gguf::type_name(type));
  }
  QuantizeReport rep;
  out.copy_metadata(in);
  out.set("general.file_type", gguf::make_u32(file_type_for(type)));
  for (const auto& t : in.tensors()) {
    if (!kernels::type_supported(kt(t.type))) {
      return make_error(ErrorCode::kUnsupported, "quantize: {}: tensor '{}' has type {}, which Veil cannot read",
                        in.name(), t.name, gguf::type_name(t.type));
    }
    std::vector<float> v = kernels::dequantize(kt(t.type), t.data, t.n_elements);
    VEIL_TRY(add_quantized(out, t.name, t.dims, v, type, &rep));
  }
  return rep;
}

// ---------------- synth ----------------

Result<SynthShape> parse_synth_shape(std::string_view name) {
  if (name == "gpt2-124m") return SynthShape::kGpt2_124m;
  if (name == "stories15m") return SynthShape::kStories15m;
  if (name == "tinyllama-1.1b") return SynthShape::kTinyllama_1_1b;
  return make_error(ErrorCode::kUsage, "synth: shape '{}' unknown (gpt2-124m, stories15m, tinyllama-1.1b)", name);
}

const char* synth_shape_name(SynthShape shape) {
  switch (shape) {
    case SynthShape::kGpt2_124m: return "gpt2-124m";
    case SynthShape::kStories15m: return "stories15m";
    case SynthShape::kTinyllama_1_1b: return "tinyllama-1.1b";
  }
  return "?";
}

namespace {

Metadata gguf_vocabulary(const gguf::File& f) {
  Metadata m;
  for (const auto& [k, v] : f.metadata()) {
    if (k.rfind("tokenizer.", 0) == 0) m.emplace_back(k, v);
  }
  return m;
}

Result<Metadata> gpt2_json_vocabulary(const std::filesystem::path& encoder) {
  VEIL_ASSIGN_OR_RETURN(std::string text, read_text_file(encoder, 64u << 20));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(ErrorCode::kCorrupt, "vocabulary {}: not a JSON object of token -> id", encoder.string());
  }
  std::vector<std::string> tokens(j.size());
  std::vector<bool> seen(j.size(), false);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= tokens.size() || seen[it.value().get<uint64_t>()]) {
      return make_error(ErrorCode::kCorrupt, "vocabulary {}: token ids must be 0..{} with no gaps or repeats",
                        encoder.string(), tokens.size() - 1);
    }
    auto id = it.value().get<uint64_t>();
    tokens[id] = it.key();
    seen[id] = true;
  }
  auto bpe = encoder.parent_path() / "vocab.bpe";
  VEIL_ASSIGN_OR_RETURN(std::string merges_text, read_text_file(bpe, 64u << 20));
  std::vector<std::string> merges;
  size_t start = 0;
  while (start < merges_text.size()) {
    size_t nl = merges_text.find('\n', start);
    if (nl == std::string::npos) nl = merges_text.size();
    std::string line = merges_text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // The first line is a "#version: ..." header; later lines may start with '#' (a merge of '#' pieces).
    bool header = merges.empty() && start == 0 && line.rfind("#version", 0) == 0;
    if (!line.empty() && !header) merges.push_back(std::move(line));
    start = nl + 1;
  }
  std::vector<int32_t> types(tokens.size(), 1);
  int32_t eot = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] == "<|endoftext|>") {
      types[i] = 3;
      eot = static_cast<int32_t>(i);
    }
  }
  Metadata m;
  m.emplace_back("tokenizer.ggml.model", gguf::make_string("gpt2"));
  m.emplace_back("tokenizer.ggml.pre", gguf::make_string("gpt-2"));
  m.emplace_back("tokenizer.ggml.tokens", gguf::make_string_array(tokens));
  m.emplace_back("tokenizer.ggml.token_type", gguf::make_i32_array(types));
  m.emplace_back("tokenizer.ggml.merges", gguf::make_string_array(merges));
  if (eot >= 0) {
    m.emplace_back("tokenizer.ggml.bos_token_id", gguf::make_u32(static_cast<uint32_t>(eot)));
    m.emplace_back("tokenizer.ggml.eos_token_id", gguf::make_u32(static_cast<uint32_t>(eot)));
  }
  return m;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<float> random_tensor(uint64_t n, uint64_t seed, const std::string& name, float scale) {
  uint64_t s = seed;
  for (char c : name) s = (s ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  std::vector<float> v(n);
  for (auto& x : v) {
    // uniform in [-scale*sqrt(3), scale*sqrt(3)): standard deviation `scale`
    double u = static_cast<double>(splitmix(s) >> 11) * (1.0 / 9007199254740992.0);
    x = static_cast<float>((2.0 * u - 1.0) * 1.7320508 * scale);
  }
  return v;
}

}  // namespace

Result<Metadata> load_vocabulary(const std::filesystem::path& path) {
  if (path.extension() == ".gguf") {
    VEIL_ASSIGN_OR_RETURN(gguf::File f, gguf::File::open(path));
    if (!f.find("tokenizer.ggml.tokens")) {
      return make_error(ErrorCode::kNotFound, "vocabulary {}: no tokenizer.ggml.tokens in this GGUF", path.string());
    }
    return gguf_vocabulary(f);
  }
  if (path.extension() == ".json") return gpt2_json_vocabulary(path);
  if (path.extension() == ".bin") {
    VEIL_ASSIGN_OR_RETURN(Bytes b, read_file(path, 64u << 20));
    // The vocabulary size is not in the file: count entries until the end.
    uint32_t n = 0;
    size_t p = 4;
    while (p + 8 <= b.size()) {
      int32_t len;
      std::memcpy(&len, b.data() + p + 4, 4);
      if (len < 0 || static_cast<size_t>(len) > b.size() - p - 8) break;
      p += 8 + static_cast<size_t>(len);
      ++n;
    }
    if (p != b.size() || n == 0) {
      return make_error(ErrorCode::kCorrupt, "vocabulary {}: not a llama2.c tokenizer (entry at byte {} is malformed)",
                        path.string(), p);
    }
    return llama2c_vocabulary(b, path.string(), n);
  }
  return make_error(ErrorCode::kUsage, "vocabulary {}: expected a .gguf, GPT-2 encoder.json or llama2.c tokenizer .bin",
                    path.string());
}

Result<gguf::Writer> synth_model(SynthShape shape, TensorType type, const Metadata& vocab, uint64_t seed,
                                 std::optional<TensorType> output_type) {
  struct Shape {
    const char* arch;
    uint32_t d, L, heads, kv, ff, ctx, vocab;
  };
  Shape s{};
  switch (shape) {
    case SynthShape::kGpt2_124m: s = {"gpt2", 768, 12, 12, 12, 3072, 1024, 50257}; break;
    case SynthShape::kStories15m: s = {"llama", 288, 6, 6, 6, 768, 256, 32000}; break;
    case SynthShape::kTinyllama_1_1b: s = {"llama", 2048, 22, 32, 4, 5632, 2048, 32000}; break;
  }
  size_t n_tokens = 0;
  for (const auto& [k, v] : vocab) {
    if (k == "tokenizer.ggml.tokens") {
      if (const auto* items = std::get_if<std::vector<gguf::Value>>(&v.v)) n_tokens = items->size();
    }
  }
  if (n_tokens != s.vocab) {
    return make_error(ErrorCode::kInvalidArgument, "synth: shape {} needs a vocabulary of {} tokens, this one has {}",
                      synth_shape_name(shape), s.vocab, n_tokens);
  }
  const std::string a = s.arch;
  gguf::Writer w;
  w.set("general.architecture", gguf::make_string(a));
  w.set("general.name", gguf::make_string(fmt::format("SYNTHETIC {} (random weights, benchmarks only)", synth_shape_name(shape))));
  w.set("veil.synthetic", gguf::make_bool(true));
  w.set("veil.synthetic.shape", gguf::make_string(synth_shape_name(shape)));
  w.set("veil.synthetic.seed", gguf::make_u64(seed));
  w.set(a + ".context_length", gguf::make_u32(s.ctx));
  w.set(a + ".embedding_length", gguf::make_u32(s.d));
  w.set(a + ".feed_forward_length", gguf::make_u32(s.ff));
  w.set(a + ".block_count", gguf::make_u32(s.L));
  w.set(a + ".attention.head_count", gguf::make_u32(s.heads));
  w.set(a + ".attention.head_count_kv", gguf::make_u32(s.kv));
  if (a == "gpt2") {
    w.set("gpt2.attention.layer_norm_epsilon", gguf::make_f32(1e-5f));
  } else {
    w.set("llama.attention.layer_norm_rms_epsilon", gguf::make_f32(1e-5f));
    w.set("llama.rope.dimension_count", gguf::make_u32(s.d / s.heads));
  }
  w.set("general.file_type", gguf::make_u32(file_type_for(type)));
  for (const auto& [k, v] : vocab) w.set(k, v);

  const uint64_t d = s.d, kvd = uint64_t{s.d} / s.heads * s.kv, ff = s.ff, V = s.vocab;
  auto mat = [&](const std::string& name, uint64_t cols, uint64_t rows, float scale = 0.02f,
                 std::optional<TensorType> as = std::nullopt) {
    return add_quantized(w, name, {cols, rows}, random_tensor(cols * rows, seed, name, scale), as.value_or(type),
                         nullptr);
  };
  auto ones = [&](const std::string& name, uint64_t n) {
    return add_quantized(w, name, {n}, std::vector<float>(n, 1.0f), type, nullptr);
  };
  auto zeros = [&](const std::string& name, uint64_t n) {
    return add_quantized(w, name, {n}, std::vector<float>(n, 0.0f), type, nullptr);
  };
  VEIL_TRY(mat("token_embd.weight", d, V));
  if (a == "gpt2") VEIL_TRY(mat("position_embd.weight", d, s.ctx, 0.01f));
  for (uint32_t l = 0; l < s.L; ++l) {
    auto n = [&](const char* x) { return fmt::format("blk.{}.{}", l, x); };
    VEIL_TRY(ones(n("attn_norm.weight"), d));
    VEIL_TRY(ones(n("ffn_norm.weight"), d));
    if (a == "gpt2") {
      VEIL_TRY(zeros(n("attn_norm.bias"), d));
      VEIL_TRY(zeros(n("ffn_norm.bias"), d));
      VEIL_TRY(mat(n("attn_qkv.weight"), d, 3 * d));
      VEIL_TRY(zeros(n("attn_qkv.bias"), 3 * d));
      VEIL_TRY(mat(n("attn_output.weight"), d, d));
      VEIL_TRY(zeros(n("attn_output.bias"), d));
      VEIL_TRY(mat(n("ffn_up.weight"), d, ff));
      VEIL_TRY(zeros(n("ffn_up.bias"), ff));
      VEIL_TRY(mat(n("ffn_down.weight"), ff, d));
      VEIL_TRY(zeros(n("ffn_down.bias"), d));
    } else {
      VEIL_TRY(mat(n("attn_q.weight"), d, d));
      VEIL_TRY(mat(n("attn_k.weight"), d, kvd));
      VEIL_TRY(mat(n("attn_v.weight"), d, kvd));
      VEIL_TRY(mat(n("attn_output.weight"), d, d));
      VEIL_TRY(mat(n("ffn_gate.weight"), d, ff));
      VEIL_TRY(mat(n("ffn_up.weight"), d, ff));
      VEIL_TRY(mat(n("ffn_down.weight"), ff, d));
    }
  }
  VEIL_TRY(ones("output_norm.weight", d));
  if (a == "gpt2") VEIL_TRY(zeros("output_norm.bias", d));
  VEIL_TRY(mat("output.weight", d, V, 0.02f, output_type));
  return w;
}

}  // namespace veil::engine
