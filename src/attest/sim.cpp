// The simulated TEE: provider and verifier (see sim.h for the format).
#include "attest/sim.h"

#include <sys/stat.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "crypto/crypto.h"

namespace veil::attest {

namespace {

constexpr char kMagic[] = "VEILSIM2";
constexpr char kMagicV1[] = "VEILSIM1";
constexpr size_t kMagicSize = 8;
constexpr std::string_view kDomain = "veil-sim-evidence-v2";
// The platform signing key (ECDSA P-256) is derived from the 32-byte seed in the key file.
constexpr std::string_view kPlatformKeyInfo = "veil-sim-platform-key/p256/v1";
constexpr size_t kSignatureSize = 64;  // r || s
constexpr size_t kMaxBody = 4096;
constexpr size_t kSeedSize = 32;

Error corrupt(std::string_view what) { return Error(ErrorCode::kCorrupt, fmt::format("sim evidence: {}", what)); }

Result<SecretBytes> load_seed(const std::filesystem::path& key_file, bool create) {
  if (key_file.empty()) return Error(ErrorCode::kInvalidArgument, "sim provider: no platform key file configured");
  struct stat st {};
  if (::stat(key_file.c_str(), &st) != 0) {
    if (errno != ENOENT) return make_error(ErrorCode::kIo, "sim platform key {}: {}", key_file.string(), std::strerror(errno));
    if (!create) return make_error(ErrorCode::kNotFound, "sim platform key {}: does not exist (create it with --create-key)", key_file.string());
    SecretBytes seed(kSeedSize);
    crypto::random_bytes(seed.span());
    VEIL_TRY(write_file_atomic(key_file, seed.view(), 0600));
    return seed;
  }
  if ((st.st_mode & 077) != 0)
    return make_error(ErrorCode::kSecurity, "sim platform key {}: mode {:o} lets others read it (must be 0600)", key_file.string(),
                      st.st_mode & 0777);
  auto data = read_file(key_file, 64);
  if (!data.ok()) return std::move(data).error().wrap("sim platform key");
  SecretBytes seed{ByteView(*data)};
  secure_zero(data->data(), data->size());
  if (seed.size() != kSeedSize)
    return make_error(ErrorCode::kCorrupt, "sim platform key {}: {} bytes, expected a {}-byte seed", key_file.string(), seed.size(),
                      kSeedSize);
  return seed;
}

void put_u64(crypto::Hasher& h, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
  h.update(ByteView(b, 8));
}

Bytes signed_message(ByteView header_and_body) {
  Bytes m(kDomain.size() + header_and_body.size());
  std::memcpy(m.data(), kDomain.data(), kDomain.size());
  if (!header_and_body.empty()) std::memcpy(m.data() + kDomain.size(), header_and_body.data(), header_and_body.size());
  return m;
}

crypto::EcKeyPair platform_key(const SecretBytes& seed) {
  return crypto::ec_derive(crypto::EcCurve::kP256, seed.view(), kPlatformKeyInfo);
}

// Holds the platform seed and the measurement taken once, when the provider was made: the measurement is of
// the executable and configuration as they were at start, and quotes cost one signature with the loaded key.
class SimProvider final : public Provider {
 public:
  SimProvider(SecretBytes seed, Bytes measurement)
      : seed_(std::move(seed)), signing_(platform_key(seed_)), measurement_(std::move(measurement)) {
    key_id_ = crypto::sha256(signing_.public_key);
  }
  TeeType type() const override { return TeeType::kSim; }

  Result<Evidence> quote(const ReportData& report_data) override {
    nlohmann::json body;
    body["simulated"] = true;
    body["measurement"] = to_hex(measurement_);
    body["report_data"] = to_hex(report_data);
    body["issued_at"] = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    body["platform_key_id"] = to_hex(key_id_);
    std::string text = body.dump();
    Bytes data(kMagicSize);
    std::memcpy(data.data(), kMagic, kMagicSize);
    uint32_t n = static_cast<uint32_t>(text.size());
    for (int i = 0; i < 4; ++i) data.push_back(static_cast<uint8_t>(n >> (8 * i)));
    data.insert(data.end(), text.begin(), text.end());
    VEIL_ASSIGN_OR_RETURN(Bytes sig, crypto::ecdsa_sign_digest(signing_, crypto::sha256(signed_message(data))));
    data.insert(data.end(), sig.begin(), sig.end());
    return Evidence{TeeType::kSim, std::move(data)};
  }

