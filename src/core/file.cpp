#include "core/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace veil {
namespace {

Error os_error(std::string_view what, const std::filesystem::path& path) {
  int e = errno;
  return make_error(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo, "{} {}: {}", what, path.string(),
                    std::strerror(e));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { if (fd_ >= 0) ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { int f = fd_; fd_ = -1; return f; }

 private:
  int fd_;
};

}  // namespace

Result<Bytes> read_file(const std::filesystem::path& path, size_t max_size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return os_error("cannot open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return os_error("cannot stat", path);
  if (!S_ISREG(st.st_mode)) return make_error(ErrorCode::kIo, "{} is not a regular file", path.string());
  if (static_cast<uint64_t>(st.st_size) > max_size) {
    return make_error(ErrorCode::kResourceExhausted, "{} is {} bytes, larger than the limit of {}", path.string(),
                      st.st_size, max_size);
  }
  Bytes out(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return os_error("cannot read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

Result<std::string> read_text_file(const std::filesystem::path& path, size_t max_size) {
  VEIL_ASSIGN_OR_RETURN(Bytes b, read_file(path, max_size));
  return std::string(b.begin(), b.end());
}

Status write_file_atomic(const std::filesystem::path& path, ByteView data, unsigned mode) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  std::string tmpl = (dir / fmt::format(".{}.tmp-XXXXXX", path.filename().string())).string();
  int raw = ::mkstemp(tmpl.data());
  if (raw < 0) return os_error("cannot create temporary file in", dir);
  Fd fd(raw);
  auto fail = [&](std::string_view what) {
    Error e = os_error(what, tmpl);
    ::unlink(tmpl.c_str());
    return e;
  };
  if (::fchmod(fd.get(), mode) != 0) return fail("cannot chmod");
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("cannot fsync");
  if (::close(fd.release()) != 0) return fail("cannot close");
  if (::rename(tmpl.c_str(), path.c_str()) != 0) return fail("cannot rename");
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() >= 0) ::fsync(dfd.get());
  return ok_status();
}

Result<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return os_error("cannot open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return os_error("cannot stat", path);
  if (!S_ISREG(st.st_mode)) return make_error(ErrorCode::kIo, "{} is not a regular file", path.string());
  MappedFile m;
  m.path_ = path;
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ == 0) return m;
  void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (p == MAP_FAILED) return os_error("cannot map", path);
  m.data_ = static_cast<const uint8_t*>(p);
  return m;
}

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_), path_(std::move(o.path_)) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = o.data_;
    size_ = o.size_;
    path_ = std::move(o.path_);
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace veil
