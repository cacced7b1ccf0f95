// attest: evidence, verifiers and the fail-closed policy. Read this first.
//
// Trust flows one way: Evidence (+ Collateral) -> Verifier -> Claims -> Policy -> keys.
//   - A Provider runs inside a TEE and produces Evidence binding 64 bytes of report_data.
//   - A Verifier checks one evidence format cryptographically (signatures, certificate chains to the
//     vendor root, CRLs, TCB) using only the collateral it is given: no network, no vendor service.
//     It returns the verified Claims or a precise refusal (ErrorCode::kSecurity for a failed check,
//     kCorrupt for malformed evidence), naming the field and why.
//   - check_policy() then decides whether the claims are acceptable. Nothing is allowed by default.
// verify_evidence() does all of it in order; callers outside this component use only that.
//
// The simulated TEE ("sim") says so in a signed field of every piece of evidence; its claims carry
// simulated = true, and a policy refuses them unless it sets "allow_simulated": true.
//
// Thread-safety: Verifiers are stateless and may be shared; Providers are not thread-safe.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/core.h"

namespace veil::attest {

enum class TeeType {
  kSim,         // simulated TEE for development and CI; never acceptable unless policy allows it
  kTdx,         // Intel TDX quote v4/v5
  kSevSnp,      // AMD SEV-SNP attestation report
  kNitro,       // AWS Nitro Enclaves attestation document (COSE_Sign1)
  kTpm,         // TPM 2.0 quote over PCRs
  kAzSnpVtpm,   // Azure confidential VM: SNP report -> HCL report -> vTPM AK -> TPM quote
  kAzTdxVtpm,   // Azure confidential VM: TDX quote -> HCL report -> vTPM AK -> TPM quote
};

// Stable names used in policies, JSON and the CLI: sim, tdx, sev-snp, nitro, tpm, az-snp-vtpm, az-tdx-vtpm.
const char* tee_type_name(TeeType type);
Result<TeeType> tee_type_from_name(std::string_view name);

using ReportData = std::array<uint8_t, 64>;

// Raw evidence as the TEE produced it. `data` is the format's own encoding (a TDX quote, an SNP
// report, a COSE_Sign1 document, a serialized TPM quote bundle, ...).
struct Evidence {
  TeeType type = TeeType::kSim;
  Bytes data;
};

// Serialised form for the wire and files: JSON {"type": "<name>", "data": "<base64>"}.
std::string evidence_to_json(const Evidence& evidence);
Result<Evidence> evidence_from_json(std::string_view json);

// Collateral that the verifier needs and the verifier's host was given (never fetched):
// named items such as "pck_crl", "root_ca_crl", "tcb_info", "qe_identity", "vcek", "ask_ark",
// "root_cert", "ak_cert". Each verifier documents the names it reads (docs/attestation.md).
struct Collateral {
  std::map<std::string, Bytes> items;
  const Bytes* find(const std::string& name) const {
    auto it = items.find(name);
    return it == items.end() ? nullptr : &it->second;
  }
};

// What a verifier established. Only claims a verifier checked are filled in.
struct Claims {
  TeeType type = TeeType::kSim;
  bool simulated = false;
  // Named measurements, lower-case names per type:
  //   sim: "measurement"; tdx: "mrtd", "rtmr0".."rtmr3", "mrseam", "mrconfigid", "mrowner";
  //   sev-snp: "measurement", "host_data", "id_key_digest"; nitro: "pcr0".."pcr15";
  //   tpm / vTPM: "pcr<N>" in the bank used (sha256 unless stated); vTPM also carries the hardware ones.
  std::map<std::string, Bytes> measurements;
  ReportData report_data{};
  bool debug = false;
  // Security version numbers and TCB components, e.g. "tee_tcb_svn", "bootloader", "tee", "snp",
  // "microcode", "qe_svn", "pce_svn", "isv_svn".
  std::map<std::string, uint64_t> svns;
  std::string tcb_status;   // e.g. "UpToDate", "OutOfDate", "SWHardeningNeeded"; empty if the format has none
  Bytes platform_id;        // chip id, PPID or module id, where the format has one
  std::optional<std::chrono::system_clock::time_point> issued_at;  // when the evidence says it was made
  bool migration_agent = false;  // sev-snp: guest policy MIGRATE_MA set (a migration agent may export the guest)
};

// Produces evidence inside a TEE.
class Provider {
 public:
  virtual ~Provider() = default;
  virtual TeeType type() const = 0;
  virtual Result<Evidence> quote(const ReportData& report_data) = 0;
  // A secret rooted in the TEE and bound to the running measurement, for key derivation
  // (sealed::derive_key). Stable across restarts of the same measurement.
  virtual Result<SecretBytes> sealing_root() = 0;
};

// Verifies one evidence format against collateral at a given time (for certificate validity).
class Verifier {
 public:
  virtual ~Verifier() = default;
  virtual TeeType type() const = 0;
  virtual Result<Claims> verify(const Evidence& evidence, const Collateral& collateral,
                                std::chrono::system_clock::time_point now) const = 0;
};

// The verifier for a type, or nullptr when Veil has none.
const Verifier* verifier_for(TeeType type);

// Policy (docs/attestation.md, JSON). Every field is explicit; unknown fields, an empty allow-list
// or an unreadable file are errors, never "allow all".
struct Policy {
  std::set<TeeType> allowed_types;
  bool allow_simulated = false;
  bool allow_debug = false;
  // Per TEE type: measurement name -> set of acceptable values (any one matches). A measurement
  // named here must be present in the claims.
  std::map<TeeType, std::map<std::string, std::vector<Bytes>>> expected_measurements;
  std::map<TeeType, std::map<std::string, uint64_t>> min_svns;
  std::map<TeeType, std::set<std::string>> accepted_tcb_status;  // empty: "UpToDate" only, where the format has one
  std::optional<std::chrono::seconds> max_evidence_age;           // applied where evidence carries a time
  bool allow_migration_agent = false;                              // sev-snp: accept MIGRATE_MA guests
  std::map<TeeType, std::map<std::string, uint64_t>> max_svns;    // e.g. sev-snp {"vmpl": 0}
};

Result<Policy> parse_policy(std::string_view json);
Result<Policy> load_policy(const std::filesystem::path& path);

// Checks claims against the policy, then that claims.report_data equals expected_report_data.
Status check_policy(const Policy& policy, const Claims& claims, const ReportData& expected_report_data,
                    std::chrono::system_clock::time_point now);

// The one entry point for everyone else: verify, then apply the policy.
Result<Claims> verify_evidence(const Evidence& evidence, const Collateral& collateral, const Policy& policy,
                               const ReportData& expected_report_data, std::chrono::system_clock::time_point now);

// Providers by name ("sim", "tdx", "sev-snp", "nitro", "tpm"), configured from options such as the sim
// platform key file or the configfs-tsm root. Returns kUnsupported where the hardware is absent.
struct ProviderOptions {
  std::filesystem::path sim_platform_key;   // sim: key file playing the hardware root
  std::filesystem::path sim_config;         // sim: configuration file folded into the measurement
  std::filesystem::path tsm_root = "/sys/kernel/config/tsm/report";
  std::filesystem::path nsm_device = "/dev/nsm";
  std::string tpm_tcti;                     // e.g. "swtpm:host=127.0.0.1,port=2321" or "device:/dev/tpmrm0"
  bool sim_create_key = false;              // sim: create the platform key file (0600) if it does not exist
  std::filesystem::path sim_executable;     // sim: the measured executable; empty = /proc/self/exe
};
Result<std::unique_ptr<Provider>> make_provider(std::string_view name, const ProviderOptions& options);

}  // namespace veil::attest