  Result<SecretBytes> sealing_root() override {
    return crypto::hkdf(crypto::HashAlg::kSha384, as_bytes("veil-sim-sealing-root-v1"), seed_.view(), measurement_, 32);
  }

 private:
  SecretBytes seed_;
  crypto::EcKeyPair signing_;
  Bytes measurement_;
  crypto::Sha256Digest key_id_{};
};

class SimVerifier final : public Verifier {
 public:
  TeeType type() const override { return TeeType::kSim; }
  Result<Claims> verify(const Evidence& evidence, const Collateral& collateral, TimePoint) const override {
    if (evidence.type != TeeType::kSim) return Error(ErrorCode::kInvalidArgument, "sim verifier: evidence is not of type sim");
    const Bytes* pub = collateral.find(item::kSimPlatformPublicKey);
    if (pub == nullptr)
      return Error(ErrorCode::kSecurity, "sim evidence: collateral item 'sim_platform_public_key' is missing (no trusted platform key)");
    if (pub->size() == 32)
      return Error(ErrorCode::kUnsupported,
                   "sim evidence: collateral item 'sim_platform_public_key' is a 32-byte Ed25519 key of sim format 1; format 2 "
                   "uses a 65-byte P-256 key: export the collateral again (veil attest quote --collateral-out)");
    if (pub->size() != 65 || (*pub)[0] != 0x04)
      return make_error(ErrorCode::kCorrupt,
                        "sim evidence: collateral item 'sim_platform_public_key' is {} bytes, expected an uncompressed P-256 "
                        "point (65 bytes starting 0x04)", pub->size());
    VEIL_ASSIGN_OR_RETURN(SimEvidence ev, parse_sim_evidence(evidence.data));
    const ByteView sig(ev.signature);
    if (!crypto::ecdsa_verify_digest(crypto::EcCurve::kP256, *pub, crypto::sha256(ev.signed_message), sig.first(32),
                                     sig.subspan(32))
             .ok())
      return Error(ErrorCode::kSecurity, "sim evidence: signature does not verify with the platform public key");
    auto key_id = crypto::sha256(*pub);
    if (!ct_equal(key_id, ev.platform_key_id))
      return Error(ErrorCode::kSecurity, "sim evidence: field 'platform_key_id' does not name the platform public key");
    if (!ev.simulated) return Error(ErrorCode::kSecurity, "sim evidence: signed field 'simulated' is not true");
    Claims c;
    c.type = TeeType::kSim;
    c.simulated = true;
    c.measurements["measurement"] = ev.measurement;
    c.report_data = ev.report_data;
    c.platform_id = Bytes(key_id.begin(), key_id.end());
    c.issued_at = TimePoint(std::chrono::seconds(ev.issued_at));
    return c;
  }
};

}  // namespace

Result<SimEvidence> parse_sim_evidence(ByteView data) {
  if (data.size() >= kMagicSize && std::memcmp(data.data(), kMagicV1, kMagicSize) == 0)
    return Error(ErrorCode::kUnsupported,
                 "sim evidence: format 1 (magic VEILSIM1, Ed25519) is no longer accepted: quote again with this version "
                 "(format 2, VEILSIM2, ECDSA P-256)");
  if (data.size() < kMagicSize + 4 + kSignatureSize) return corrupt(fmt::format("{} bytes is too short", data.size()));
  if (std::memcmp(data.data(), kMagic, kMagicSize) != 0) return corrupt("bad magic at byte 0 (expected VEILSIM2)");
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(data[kMagicSize + i]) << (8 * i);
  if (n > kMaxBody || kMagicSize + 4 + n + kSignatureSize != data.size())
    return corrupt(fmt::format("body length {} at byte 8 does not match the evidence size {}", n, data.size()));
  SimEvidence ev;
  size_t body_off = kMagicSize + 4;
  ev.body.assign(data.begin() + body_off, data.begin() + body_off + n);
  ev.signature.assign(data.begin() + body_off + n, data.end());
  ev.signed_message = signed_message(data.subspan(0, body_off + n));
  nlohmann::json j = nlohmann::json::parse(ev.body.begin(), ev.body.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return corrupt("body is not a JSON object");
  static const char* kFields[] = {"simulated", "measurement", "report_data", "issued_at", "platform_key_id"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* f : kFields) known = known || it.key() == f;
    if (!known) return corrupt(fmt::format("unknown body field '{}'", it.key().substr(0, 64)));
  }
  for (const char* f : kFields)
    if (!j.contains(f)) return corrupt(fmt::format("body field '{}' is missing", f));
  if (!j["simulated"].is_boolean()) return corrupt("body field 'simulated' is not a boolean");
  ev.simulated = j["simulated"].get<bool>();
  if (!j["issued_at"].is_number_integer()) return corrupt("body field 'issued_at' is not an integer");
  ev.issued_at = j["issued_at"].get<int64_t>();
  auto hex_field = [&](const char* f, size_t len) -> Result<Bytes> {
    if (!j[f].is_string()) return corrupt(fmt::format("body field '{}' is not a string", f));
    auto b = from_hex(j[f].get<std::string>());
    if (!b.ok() || b->size() != len) return corrupt(fmt::format("body field '{}' is not {} bytes of hex", f, len));
    return std::move(*b);
  };
  VEIL_ASSIGN_OR_RETURN(ev.measurement, hex_field("measurement", 48));
  VEIL_ASSIGN_OR_RETURN(Bytes rd, hex_field("report_data", 64));
  std::memcpy(ev.report_data.data(), rd.data(), 64);
  VEIL_ASSIGN_OR_RETURN(ev.platform_key_id, hex_field("platform_key_id", 32));
  return ev;
}

Result<Bytes> sim_measurement(const std::filesystem::path& executable, const std::filesystem::path& config) {
  std::filesystem::path exe = executable.empty() ? std::filesystem::path("/proc/self/exe") : executable;
  crypto::Hasher h(crypto::HashAlg::kSha384);
  h.update(as_bytes("veil-sim-measurement-v1"));
  auto add_file = [&](const std::filesystem::path& p, const char* what) -> Status {
    auto m = MappedFile::open(p);
    if (!m.ok()) return std::move(m).error().wrap(fmt::format("sim measurement: {}", what));
    put_u64(h, 1);
    put_u64(h, m->size());
    h.update(m->view());
    return ok_status();
  };
  VEIL_TRY(add_file(exe, "executable"));
  if (config.empty()) {
    put_u64(h, 0);
  } else {
    VEIL_TRY(add_file(config, "configuration file"));
  }
  return h.finish();
}

Result<Bytes> sim_platform_public_key(const std::filesystem::path& key_file, bool create) {
  VEIL_ASSIGN_OR_RETURN(SecretBytes seed, load_seed(key_file, create));
  return platform_key(seed).public_key;
}

std::unique_ptr<Verifier> make_sim_verifier() { return std::make_unique<SimVerifier>(); }

Result<std::unique_ptr<Provider>> make_sim_provider(const ProviderOptions& options) {
  if (options.sim_platform_key.empty())
    return Error(ErrorCode::kInvalidArgument, "sim provider: option sim_platform_key (the platform key file) is required");
  VEIL_ASSIGN_OR_RETURN(SecretBytes seed, load_seed(options.sim_platform_key, options.sim_create_key));
  VEIL_ASSIGN_OR_RETURN(Bytes measurement, sim_measurement(options.sim_executable, options.sim_config));
  return std::unique_ptr<Provider>(new SimProvider(std::move(seed), std::move(measurement)));
}

}  // namespace veil::attest
