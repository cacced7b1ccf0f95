// GGUF v2/v3 reader. Every read goes through Cursor, which checks the remaining length first.
#include "gguf/gguf.h"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace veil::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 4;
// Bounds that keep a hostile file from making the reader allocate without limit.
constexpr uint64_t kMaxValues = uint64_t{1} << 24;   // metadata values in total (arrays included)
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;

struct TypeEntry {
  uint32_t id;
  TypeTraits traits;
};

constexpr TypeEntry kTypes[] = {
    {0, {"F32", 1, 4, true}},      {1, {"F16", 1, 2, true}},      {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},   {6, {"Q5_0", 32, 22, true}},   {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},   {9, {"Q8_1", 32, 36, false}},  {10, {"Q2_K", 256, 84, false}},
    {11, {"Q3_K", 256, 110, false}}, {12, {"Q4_K", 256, 144, true}}, {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},  {15, {"Q8_K", 256, 292, false}}, {24, {"I8", 1, 1, false}},
    {25, {"I16", 1, 2, false}},    {26, {"I32", 1, 4, false}},    {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},    {30, {"BF16", 1, 2, true}},
};

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

class Cursor {
 public:
  Cursor(ByteView bytes, const std::string& name) : b_(bytes), name_(name) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return b_.size() - pos_; }

  Error corrupt(std::string_view field, uint64_t at, std::string_view why) const {
    return make_error(ErrorCode::kCorrupt, "gguf {}: {} at byte {}: {}", name_, field, at, why);
  }

  template <typename T>
  Result<T> read(std::string_view field) {
    if (remaining() < sizeof(T)) {
      return corrupt(field, pos_, fmt::format("truncated (needs {} bytes, {} left)", sizeof(T), remaining()));
    }
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  Result<std::string> read_string(std::string_view field) {
    uint64_t at = pos_;
    VEIL_ASSIGN_OR_RETURN(uint64_t len, read<uint64_t>(field));
    if (len > remaining()) {
      return corrupt(field, at, fmt::format("string length {} exceeds the {} bytes left", len, remaining()));
    }
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  ByteView b_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

// Smallest encoded size of one value of `t` (used to bound array lengths before allocating).
uint64_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kBool: return 1;
    case ValueType::kUint16: case ValueType::kInt16: return 2;
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kFloat32: return 4;
    case ValueType::kUint64: case ValueType::kInt64: case ValueType::kFloat64: return 8;
    case ValueType::kString: return 8;
    case ValueType::kArray: return 12;
  }
  return 1;
}

bool valid_value_type(uint32_t t) { return t <= 12; }

class Parser {
 public:
  Parser(Cursor& c) : c_(c) {}

  Result<Value> read_value(ValueType type, const std::string& key, int depth) {
    Value v;
    v.type = type;
    uint64_t at = c_.pos();
    std::string field = fmt::format("value of '{}'", key);
    if (++n_values_ > kMaxValues) return c_.corrupt(field, at, "more than 16777216 metadata values");
    switch (type) {
      case ValueType::kUint8: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<uint8_t>(field)); v.v = uint64_t{x}; break; }
      case ValueType::kUint16: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<uint16_t>(field)); v.v = uint64_t{x}; break; }
      case ValueType::kUint32: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<uint32_t>(field)); v.v = uint64_t{x}; break; }
      case ValueType::kUint64: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<uint64_t>(field)); v.v = uint64_t{x}; break; }
      case ValueType::kInt8: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<int8_t>(field)); v.v = int64_t{x}; break; }
      case ValueType::kInt16: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<int16_t>(field)); v.v = int64_t{x}; break; }
      case ValueType::kInt32: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<int32_t>(field)); v.v = int64_t{x}; break; }
      case ValueType::kInt64: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<int64_t>(field)); v.v = int64_t{x}; break; }
      case ValueType::kFloat32: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<float>(field)); v.v = double{x}; break; }
      case ValueType::kFloat64: { VEIL_ASSIGN_OR_RETURN(auto x, c_.read<double>(field)); v.v = x; break; }
      case ValueType::kBool: {
        VEIL_ASSIGN_OR_RETURN(auto x, c_.read<uint8_t>(field));
        if (x > 1) return c_.corrupt(field, at, fmt::format("bool must be 0 or 1, got {}", x));
        v.v = x == 1;
        break;
      }
      case ValueType::kString: { VEIL_ASSIGN_OR_RETURN(auto s, c_.read_string(field)); v.v = std::move(s); break; }
      case ValueType::kArray: {
        if (depth >= kMaxArrayDepth) return c_.corrupt(field, at, "arrays nested too deeply");
        VEIL_ASSIGN_OR_RETURN(uint32_t et, c_.read<uint32_t>(field + " (array element type)"));
        if (!valid_value_type(et)) return c_.corrupt(field, at, fmt::format("unknown array element type {}", et));
        v.array_type = static_cast<ValueType>(et);
        uint64_t len_at = c_.pos();
        VEIL_ASSIGN_OR_RETURN(uint64_t n, c_.read<uint64_t>(field + " (array length)"));
        uint64_t need = 0;
        if (mul_overflows(n, min_encoded_size(v.array_type), &need) || need > c_.remaining()) {
          return c_.corrupt(field + " (array length)", len_at,
                            fmt::format("{} elements cannot fit in the {} bytes left", n, c_.remaining()));
        }
        if (n > kMaxValues - std::min(n_values_, kMaxValues)) {
          return c_.corrupt(field + " (array length)", len_at, "more than 16777216 metadata values");
        }
        std::vector<Value> items;
        items.reserve(static_cast<size_t>(n));
        for (uint64_t i = 0; i < n; ++i) {
          VEIL_ASSIGN_OR_RETURN(Value e, read_value(v.array_type, key, depth + 1));
          items.push_back(std::move(e));
        }
        v.v = std::move(items);
        break;
      }
    }
    return v;
  }

 private:
  Cursor& c_;
  uint64_t n_values_ = 0;
};

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& ch : r) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return r;
}

}  // namespace

