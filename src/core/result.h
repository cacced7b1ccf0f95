// Error, Status and Result<T>: how failures cross component boundaries.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace veil {

// The code decides the process exit code (docs/cli.md): kUsage -> 2, kSecurity -> 3, others -> 1.
enum class ErrorCode {
  kInvalidArgument,  // a caller passed something invalid (API misuse or bad request parameter)
  kUsage,            // the command line is wrong
  kNotFound,         // a file, key, model or entry does not exist
  kIo,               // the operating system refused a read, write, bind or connect
  kCorrupt,          // input from outside is malformed (file, message, evidence encoding)
  kUnsupported,      // well-formed but not supported (type, version, architecture)
  kSecurity,         // verification or policy refused: attestation, signature, MAC, rollback
  kTimeout,          // a deadline passed
  kUnavailable,      // a peer or resource is temporarily unavailable (retry may help)
  kResourceExhausted,// a limit was reached (queue full, context too long, rate limit)
  kCancelled,        // the operation was cancelled
  kInternal,         // a bug in Veil
};

const char* error_code_name(ErrorCode code);

class Error {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // Prefix context: Error(kIo, "read failed").wrap("loading model") -> "loading model: read failed".
  Error wrap(std::string_view context) const& { return Error(code_, fmt::format("{}: {}", context, message_)); }
  Error&& wrap(std::string_view context) && {
    message_ = fmt::format("{}: {}", context, message_);
    return std::move(*this);
  }

 private:
  ErrorCode code_;
  std::string message_;
};

template <typename... Args>
Error make_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Error(code, fmt::format(f, std::forward<Args>(args)...));
}

// Result<T> holds a T or an Error. Result<void> is Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { assert(!ok()); return std::get<1>(v_); }
  Error&& error() && { assert(!ok()); return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), has_error_(true) {}  // NOLINT
  bool ok() const { return !has_error_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { assert(!ok()); return err_; }
  Error&& error() && { assert(!ok()); return std::move(err_); }

 private:
  Error err_{ErrorCode::kInternal, ""};
  bool has_error_ = false;
};

using Status = Result<void>;
inline Status ok_status() { return Status(); }

}  // namespace veil

#define VEIL_CONCAT_INNER_(a, b) a##b
#define VEIL_CONCAT_(a, b) VEIL_CONCAT_INNER_(a, b)

// VEIL_TRY(expr): evaluate a Status/Result expression, return its error on failure.
#define VEIL_TRY(expr)                                   \
  do {                                                   \
    auto&& veil_try_r_ = (expr);                         \
    if (!veil_try_r_.ok()) return std::move(veil_try_r_).error(); \
  } while (0)

// VEIL_ASSIGN_OR_RETURN(decl, expr): `auto x` or `x` = value of a Result, or return its error.
#define VEIL_ASSIGN_OR_RETURN(decl, expr) \
  VEIL_ASSIGN_OR_RETURN_IMPL_(VEIL_CONCAT_(veil_aor_, __LINE__), decl, expr)
#define VEIL_ASSIGN_OR_RETURN_IMPL_(tmp, decl, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).error();      \
  decl = std::move(tmp).value()
