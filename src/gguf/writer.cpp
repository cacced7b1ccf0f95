#include "gguf/writer.h"

#include <cstring>
#include <set>

namespace veil::gguf {

Value make_u32(uint32_t x) { return Value{ValueType::kUint32, ValueType::kUint32, uint64_t{x}}; }
Value make_i32(int32_t x) { return Value{ValueType::kInt32, ValueType::kUint32, int64_t{x}}; }
Value make_u64(uint64_t x) { return Value{ValueType::kUint64, ValueType::kUint32, x}; }
Value make_f32(float x) { return Value{ValueType::kFloat32, ValueType::kUint32, double{x}}; }
Value make_bool(bool x) { return Value{ValueType::kBool, ValueType::kUint32, x}; }
Value make_string(std::string s) { return Value{ValueType::kString, ValueType::kUint32, std::move(s)}; }

Value make_string_array(const std::vector<std::string>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (const auto& s : items) v.push_back(make_string(s));
  return Value{ValueType::kArray, ValueType::kString, std::move(v)};
}
Value make_f32_array(const std::vector<float>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (float x : items) v.push_back(make_f32(x));
  return Value{ValueType::kArray, ValueType::kFloat32, std::move(v)};
}
Value make_i32_array(const std::vector<int32_t>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (int32_t x : items) v.push_back(make_i32(x));
  return Value{ValueType::kArray, ValueType::kInt32, std::move(v)};
}

void Writer::set(std::string key, Value value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

void Writer::remove(std::string_view key) {
  for (auto it = metadata_.begin(); it != metadata_.end(); ++it) {
    if (it->first == key) {
      metadata_.erase(it);
      return;
    }
  }
}

void Writer::copy_metadata(const File& file) {
  for (const auto& [k, v] : file.metadata()) {
    if (k != "general.alignment") set(k, v);
  }
}

Status Writer::add_tensor(std::string name, std::vector<uint64_t> dims, TensorType type, Bytes data) {
  const TypeTraits* tr = type_traits(type);
  if (!tr) return make_error(ErrorCode::kInvalidArgument, "gguf writer: tensor '{}': unknown type", name);
  if (dims.empty() || dims.size() > 4) {
    return make_error(ErrorCode::kInvalidArgument, "gguf writer: tensor '{}': {} dimensions (1..4)", name, dims.size());
  }
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  if (dims[0] % tr->block_size != 0) {
    return make_error(ErrorCode::kInvalidArgument, "gguf writer: tensor '{}': row length {} not a multiple of {}",
                      name, dims[0], tr->block_size);
  }
  uint64_t want = n / tr->block_size * tr->type_size;
  if (data.size() != want) {
    return make_error(ErrorCode::kInvalidArgument, "gguf writer: tensor '{}': {} bytes given, {} needed", name,
                      data.size(), want);
  }
  for (const auto& t : tensors_) {
    if (t.name == name) return make_error(ErrorCode::kInvalidArgument, "gguf writer: tensor '{}' added twice", name);
  }
  tensors_.push_back({std::move(name), std::move(dims), type, std::move(data)});
  return ok_status();
}

namespace {
template <typename T>
void put(Bytes& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}
void put_string(Bytes& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
void put_scalar(Bytes& out, const Value& v, ValueType t) {
  auto u = [&]() -> uint64_t {
    if (const auto* x = std::get_if<uint64_t>(&v.v)) return *x;
    if (const auto* x = std::get_if<int64_t>(&v.v)) return static_cast<uint64_t>(*x);
    if (const auto* x = std::get_if<bool>(&v.v)) return *x ? 1 : 0;
    if (const auto* x = std::get_if<double>(&v.v)) return static_cast<uint64_t>(*x);
    return 0;
  };
  auto d = [&]() -> double {
    if (const auto* x = std::get_if<double>(&v.v)) return *x;
    if (const auto* x = std::get_if<int64_t>(&v.v)) return static_cast<double>(*x);
    if (const auto* x = std::get_if<uint64_t>(&v.v)) return static_cast<double>(*x);
    return 0;
  };
  switch (t) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kBool: put<uint8_t>(out, static_cast<uint8_t>(u())); break;
    case ValueType::kUint16: case ValueType::kInt16: put<uint16_t>(out, static_cast<uint16_t>(u())); break;
    case ValueType::kUint32: case ValueType::kInt32: put<uint32_t>(out, static_cast<uint32_t>(u())); break;
    case ValueType::kUint64: case ValueType::kInt64: put<uint64_t>(out, u()); break;
    case ValueType::kFloat32: put<float>(out, static_cast<float>(d())); break;
    case ValueType::kFloat64: put<double>(out, d()); break;
    case ValueType::kString: {
      const auto* s = std::get_if<std::string>(&v.v);
      put_string(out, s ? *s : std::string());
      break;
    }
    case ValueType::kArray: {
      const auto* items = std::get_if<std::vector<Value>>(&v.v);
      put<uint32_t>(out, static_cast<uint32_t>(v.array_type));
      put<uint64_t>(out, items ? items->size() : 0);
      if (items) {
        for (const auto& e : *items) put_scalar(out, e, v.array_type);
      }
      break;
    }
  }
}
}  // namespace

Bytes Writer::finish() {
  Bytes out;
  put<uint32_t>(out, 0x46554747);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  bool custom_alignment = alignment_ != 32;
  put<uint64_t>(out, metadata_.size() + (custom_alignment ? 1 : 0));
  if (custom_alignment) {
    put_string(out, "general.alignment");
    put<uint32_t>(out, static_cast<uint32_t>(ValueType::kUint32));
    put<uint32_t>(out, alignment_);
  }
  for (const auto& [k, v] : metadata_) {
    put_string(out, k);
    put<uint32_t>(out, static_cast<uint32_t>(v.type));
    put_scalar(out, v, v.type);
  }
  auto align = [&](uint64_t x) { return (x + alignment_ - 1) / alignment_ * alignment_; };
  uint64_t offset = 0;
  uint64_t total = 0;
  for (const auto& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out, d);
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset = align(offset + t.data.size());
  }
  total = offset;
  size_t data_start = align(out.size());
  out.reserve(data_start + total);
  out.resize(data_start, 0);
  for (auto& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    Bytes().swap(t.data);
    out.resize(align(out.size() - data_start) + data_start, 0);
  }
  tensors_.clear();
  return out;
}

Status Writer::write(const std::filesystem::path& path) {
  Bytes b = finish();
  return write_file_atomic(path, b);
}

}  // namespace veil::gguf
