// Files: whole-file reads with a size bound, and atomic writes (temp file, fsync, rename, fsync dir),
// so a refused or interrupted write never leaves a partial file behind.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

#include "core/bytes.h"
#include "core/result.h"

namespace veil {

inline constexpr size_t kDefaultMaxFileSize = size_t{1} << 30;

Result<Bytes> read_file(const std::filesystem::path& path, size_t max_size = kDefaultMaxFileSize);
Result<std::string> read_text_file(const std::filesystem::path& path, size_t max_size = kDefaultMaxFileSize);

// Writes `data` to `path` atomically with the given permission bits (e.g. 0600 for secrets).
Status write_file_atomic(const std::filesystem::path& path, ByteView data, unsigned mode = 0644);

// A read-only memory map of a whole file. Moves, never copies.
class MappedFile {
 public:
  static Result<MappedFile> open(const std::filesystem::path& path);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  ByteView view() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::filesystem::path path_;
};

}  // namespace veil
