// HKDF-SHA-256 for the channel's short outputs. RFC 5869 with L <= HashLen is one HMAC per step:
//   Extract(salt, ikm) = HMAC(salt, ikm);  Expand(prk, info, L) = first L bytes of HMAC(prk, info || 0x01).
// crypto::hkdf_* builds an EVP_PKEY context per call, which costs several times one HMAC; a handshake and every
// rekey run many of these (tests check equality with crypto::hkdf_*).
#include "channel/session.h"

namespace veil::channel {

namespace {
SecretBytes to_secret(Bytes&& mac, size_t length) {
  SecretBytes out(ByteView(mac).first(std::min(length, mac.size())));
  secure_zero(mac.data(), mac.size());
  return out;
}
}  // namespace

SecretBytes hkdf_sha256_extract(ByteView salt, ByteView ikm) {
  return to_secret(crypto::hmac(crypto::HashAlg::kSha256, salt, ikm), 32);
}

SecretBytes hkdf_sha256_expand(ByteView prk, ByteView info, size_t length) {
  if (length == 0 || length > 32) return {};  // callers only ask for 12 or 32 bytes
  Bytes input(info.begin(), info.end());
  input.push_back(0x01);
  return to_secret(crypto::hmac(crypto::HashAlg::kSha256, prk, input), length);
}

}  // namespace veil::channel
