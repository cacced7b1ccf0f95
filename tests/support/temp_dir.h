// A temporary folder for one test: fresh, private to it, and removed with everything in it when the object goes
// (a moved-from object owns nothing).
// Header-only, so every test binary can use it without linking veil_test_support.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace veil::testsupport {

// mkdtemp under the system's temporary directory ("<prefix>-XXXXXX"): no two tests, threads or test processes
// running at once share a folder. Throws std::system_error when the folder cannot be made (GoogleTest reports it
// as the test's failure).
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "veil-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::system_error(errno, std::generic_category(), "test support: mkdtemp " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() { remove(); }
  TempDir(TempDir&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  TempDir& operator=(TempDir&& o) noexcept {
    if (this != &o) {
      remove();
      path_ = std::exchange(o.path_, {});
    }
    return *this;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::filesystem::path& name) const { return path_ / name; }

 private:
  void remove() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
};

}  // namespace veil::testsupport