const TypeTraits* type_traits(uint32_t type_id) {
  for (const auto& e : kTypes) {
    if (e.id == type_id) return &e.traits;
  }
  return nullptr;
}

const TypeTraits* type_traits(TensorType type) { return type_traits(static_cast<uint32_t>(type)); }

std::string type_name(TensorType type) {
  const TypeTraits* t = type_traits(type);
  return t ? std::string(t->name) : fmt::format("type{}", static_cast<uint32_t>(type));
}

Result<TensorType> parse_type_name(std::string_view name) {
  std::string want = lower(name);
  for (const auto& e : kTypes) {
    if (e.traits.compute && lower(e.traits.name) == want) return static_cast<TensorType>(e.id);
  }
  return make_error(ErrorCode::kInvalidArgument,
                    "tensor type '{}': unknown (use F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K)",
                    name);
}

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::kUint8: return "uint8";
    case ValueType::kInt8: return "int8";
    case ValueType::kUint16: return "uint16";
    case ValueType::kInt16: return "int16";
    case ValueType::kUint32: return "uint32";
    case ValueType::kInt32: return "int32";
    case ValueType::kFloat32: return "float32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kUint64: return "uint64";
    case ValueType::kInt64: return "int64";
    case ValueType::kFloat64: return "float64";
  }
  return "unknown";
}

Result<File> File::open(const std::filesystem::path& path) {
  VEIL_ASSIGN_OR_RETURN(MappedFile m, MappedFile::open(path));
  auto holder = std::make_shared<MappedFile>(std::move(m));
  ByteView view = holder->view();
  VEIL_ASSIGN_OR_RETURN(File f, from_memory(std::shared_ptr<const void>(holder, holder.get()), view, path.string()));
  f.mapped_ = true;
  return f;
}

