// The "nitro" provider: an attestation document from the Nitro Secure Module through /dev/nsm.
// report_data travels as user_data (64 bytes), which the nitro verifier returns as Claims.report_data.
// NSM offers no sealing key, so sealing_root() is kUnsupported.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "attest/cbor_value.h"
#include "attest/formats.h"
#include "attest/nitro_document.h"

namespace veil::attest::nitro {
namespace {

struct NsmIovec {
  uint64_t addr;
  uint64_t len;
};
struct NsmRaw {
  NsmIovec request;
  NsmIovec response;
};
constexpr unsigned long kNsmIoctlRaw = _IOWR(0x0A, 0x0, NsmRaw);

class NitroProvider final : public Provider {
 public:
  explicit NitroProvider(std::filesystem::path device) : device_(std::move(device)) {}
  TeeType type() const override { return TeeType::kNitro; }

  Result<Evidence> quote(const ReportData& report_data) override {
    Bytes request = nsm_attestation_request(report_data);
    Bytes response(kNsmResponseMax);
    int fd = ::open(device_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      return make_error(ErrorCode::kIo, "nitro provider: cannot open {}: {}", device_.string(), std::strerror(errno));
    }
    NsmRaw raw{{reinterpret_cast<uint64_t>(request.data()), request.size()},
               {reinterpret_cast<uint64_t>(response.data()), response.size()}};
    int rc = ::ioctl(fd, kNsmIoctlRaw, &raw);
    int err = errno;
    ::close(fd);
    if (rc != 0) {
      return make_error(err == ENOTTY ? ErrorCode::kUnsupported : ErrorCode::kIo,
                        "nitro provider: NSM request on {} failed: {}", device_.string(), std::strerror(err));
    }
    if (raw.response.len > response.size()) {
      return make_error(ErrorCode::kCorrupt, "nitro provider: NSM response length {} exceeds the buffer", raw.response.len);
    }
    response.resize(static_cast<size_t>(raw.response.len));
    VEIL_ASSIGN_OR_RETURN(Bytes doc, nsm_attestation_response(response));
    // Fail closed on a document that does not carry what was asked.
    VEIL_ASSIGN_OR_RETURN(Document parsed, parse_document(doc));
    if (!parsed.user_data || !ct_equal(*parsed.user_data, report_data)) {
      return make_error(ErrorCode::kSecurity, "nitro provider: the NSM document does not carry the requested user_data");
    }
    return Evidence{TeeType::kNitro, std::move(doc)};
  }

  Result<SecretBytes> sealing_root() override {
    return make_error(ErrorCode::kUnsupported, "nitro provider: the Nitro Secure Module offers no sealing key");
  }

 private:
  std::filesystem::path device_;
};

}  // namespace

Bytes nsm_attestation_request(ByteView user_data) {
  Bytes out;
  cbor::encode_map_head(out, 1);
  cbor::encode_text(out, "Attestation");
  cbor::encode_map_head(out, 3);
  cbor::encode_text(out, "user_data");
  cbor::encode_bytes(out, user_data);
  cbor::encode_text(out, "nonce");
  cbor::encode_null(out);
  cbor::encode_text(out, "public_key");
  cbor::encode_null(out);
  return out;
}

Result<Bytes> nsm_attestation_response(ByteView response) {
  VEIL_ASSIGN_OR_RETURN(cbor::Value v, cbor::parse(response, "NSM response", cbor::Limits{kNsmResponseMax, 4, 64}));
  if (v.kind != cbor::Kind::kMap || v.map_size() != 1) {
    return make_error(ErrorCode::kCorrupt, "NSM response: byte offset 0: expected a map with one entry");
  }
  if (const cbor::Value* e = v.find("Error")) {
    std::string code = e->kind == cbor::Kind::kText ? std::string(e->text().substr(0, 64)) : "?";
    return make_error(ErrorCode::kUnavailable, "NSM refused the attestation request: {}", code);
  }
  const cbor::Value* att = v.find("Attestation");
  if (!att || att->kind != cbor::Kind::kMap) {
    return make_error(ErrorCode::kCorrupt, "NSM response: no Attestation map");
  }
  const cbor::Value* doc = att->find("document");
  if (!doc || doc->kind != cbor::Kind::kBytes || doc->bytes.empty()) {
    return make_error(ErrorCode::kCorrupt, "NSM response: Attestation.document is not a byte string");
  }
  return Bytes(doc->bytes.begin(), doc->bytes.end());
}

}  // namespace veil::attest::nitro

namespace veil::attest {

Result<std::unique_ptr<Provider>> make_nitro_provider(const ProviderOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(options.nsm_device, ec)) {
    return make_error(ErrorCode::kUnsupported, "nitro provider: no Nitro Secure Module at {}",
                      options.nsm_device.string());
  }
  return std::unique_ptr<Provider>(std::make_unique<nitro::NitroProvider>(options.nsm_device));
}

}  // namespace veil::attest
