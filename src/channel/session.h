// Internal: the state a Channel holds after the handshake, and the key schedule shared by handshake and records.
#pragma once

#include <atomic>
#include <mutex>
#include <optional>

#include "channel/channel.h"
#include "channel/wire.h"

namespace veil::channel {

// Labels of the key schedule (docs/protocol.md "Key schedule").
inline constexpr std::string_view kLabelServerFinished = "veil-channel/2 server finished";
inline constexpr std::string_view kLabelClientFinished = "veil-channel/2 client finished";
inline constexpr std::string_view kLabelServerEvidence = "veil-channel/2 server evidence";
inline constexpr std::string_view kLabelClientEvidence = "veil-channel/2 client evidence";
inline constexpr std::string_view kLabelC2s = "veil-channel/2 c2s";
inline constexpr std::string_view kLabelS2c = "veil-channel/2 s2c";
inline constexpr std::string_view kLabelKey = "veil-channel/2 key";
inline constexpr std::string_view kLabelIv = "veil-channel/2 iv";
inline constexpr std::string_view kLabelNext = "veil-channel/2 next";

// One direction of the record layer: a traffic secret, the AEAD key and IV derived from it, a sequence number.
struct DirectionState {
  SecretBytes secret;                       // traffic secret of the current epoch
  std::optional<crypto::Aead> aead;         // key = HKDF-Expand(secret, "key", 32)
  std::array<uint8_t, crypto::kAeadNonceSize> iv{};  // HKDF-Expand(secret, "iv", 12)
  uint64_t seq = 0;                         // records sealed/opened under this key
  uint64_t bytes = 0;                       // plaintext bytes under this key
  std::atomic<uint64_t> epoch{0};           // rekeys so far (read by other threads for metrics)

  // Derives key and IV from `secret` for `suite` and resets the counters.
  Status install(crypto::AeadSuite suite);
  // secret <- HKDF-Expand(secret, "next", 32); install(); epoch++.
  Status rekey(crypto::AeadSuite suite);
  // iv XOR (0^4 || seq big-endian).
  std::array<uint8_t, crypto::kAeadNonceSize> nonce() const;
};

struct HandshakeResult {
  Mode mode = Mode::kServerAttested;
  crypto::AeadSuite suite = crypto::AeadSuite::kAes256Gcm;
  SecretBytes send_secret;
  SecretBytes recv_secret;
  std::optional<attest::Claims> peer_claims;
  crypto::Sha256Digest transcript_hash{};
};

struct Channel::Impl {
  std::unique_ptr<Transport> transport;
  std::string peer;
  Mode mode = Mode::kServerAttested;
  crypto::AeadSuite suite = crypto::AeadSuite::kAes256Gcm;
  std::optional<attest::Claims> peer_claims;
  crypto::Sha256Digest transcript_hash{};
  size_t max_message = kDefaultMaxMessage;
  uint64_t rekey_after_records = kMaxRecordsPerKey;
  uint64_t rekey_after_bytes = kMaxBytesPerKey;

  std::mutex send_mu;
  DirectionState send;
  Bytes send_buf;  // header + sealed body, reused across sends

  std::mutex recv_mu;
  DirectionState recv;

  std::mutex error_mu;
  std::optional<Error> error;  // the first failure; every later call returns it
  std::atomic<bool> failed{false};

  // Records the first failure, shuts the transport down and returns the error to hand back.
  Error fail(Error error);
  Error closed_error();
};

// Builds a channel from a completed handshake.
Result<std::unique_ptr<Channel>> make_channel(std::unique_ptr<Transport> transport, HandshakeResult result,
                                              const ChannelOptions& options);

}  // namespace veil::channel
