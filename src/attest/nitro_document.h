// nitro_document: the AWS Nitro Enclaves attestation document (attest-internal).
//
// Format (aws-nitro-enclaves-nsm-api docs/attestation_process.md; RFC 9052 COSE_Sign1; RFC 8949 CBOR):
//   COSE_Sign1 = [protected: bstr .cbor {1: -35}, unprotected: {}, payload: bstr .cbor map, signature: bstr(96)],
//   optionally wrapped in tag 18. Payload map (text keys, all required unless noted):
//   module_id tstr, digest "SHA384", timestamp uint (ms), pcrs {0..31 => bstr(48)}, certificate bstr (DER),
//   cabundle [bstr DER, ...] (root first), public_key / user_data / nonce: bstr (<= 1024 bytes) or null, optional.
//
// Report data binding (docs/attestation-nitro-tpm.md): the Veil provider puts the 64-byte report_data in
// user_data; Claims.report_data is user_data when it is exactly 64 bytes, otherwise all zero (the
// document then binds no Veil report_data, and a policy expecting real report_data refuses it).
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "attest/attest.h"

namespace veil::attest::nitro {

inline constexpr size_t kMaxDocumentSize = 64 * 1024;
inline constexpr size_t kMaxOptionalField = 1024;  // public_key, user_data, nonce
inline constexpr size_t kMaxCabundle = 8;
inline constexpr int kCoseAlgEs384 = -35;
inline constexpr uint64_t kCoseSign1Tag = 18;

// SHA-256 of the DER of the AWS Nitro Enclaves Root G1 certificate (ECDSA P-384, 2019-10-28 -> 2049-10-28),
// as AWS publishes it. The verifier accepts the collateral "nitro_root" only when it has this fingerprint.
inline constexpr const char* kAwsRootG1Sha256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";
inline constexpr const char* kRootItem = "nitro_root";

struct Document {
  bool tagged = false;
  Bytes protected_header;   // the protected bstr's content, exactly as signed
  Bytes payload;            // the payload bstr's content, exactly as signed
  Bytes signature;          // r || s, 48 bytes each
  std::string module_id;
  std::string digest;
  uint64_t timestamp_ms = 0;
  std::map<uint32_t, Bytes> pcrs;
  Bytes certificate;
  std::vector<Bytes> cabundle;
  std::optional<Bytes> public_key, user_data, nonce;
};

// Parses and validates the structure (no cryptography). kCorrupt names the field and byte offset.
Result<Document> parse_document(ByteView data);

// The COSE Sig_structure for Signature1 with empty external_aad.
Bytes sig_structure(const Document& doc);

// Every check: structure, ES384 signature by the leaf, cabundle order, chain to `root_der` (the only
// trust anchor, which must equal cabundle[0]) valid at `now`. Claims as documented above.
Result<Claims> verify_document(ByteView data, ByteView root_der, std::chrono::system_clock::time_point now);

}  // namespace veil::attest::nitro

namespace veil::attest::nitro {

// The NSM (Nitro Secure Module) message layer used by the provider through /dev/nsm
// (aws-nitro-enclaves-nsm-api: serde-CBOR encoded Request / Response enums; Linux uapi
// include/uapi/linux/nsm.h: NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw), request <= 0x1000 bytes,
// response <= 0x3000 bytes).
inline constexpr size_t kNsmRequestMax = 0x1000;
inline constexpr size_t kNsmResponseMax = 0x3000;

// {"Attestation": {"user_data": bstr, "nonce": null, "public_key": null}}
Bytes nsm_attestation_request(ByteView user_data);
// {"Attestation": {"document": bstr}} -> the document; {"Error": "<code>"} -> kUnavailable naming the code.
Result<Bytes> nsm_attestation_response(ByteView response);

}  // namespace veil::attest::nitro
