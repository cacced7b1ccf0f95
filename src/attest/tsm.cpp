// configfs-tsm providers for TDX and SEV-SNP (see tsm.h), and the SNP sealing root.
#include "attest/tsm.h"

#include <fcntl.h>
#include <linux/sev-guest.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "crypto/crypto.h"

namespace veil::attest {

namespace {

constexpr size_t kMaxBlob = 1 << 20;

Result<std::string> read_attr(const std::filesystem::path& p) {
  auto t = read_text_file(p, 4096);
  if (!t.ok()) return std::move(t).error().wrap("configfs-tsm");
  std::string s = *t;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

Result<uint64_t> read_generation(const std::filesystem::path& entry) {
  VEIL_ASSIGN_OR_RETURN(std::string s, read_attr(entry / "generation"));
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
    return make_error(ErrorCode::kCorrupt, "configfs-tsm {}: 'generation' is not a number", entry.string());
  return std::stoull(s);
}

Status write_inblob(const std::filesystem::path& p, const ReportData& rd) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return make_error(ErrorCode::kIo, "configfs-tsm {}: open: {}", p.string(), std::strerror(errno));
  ssize_t n = ::write(fd, rd.data(), rd.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(rd.size()))
    return make_error(ErrorCode::kIo, "configfs-tsm {}: write: {}", p.string(), n < 0 ? std::strerror(err) : "short write");
  return ok_status();
}

struct EntryGuard {
  std::filesystem::path path;
  ~EntryGuard() {
    if (!path.empty()) ::rmdir(path.c_str());  // configfs removes the attributes with the folder
  }
};

}  // namespace

Result<TsmReport> tsm_get_report(const std::filesystem::path& root, std::string_view expected_provider, const ReportData& report_data,
                                 const TsmHooks& hooks) {
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec))
    return make_error(ErrorCode::kUnsupported, "configfs-tsm: {} does not exist (no TEE guest support or configfs not mounted)",
                      root.string());
  Bytes rnd = crypto::random_bytes(8);
  std::filesystem::path entry = root / fmt::format("veil-{}-{}", ::getpid(), to_hex(rnd));
  if (::mkdir(entry.c_str(), 0700) != 0)
    return make_error(ErrorCode::kIo, "configfs-tsm: mkdir {}: {}", entry.string(), std::strerror(errno));
  EntryGuard guard{entry};
  if (hooks.after_mkdir) hooks.after_mkdir(entry);
  VEIL_ASSIGN_OR_RETURN(std::string provider, read_attr(entry / "provider"));
  if (provider != expected_provider)
    return make_error(ErrorCode::kSecurity, "configfs-tsm {}: provider is '{}', expected '{}'", entry.string(), provider.substr(0, 32),
                      expected_provider);
  VEIL_ASSIGN_OR_RETURN(uint64_t gen_before, read_generation(entry));
  VEIL_TRY(write_inblob(entry / "inblob", report_data));
  if (hooks.after_inblob_write) hooks.after_inblob_write(entry);
  TsmReport r;
  r.provider = provider;
  auto out = read_file(entry / "outblob", kMaxBlob);
  if (!out.ok()) return std::move(out).error().wrap("configfs-tsm outblob");
  r.outblob = std::move(*out);
  if (std::filesystem::exists(entry / "auxblob", ec)) {
    auto aux = read_file(entry / "auxblob", kMaxBlob);
    if (aux.ok()) r.auxblob = std::move(*aux);  // optional: absent or empty on most hosts
  }
  VEIL_ASSIGN_OR_RETURN(r.generation, read_generation(entry));
  if (r.generation != gen_before + 1)
    return make_error(ErrorCode::kSecurity,
                      "configfs-tsm {}: generation went from {} to {} around our one write: another writer raced us", entry.string(),
                      gen_before, r.generation);
  if (r.outblob.empty()) return make_error(ErrorCode::kCorrupt, "configfs-tsm {}: empty outblob", entry.string());
  return r;
}

