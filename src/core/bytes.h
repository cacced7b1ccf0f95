// Bytes: owned byte strings; ByteView: borrowed. SecretBytes zeroes itself when destroyed.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace veil {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

inline ByteView as_bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }
inline std::string_view as_chars(ByteView b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }
inline Bytes to_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Overwrites memory in a way the compiler may not elide.
void secure_zero(void* p, size_t n);

// Constant-time equality: the time taken depends only on the lengths.
bool ct_equal(ByteView a, ByteView b);

// A byte buffer for key material: zeroed on destruction, on clear() and before reallocation.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t n) : data_(n) {}
  explicit SecretBytes(ByteView v) : data_(v.begin(), v.end()) {}
  SecretBytes(const SecretBytes&) = default;
  SecretBytes& operator=(const SecretBytes& o) {
    if (this != &o) { wipe(); data_ = o.data_; }
    return *this;
  }
  SecretBytes(SecretBytes&& o) noexcept : data_(std::move(o.data_)) { o.data_.clear(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) { wipe(); data_ = std::move(o.data_); o.data_.clear(); }
    return *this;
  }
  ~SecretBytes() { wipe(); }

  uint8_t* data() { return data_.data(); }
  const uint8_t* data() const { return data_.data(); }
  size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }
  ByteView view() const { return {data_.data(), data_.size()}; }
  std::span<uint8_t> span() { return {data_.data(), data_.size()}; }
  void clear() { wipe(); data_.clear(); }

 private:
  void wipe() { if (!data_.empty()) secure_zero(data_.data(), data_.size()); }
  std::vector<uint8_t> data_;
};

}  // namespace veil
