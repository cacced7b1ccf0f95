// attest internal: the simulated TEE ("sim"). Evidence layout, format 2 (docs/attestation.md, "sim"):
//   "VEILSIM2" | u32 LE body_len | body (JSON) | ECDSA P-256 signature r || s [64]
// The signature is over SHA-256("veil-sim-evidence-v2" || everything before it). The body is
//   {"simulated": true, "measurement": hex(48), "report_data": hex(64), "issued_at": unix seconds,
//    "platform_key_id": hex(SHA-256 of the platform public key)}
// The platform key file holds a 32-byte seed, mode 0600; it plays the hardware root. The signing key is
// crypto::ec_derive(P-256, seed, "veil-sim-platform-key/p256/v1"). Format 1 (VEILSIM1, Ed25519) is refused.
#pragma once

#include <filesystem>

#include "attest/formats.h"

namespace veil::attest {

struct SimEvidence {
  Bytes body;               // the signed JSON body
  Bytes signature;          // 64 bytes: r || s
  Bytes signed_message;     // domain || header || body
  bool simulated = false;
  Bytes measurement;        // 48 bytes
  ReportData report_data{};
  int64_t issued_at = 0;
  Bytes platform_key_id;    // 32 bytes
};

// Parses (does not verify) sim evidence. kCorrupt naming the field or byte offset.
Result<SimEvidence> parse_sim_evidence(ByteView data);

// SHA-384 over the executable and the configuration file (absent config = empty path).
Result<Bytes> sim_measurement(const std::filesystem::path& executable, const std::filesystem::path& config);

// The platform public key (65 bytes, uncompressed P-256 point) for the collateral item "sim_platform_public_key".
// Creates the key file (0600) when `create` is set and it does not exist.
Result<Bytes> sim_platform_public_key(const std::filesystem::path& key_file, bool create);

}  // namespace veil::attest