namespace {

class TsmProvider final : public Provider {
 public:
  TsmProvider(TeeType type, ProviderOptions options, TsmHooks hooks)
      : type_(type), options_(std::move(options)), hooks_(std::move(hooks)) {}
  TeeType type() const override { return type_; }

  Result<Evidence> quote(const ReportData& report_data) override {
    const char* provider = type_ == TeeType::kTdx ? "tdx_guest" : "sev_guest";
    VEIL_ASSIGN_OR_RETURN(TsmReport r, tsm_get_report(options_.tsm_root, provider, report_data, hooks_));
    return Evidence{type_, std::move(r.outblob)};
  }

  Result<SecretBytes> sealing_root() override {
    if (type_ == TeeType::kTdx)
      return Error(ErrorCode::kUnsupported,
                   "tdx provider: TDX has no hardware sealing key; derive keys from a key broker (kbs) instead");
    // SEV-SNP: MSG_KEY_REQ through /dev/sev-guest, a key derived from the VCEK root and bound to the
    // launch measurement and guest policy (SEV-SNP ABI, "MSG_KEY_REQ").
    int fd = ::open("/dev/sev-guest", O_RDWR | O_CLOEXEC);
    if (fd < 0) return make_error(ErrorCode::kUnsupported, "sev-snp provider: /dev/sev-guest: {}", std::strerror(errno));
    snp_derived_key_req req{};
    req.root_key_select = 0;                        // VCEK-derived
    req.guest_field_select = (1u << 0) | (1u << 3);  // guest policy, measurement
    snp_derived_key_resp resp{};
    snp_guest_request_ioctl io{};
    io.msg_version = 1;
    io.req_data = reinterpret_cast<uint64_t>(&req);
    io.resp_data = reinterpret_cast<uint64_t>(&resp);
    int rc = ::ioctl(fd, SNP_GET_DERIVED_KEY, &io);
    int err = errno;
    ::close(fd);
    if (rc != 0) {
      secure_zero(&resp, sizeof resp);
      return make_error(ErrorCode::kIo, "sev-snp provider: SNP_GET_DERIVED_KEY failed: {}", std::strerror(err));
    }
    uint32_t status = static_cast<uint32_t>(resp.data[0]) | (static_cast<uint32_t>(resp.data[1]) << 8) |
                      (static_cast<uint32_t>(resp.data[2]) << 16) | (static_cast<uint32_t>(resp.data[3]) << 24);
    if (status != 0) {
      secure_zero(&resp, sizeof resp);
      return make_error(ErrorCode::kIo, "sev-snp provider: MSG_KEY_RSP status 0x{:x}", status);
    }
    // MSG_KEY_RSP: status u32, reserved to 0x20, derived key [32] at 0x20.
    SecretBytes key(ByteView(resp.data + 0x20, 32));
    secure_zero(&resp, sizeof resp);
    return crypto::hkdf(crypto::HashAlg::kSha384, as_bytes("veil-snp-sealing-root-v1"), key.view(), {}, 32);
  }

 private:
  TeeType type_;
  ProviderOptions options_;
  TsmHooks hooks_;
};

}  // namespace

Result<std::unique_ptr<Provider>> make_tsm_provider(TeeType type, const ProviderOptions& options, TsmHooks hooks) {
  if (type != TeeType::kTdx && type != TeeType::kSevSnp)
    return Error(ErrorCode::kInvalidArgument, "configfs-tsm provides only tdx and sev-snp evidence");
  std::error_code ec;
  if (!std::filesystem::is_directory(options.tsm_root, ec))
    return make_error(ErrorCode::kUnsupported, "{} provider: configfs-tsm folder {} does not exist", tee_type_name(type),
                      options.tsm_root.string());
  return std::unique_ptr<Provider>(new TsmProvider(type, options, std::move(hooks)));
}

Result<std::unique_ptr<Provider>> make_tdx_provider(const ProviderOptions& options) {
  return make_tsm_provider(TeeType::kTdx, options);
}
Result<std::unique_ptr<Provider>> make_snp_provider(const ProviderOptions& options) {
  return make_tsm_provider(TeeType::kSevSnp, options);
}

}  // namespace veil::attest
