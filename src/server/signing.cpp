#include "server/signing.h"

#include <fmt/format.h>

namespace veil::server {

SigningKeys derive_signing_keys(ByteView sealing_root) {
  SigningKeys keys;
  SecretBytes seed = crypto::hkdf(crypto::HashAlg::kSha256, {}, sealing_root,
                                  as_bytes("veil/server/signing/ed25519/v1"), 32);
  auto ed = crypto::ed25519_from_seed(seed.view());
  keys.ed25519 = ed.ok() ? std::move(ed).value() : crypto::ed25519_generate();
  keys.secp256k1 = crypto::ec_derive(crypto::EcCurve::kSecp256k1, sealing_root, "veil/server/signing/secp256k1/v1");
  return keys;
}

std::string signed_text(const CompletionRecord& r) {
  return fmt::format(
      "veil-completion-signature-v1\nid: {}\nmodel: {}\ncreated: {}\nrequest_sha256: {}\nresponse_kind: {}\n"
      "response_sha256: {}\n",
      r.id, r.model, r.created, to_hex(r.request_sha256), r.response_kind, to_hex(r.response_sha256));
}

Result<std::vector<SignatureEntry>> sign_text(const SigningKeys& keys, const std::string& text) {
  std::vector<SignatureEntry> out;
  VEIL_ASSIGN_OR_RETURN(auto ed, crypto::ed25519_sign(keys.ed25519, as_bytes(text)));
  out.push_back({"ed25519", to_hex(keys.ed25519.public_key), to_hex(ed)});
  auto digest = crypto::sha256(as_bytes(text));
  VEIL_ASSIGN_OR_RETURN(auto k1, crypto::ecdsa_sign_digest(keys.secp256k1, digest));
  out.push_back({"ecdsa-secp256k1-sha256", to_hex(keys.secp256k1.public_key), to_hex(k1)});
  return out;
}

void SseChain::update(std::string_view event) {
  auto e = crypto::sha256(as_bytes(event));
  uint8_t buf[64];
  std::copy(h_.begin(), h_.end(), buf);
  std::copy(e.begin(), e.end(), buf + 32);
  h_ = crypto::sha256(ByteView(buf, sizeof buf));
}

attest::ReportData report_data_binding(ByteView nonce, const crypto::Sha256Digest& tls_spki_sha256,
                                       const SigningKeys& keys) {
  Bytes msg = to_bytes("veil-report-data-v1");
  uint32_t n = static_cast<uint32_t>(nonce.size());
  for (int shift = 24; shift >= 0; shift -= 8) msg.push_back(static_cast<uint8_t>(n >> shift));
  msg.insert(msg.end(), nonce.begin(), nonce.end());
  msg.insert(msg.end(), tls_spki_sha256.begin(), tls_spki_sha256.end());
  msg.insert(msg.end(), keys.ed25519.public_key.begin(), keys.ed25519.public_key.end());
  msg.insert(msg.end(), keys.secp256k1.public_key.begin(), keys.secp256k1.public_key.end());
  auto h = crypto::sha512(msg);
  attest::ReportData rd{};
  std::copy(h.begin(), h.end(), rd.begin());
  return rd;
}

}  // namespace veil::server
