// Response signatures and the report_data binding (docs/api.md, "Signatures" and "Attestation").
//
// Signed text (UTF-8, '\n' after every line, no trailing spaces):
//   veil-completion-signature-v1
//   id: <completion id>
//   model: <model id>
//   created: <unix seconds>
//   request_sha256: <hex of SHA-256 of the exact request body bytes>
//   response_kind: json | sse-chain
//   response_sha256: <hex: SHA-256 of the response body, or the SSE hash chain's final value>
// Ed25519 signs the text itself; ECDSA secp256k1 signs SHA-256(text) (r || s, low-S).
//
// SSE hash chain: h0 = 32 zero bytes; for each event i in order (the exact bytes sent,
// "data: <json>\n\n"), h_i = SHA-256(h_{i-1} || SHA-256(event_i)). The terminal "data: [DONE]\n\n" is not
// part of the chain; the signature is stored before it is sent.
//
// Thread-safety: free functions are thread-safe; SseChain is not.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "attest/attest.h"
#include "core/core.h"
#include "crypto/crypto.h"

namespace veil::server {

struct SigningKeys {
  crypto::Ed25519KeyPair ed25519;
  crypto::EcKeyPair secp256k1;  // curve kSecp256k1
};

// Keys derived from the TEE's sealing root (HKDF-SHA256, labels "veil/server/signing/ed25519/v1" and
// "veil/server/signing/secp256k1/v1"): the same measurement on the same platform gets the same keys.
SigningKeys derive_signing_keys(ByteView sealing_root);

struct CompletionRecord {
  std::string id;
  std::string model;
  int64_t created = 0;
  std::string response_kind;  // "json" or "sse-chain"
  crypto::Sha256Digest request_sha256{};
  crypto::Sha256Digest response_sha256{};
};

std::string signed_text(const CompletionRecord& record);

struct SignatureEntry {
  std::string algorithm;   // "ed25519" or "ecdsa-secp256k1-sha256"
  std::string public_key;  // hex: 32 bytes (Ed25519) or 65 bytes uncompressed (secp256k1)
  std::string signature;   // hex: 64 bytes (Ed25519) or r || s (secp256k1)
};

Result<std::vector<SignatureEntry>> sign_text(const SigningKeys& keys, const std::string& text);

class SseChain {
 public:
  void update(std::string_view event);
  const crypto::Sha256Digest& value() const { return h_; }

 private:
  crypto::Sha256Digest h_{};
};

// report_data = SHA-512("veil-report-data-v1" || u32be(len(nonce)) || nonce || SHA-256(TLS SubjectPublicKeyInfo
// DER) || Ed25519 public key (32) || secp256k1 public key (65)). An empty nonce is used in the certificate.
attest::ReportData report_data_binding(ByteView nonce, const crypto::Sha256Digest& tls_spki_sha256,
                                       const SigningKeys& keys);

}  // namespace veil::server