Result<File> File::from_memory(std::shared_ptr<const void> owner, ByteView bytes, std::string name) {
  File f;
  f.name_ = std::move(name);
  f.owner_ = std::move(owner);
  f.bytes_ = bytes;
  Cursor c(bytes, f.name_);
  Parser p(c);

  VEIL_ASSIGN_OR_RETURN(uint32_t magic, c.read<uint32_t>("magic"));
  if (magic != kMagic) return c.corrupt("magic", 0, "not a GGUF file (expected \"GGUF\")");
  VEIL_ASSIGN_OR_RETURN(f.version_, c.read<uint32_t>("version"));
  if (f.version_ != 2 && f.version_ != 3) {
    return make_error(ErrorCode::kUnsupported, "gguf {}: version at byte 4: version {} is not supported (2 or 3)",
                      f.name_, f.version_);
  }
  uint64_t tc_at = c.pos();
  VEIL_ASSIGN_OR_RETURN(uint64_t n_tensors, c.read<uint64_t>("tensor count"));
  uint64_t kc_at = c.pos();
  VEIL_ASSIGN_OR_RETURN(uint64_t n_kv, c.read<uint64_t>("metadata count"));
  // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
  if (n_kv > c.remaining() / 13) {
    return c.corrupt("metadata count", kc_at, fmt::format("{} entries cannot fit in the {} bytes left", n_kv, c.remaining()));
  }
  if (n_tensors > kMaxTensors || n_tensors > c.remaining() / 24) {
    return c.corrupt("tensor count", tc_at, fmt::format("{} tensors cannot fit in the file", n_tensors));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    uint64_t key_at = c.pos();
    VEIL_ASSIGN_OR_RETURN(std::string key, c.read_string(fmt::format("metadata key #{}", i)));
    uint64_t type_at = c.pos();
    VEIL_ASSIGN_OR_RETURN(uint32_t t, c.read<uint32_t>(fmt::format("type of '{}'", key)));
    if (!valid_value_type(t)) return c.corrupt(fmt::format("type of '{}'", key), type_at, fmt::format("unknown value type {}", t));
    VEIL_ASSIGN_OR_RETURN(Value v, p.read_value(static_cast<ValueType>(t), key, 0));
    if (f.metadata_.count(key)) return c.corrupt(fmt::format("metadata key '{}'", key), key_at, "duplicate key");
    f.metadata_.emplace(std::move(key), std::move(v));
  }

  if (const Value* a = f.find("general.alignment")) {
    const uint64_t* u = std::get_if<uint64_t>(&a->v);
    if (a->type != ValueType::kUint32 || !u || *u == 0 || (*u & (*u - 1)) != 0 || *u > (1u << 20)) {
      return make_error(ErrorCode::kCorrupt,
                        "gguf {}: metadata 'general.alignment': must be a uint32 power of two up to 1048576",
                        f.name_);
    }
    f.alignment_ = *u;
  }

  f.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    uint64_t at = c.pos();
    VEIL_ASSIGN_OR_RETURN(t.name, c.read_string(fmt::format("tensor #{} name", i)));
    std::string tf = fmt::format("tensor '{}'", t.name);
    uint64_t nd_at = c.pos();
    VEIL_ASSIGN_OR_RETURN(uint32_t nd, c.read<uint32_t>(tf + " dimension count"));
    if (nd == 0 || nd > kMaxDims) return c.corrupt(tf + " dimension count", nd_at, fmt::format("{} is not in 1..4", nd));
    uint64_t n = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t d_at = c.pos();
      VEIL_ASSIGN_OR_RETURN(uint64_t dim, c.read<uint64_t>(tf + " dimension"));
      if (dim == 0) return c.corrupt(tf + " dimension", d_at, "dimension is 0");
      if (mul_overflows(n, dim, &n) || n > (uint64_t{1} << 50)) return c.corrupt(tf + " dimension", d_at, "element count overflows");
      t.dims.push_back(dim);
    }
    t.n_elements = n;
    uint64_t ty_at = c.pos();
    VEIL_ASSIGN_OR_RETURN(uint32_t ty, c.read<uint32_t>(tf + " type"));
    const TypeTraits* tr = type_traits(ty);
    if (!tr) {
      return make_error(ErrorCode::kUnsupported, "gguf {}: {} type at byte {}: tensor type {} is not supported",
                        f.name_, tf, ty_at, ty);
    }
    t.type = static_cast<TensorType>(ty);
    if (t.dims[0] % tr->block_size != 0) {
      return c.corrupt(tf + " dimension", nd_at + 4,
                       fmt::format("row length {} is not a multiple of the {} block size {}", t.dims[0], tr->name,
                                   tr->block_size));
    }
    t.n_bytes = n / tr->block_size * tr->type_size;
    uint64_t off_at = c.pos();
    VEIL_ASSIGN_OR_RETURN(t.offset, c.read<uint64_t>(tf + " offset"));
    if (t.offset % f.alignment_ != 0) {
      return c.corrupt(tf + " offset", off_at, fmt::format("offset {} is not a multiple of the alignment {}", t.offset, f.alignment_));
    }
    if (f.tensor_index_.count(t.name)) return c.corrupt(tf + " name", at, "duplicate tensor name");
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
  }

  uint64_t pos = c.pos();
  f.data_offset_ = (pos + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  if (!f.tensors_.empty()) {
    if (f.data_offset_ > bytes.size()) {
      return c.corrupt("tensor data section", pos, fmt::format("aligned start {} is past the end of the file ({} bytes)",
                                                                f.data_offset_, bytes.size()));
    }
    uint64_t data_size = bytes.size() - f.data_offset_;
    for (auto& t : f.tensors_) {
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        return make_error(ErrorCode::kCorrupt,
                          "gguf {}: tensor '{}' data at byte {}: {} bytes at offset {} run past the end of the file",
                          f.name_, t.name, f.data_offset_ + t.offset, t.n_bytes, t.offset);
      }
      t.data = bytes.data() + f.data_offset_ + t.offset;
    }
  }
  return f;
}

