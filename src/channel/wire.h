// Internal: the channel's wire encodings (docs/protocol.md). Pure functions, no I/O, no keys — the fuzz targets
// call these parsers directly.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "channel/channel.h"

namespace veil::channel::wire {

inline constexpr std::string_view kLabel = "veil-channel/2";
inline constexpr uint16_t kVersion = 2;

enum class FrameType : uint8_t {
  kClientHello = 0x01,
  kServerHello = 0x02,
  kClientFinish = 0x03,
  kServerEvidence = 0x04,
  kServerFinished = 0x05,
  kData = 0x17,
  kKeyUpdate = 0x18,
  kClose = 0x19,
};
const char* frame_type_name(uint8_t type);

struct FrameHeader {
  uint32_t length = 0;  // body bytes after the 5-byte header
  uint8_t type = 0;
};
void encode_frame_header(const FrameHeader& header, uint8_t out[kFrameHeaderSize]);
// Checks that the type is one of `expected` ones and that length <= max_length. `expected` empty: any type.
Result<FrameHeader> parse_frame_header(ByteView bytes, size_t max_length, std::initializer_list<FrameType> expected);

// The 72-byte hello: the whole ClientHello and ServerHello bodies.
inline constexpr size_t kHelloSize = 72;
struct Hello {
  uint16_t version = kVersion;
  uint16_t suite = 0;
  uint8_t mode = 0;
  std::array<uint8_t, 32> ephemeral{};
  std::array<uint8_t, 32> nonce{};
};
void encode_hello(const Hello& hello, Bytes& out);
// Validates version, suite, mode and the reserved bytes; `what` names the message in errors.
Result<Hello> parse_hello(ByteView body, std::string_view what);

// Evidence on the wire: u16 TEE id | u32 length | data.
inline constexpr size_t kEvidenceHeaderSize = 6;
uint16_t tee_wire_id(attest::TeeType type);
Result<attest::TeeType> tee_from_wire_id(uint16_t id);
void encode_evidence(const attest::Evidence& evidence, Bytes& out);
// Parses one evidence encoding at body[offset...]; advances offset. Errors name `what` and the byte offset.
Result<attest::Evidence> parse_evidence(ByteView body, size_t& offset, std::string_view what);

inline constexpr size_t kMacSize = 32;
using Mac = std::array<uint8_t, kMacSize>;

// The server's flight is three frames (docs/protocol.md "Handshake"): its hello, its evidence, its finished MAC, so
// the client can compute the shared secret while the server produces its evidence.
Result<Hello> parse_client_hello(ByteView body);
Result<Hello> parse_server_hello(ByteView body);
// The whole body is one evidence encoding.
Result<attest::Evidence> parse_server_evidence(ByteView body);
// The whole body is the 32-byte server_finished MAC.
Result<Mac> parse_server_finished(ByteView body);

struct ClientFinish {
  std::optional<attest::Evidence> evidence;  // present exactly in kMutual mode
  size_t evidence_end = 0;
  Mac finished{};
};
Result<ClientFinish> parse_client_finish(ByteView body, Mode mode);

// Big-endian helpers.
inline void put_u16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void put_u32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24); p[1] = uint8_t(v >> 16); p[2] = uint8_t(v >> 8); p[3] = uint8_t(v);
}
inline uint16_t get_u16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
inline uint32_t get_u32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace veil::channel::wire
