// gguf::Writer: builds a GGUF v3 file (metadata in insertion order, tensors aligned to 32 bytes) and writes it
// atomically. Used by `veil convert`, `veil quantize`, `veil synth`, the tests and the fuzz seeds.
//
// Memory: tensor bytes are held until finish(), which moves them into the output buffer one by one, so the peak
// is about one copy of the model. Thread-safety: a Writer belongs to one thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "gguf/gguf.h"

namespace veil::gguf {

Value make_u32(uint32_t x);
Value make_i32(int32_t x);
Value make_u64(uint64_t x);
Value make_f32(float x);
Value make_bool(bool x);
Value make_string(std::string s);
Value make_string_array(const std::vector<std::string>& items);
Value make_f32_array(const std::vector<float>& items);
Value make_i32_array(const std::vector<int32_t>& items);

class Writer {
 public:
  explicit Writer(uint32_t alignment = 32) : alignment_(alignment) {}

  // Sets (or replaces, keeping its position) a metadata entry.
  void set(std::string key, Value value);
  void remove(std::string_view key);
  // Copies every metadata entry of `file` (general.alignment excluded: the writer sets its own).
  void copy_metadata(const File& file);

  // Adds a tensor; `data` must hold exactly the bytes `type` needs for `dims` (kInvalidArgument otherwise).
  Status add_tensor(std::string name, std::vector<uint64_t> dims, TensorType type, Bytes data);

  // The complete file; the writer is emptied of tensor data.
  Bytes finish();
  // finish() then write_file_atomic(path).
  Status write(const std::filesystem::path& path);

 private:
  struct PendingTensor {
    std::string name;
    std::vector<uint64_t> dims;
    TensorType type;
    Bytes data;
  };
  uint32_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace veil::gguf
