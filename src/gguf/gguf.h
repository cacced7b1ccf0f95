// gguf: a validating reader (and writer) for GGUF v2/v3 files. Read this first.
//
// Invariants: every header field, count, string length, array length, tensor offset, size and
// alignment is checked against the buffer size before use. A malformed file yields one kCorrupt
// error naming the field and byte offset; never a crash or an out-of-bounds read. A file with zero
// tensors (a vocabulary-only GGUF) is valid.
//
// A File views its bytes without copying: either a memory map of a file on disk, or a buffer the
// caller owns (a sealed model decrypted inside the TEE; see src/sealed). Tensor data pointers stay
// valid as long as the File lives.
//
// Thread-safety: a File is immutable after open and may be read from many threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/core.h"

namespace veil::gguf {

// GGUF metadata value types, as numbered by the format.
enum class ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6, kBool = 7,
  kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

// A metadata value. Integers of every width are held widened; the original type is kept.
struct Value {
  ValueType type = ValueType::kUint32;
  ValueType array_type = ValueType::kUint32;  // element type when type == kArray
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<Value>> v;
};

// GGML tensor type ids as GGUF stores them (only the ones Veil reads are named).
enum class TensorType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};

// Block layout of a tensor type: `block_size` elements are stored in `type_size` bytes.
struct TypeTraits {
  const char* name;     // "F32", "Q4_K", ...
  uint32_t block_size;
  uint32_t type_size;
  bool compute;         // Veil can compute with it (src/tensor); others are readable but refused by the engine
};
// nullptr for a type id GGUF does not define (or Veil cannot size).
const TypeTraits* type_traits(TensorType type);
const TypeTraits* type_traits(uint32_t type_id);
// "F32", ... or "type<N>".
std::string type_name(TensorType type);
// Parses "f32", "Q4_K", "q8_0" (case-insensitive) into a type Veil computes with.
Result<TensorType> parse_type_name(std::string_view name);
const char* value_type_name(ValueType type);

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // GGUF order: dims[0] is the fastest-varying (row length)
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;         // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;
};

class File {
 public:
  // Memory-maps `path` and validates it.
  static Result<File> open(const std::filesystem::path& path);
  // Validates a buffer held by `owner` (kept alive by the File); `name` is used in error messages.
  static Result<File> from_memory(std::shared_ptr<const void> owner, ByteView bytes, std::string name);

  uint32_t version() const { return version_; }
  const std::string& name() const { return name_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // byte offset of the tensor data section
  ByteView bytes() const { return bytes_; }
  // True for File::open: the bytes are a read-only private map of the file, so pages can be dropped and re-read.
  bool mapped() const { return mapped_; }

  const std::map<std::string, Value, std::less<>>& metadata() const { return metadata_; }
  const Value* find(std::string_view key) const;

  // Typed accessors: kNotFound if absent, kCorrupt naming the key if the type does not fit.
  Result<std::string> get_string(std::string_view key) const;
  Result<uint64_t> get_uint(std::string_view key) const;   // any non-negative integer type
  Result<int64_t> get_int(std::string_view key) const;     // any integer type
  Result<double> get_float(std::string_view key) const;    // float32/float64 (and integers)
  Result<bool> get_bool(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<float>> get_float_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;

 private:
  uint32_t version_ = 0;
  std::string name_;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  ByteView bytes_;
  bool mapped_ = false;
  std::shared_ptr<const void> owner_;
  std::map<std::string, Value, std::less<>> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace veil::gguf