const Value* File::find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
Error missing(const std::string& file, std::string_view key) {
  return make_error(ErrorCode::kNotFound, "gguf {}: metadata '{}' is missing", file, key);
}
Error wrong_type(const std::string& file, std::string_view key, const Value& v, std::string_view want) {
  std::string got = value_type_name(v.type);
  if (v.type == ValueType::kArray) got = fmt::format("array of {}", value_type_name(v.array_type));
  return make_error(ErrorCode::kCorrupt, "gguf {}: metadata '{}': expected {}, found {}", file, key, want, got);
}
bool is_int_type(ValueType t) {
  switch (t) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kUint16: case ValueType::kInt16:
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kUint64: case ValueType::kInt64: return true;
    default: return false;
  }
}
}  // namespace

Result<std::string> File::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (v->type != ValueType::kString) return wrong_type(name_, key, *v, "string");
  return std::get<std::string>(v->v);
}

Result<uint64_t> File::get_uint(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (const auto* u = std::get_if<uint64_t>(&v->v)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v->v)) {
    if (*i >= 0) return static_cast<uint64_t>(*i);
    return make_error(ErrorCode::kCorrupt, "gguf {}: metadata '{}': negative value where a count is expected", name_, key);
  }
  return wrong_type(name_, key, *v, "an unsigned integer");
}

Result<int64_t> File::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (const auto* i = std::get_if<int64_t>(&v->v)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v->v)) {
    if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
    return make_error(ErrorCode::kCorrupt, "gguf {}: metadata '{}': value does not fit in int64", name_, key);
  }
  return wrong_type(name_, key, *v, "an integer");
}

Result<double> File::get_float(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (const auto* d = std::get_if<double>(&v->v)) return *d;
  if (const auto* i = std::get_if<int64_t>(&v->v)) return static_cast<double>(*i);
  if (const auto* u = std::get_if<uint64_t>(&v->v)) return static_cast<double>(*u);
  return wrong_type(name_, key, *v, "a number");
}

Result<bool> File::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (const auto* b = std::get_if<bool>(&v->v)) return *b;
  return wrong_type(name_, key, *v, "bool");
}

Result<std::vector<std::string>> File::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (v->type != ValueType::kArray || v->array_type != ValueType::kString) return wrong_type(name_, key, *v, "array of string");
  const auto& items = std::get<std::vector<Value>>(v->v);
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const auto& e : items) out.push_back(std::get<std::string>(e.v));
  return out;
}

Result<std::vector<float>> File::get_float_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (v->type != ValueType::kArray ||
      (v->array_type != ValueType::kFloat32 && v->array_type != ValueType::kFloat64 && !is_int_type(v->array_type))) {
    return wrong_type(name_, key, *v, "array of float");
  }
  const auto& items = std::get<std::vector<Value>>(v->v);
  std::vector<float> out;
  out.reserve(items.size());
  for (const auto& e : items) {
    if (const auto* d = std::get_if<double>(&e.v)) out.push_back(static_cast<float>(*d));
    else if (const auto* i = std::get_if<int64_t>(&e.v)) out.push_back(static_cast<float>(*i));
    else out.push_back(static_cast<float>(std::get<uint64_t>(e.v)));
  }
  return out;
}

Result<std::vector<int64_t>> File::get_int_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(name_, key);
  if (v->type != ValueType::kArray || !is_int_type(v->array_type)) return wrong_type(name_, key, *v, "array of integer");
  const auto& items = std::get<std::vector<Value>>(v->v);
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (const auto& e : items) {
    if (const auto* i = std::get_if<int64_t>(&e.v)) out.push_back(*i);
    else out.push_back(static_cast<int64_t>(std::get<uint64_t>(e.v)));
  }
  return out;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace veil::gguf
