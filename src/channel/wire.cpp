#include "channel/wire.h"

#include <algorithm>

namespace veil::channel::wire {

const char* frame_type_name(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kClientHello: return "ClientHello";
    case FrameType::kServerHello: return "ServerHello";
    case FrameType::kClientFinish: return "ClientFinish";
    case FrameType::kServerEvidence: return "ServerEvidence";
    case FrameType::kServerFinished: return "ServerFinished";
    case FrameType::kData: return "Data";
    case FrameType::kKeyUpdate: return "KeyUpdate";
    case FrameType::kClose: return "Close";
  }
  return "unknown";
}

void encode_frame_header(const FrameHeader& header, uint8_t out[kFrameHeaderSize]) {
  put_u32(out, header.length);
  out[4] = header.type;
}

Result<FrameHeader> parse_frame_header(ByteView bytes, size_t max_length, std::initializer_list<FrameType> expected) {
  if (bytes.size() < kFrameHeaderSize) {
    return make_error(ErrorCode::kCorrupt, "frame header: {} bytes, need {}", bytes.size(), kFrameHeaderSize);
  }
  FrameHeader h{get_u32(bytes.data()), bytes[4]};
  if (expected.size() != 0 &&
      std::none_of(expected.begin(), expected.end(), [&](FrameType t) { return uint8_t(t) == h.type; })) {
    return make_error(ErrorCode::kCorrupt, "frame header: byte 4: unexpected frame type 0x{:02x} ({}), expected {}",
                      h.type, frame_type_name(h.type), frame_type_name(uint8_t(*expected.begin())));
  }
  if (h.length > max_length) {
    return make_error(ErrorCode::kCorrupt, "frame header: byte 0: {} frame of {} bytes exceeds the limit of {}",
                      frame_type_name(h.type), h.length, max_length);
  }
  return h;
}

void encode_hello(const Hello& hello, Bytes& out) {
  size_t at = out.size();
  out.resize(at + kHelloSize, 0);
  uint8_t* p = out.data() + at;
  put_u16(p, hello.version);
  put_u16(p + 2, hello.suite);
  p[4] = hello.mode;
  // p[5..7] reserved, zero
  std::copy(hello.ephemeral.begin(), hello.ephemeral.end(), p + 8);
  std::copy(hello.nonce.begin(), hello.nonce.end(), p + 40);
}

Result<Hello> parse_hello(ByteView body, std::string_view what) {
  if (body.size() < kHelloSize) {
    return make_error(ErrorCode::kCorrupt, "{}: {} bytes, the hello needs {}", what, body.size(), kHelloSize);
  }
  const uint8_t* p = body.data();
  Hello h;
  h.version = get_u16(p);
  if (h.version != kVersion) {
    return make_error(ErrorCode::kUnsupported, "{}: byte 0: protocol version {} is not supported (want {})", what,
                      h.version, kVersion);
  }
  h.suite = get_u16(p + 2);
  if (!crypto::aead_suite_from_id(h.suite).ok()) {
    return make_error(ErrorCode::kUnsupported, "{}: byte 2: unknown cipher suite id {}", what, h.suite);
  }
  h.mode = p[4];
  if (h.mode != uint8_t(Mode::kServerAttested) && h.mode != uint8_t(Mode::kMutual)) {
    return make_error(ErrorCode::kCorrupt, "{}: byte 4: unknown mode {}", what, h.mode);
  }
  for (size_t i = 5; i < 8; ++i) {
    if (p[i] != 0) return make_error(ErrorCode::kCorrupt, "{}: byte {}: reserved byte is not zero", what, i);
  }
  std::copy(p + 8, p + 40, h.ephemeral.begin());
  std::copy(p + 40, p + 72, h.nonce.begin());
  return h;
}

// Stable wire ids for TEE types (docs/protocol.md); independent of the C++ enum order.
uint16_t tee_wire_id(attest::TeeType type) {
  switch (type) {
    case attest::TeeType::kSim: return 1;
    case attest::TeeType::kTdx: return 2;
    case attest::TeeType::kSevSnp: return 3;
    case attest::TeeType::kNitro: return 4;
    case attest::TeeType::kTpm: return 5;
    case attest::TeeType::kAzSnpVtpm: return 6;
    case attest::TeeType::kAzTdxVtpm: return 7;
  }
  return 0;
}

Result<attest::TeeType> tee_from_wire_id(uint16_t id) {
  switch (id) {
    case 1: return attest::TeeType::kSim;
    case 2: return attest::TeeType::kTdx;
    case 3: return attest::TeeType::kSevSnp;
    case 4: return attest::TeeType::kNitro;
    case 5: return attest::TeeType::kTpm;
    case 6: return attest::TeeType::kAzSnpVtpm;
    case 7: return attest::TeeType::kAzTdxVtpm;
  }
  return make_error(ErrorCode::kUnsupported, "unknown TEE type id {}", id);
}

void encode_evidence(const attest::Evidence& evidence, Bytes& out) {
  size_t at = out.size();
  out.resize(at + kEvidenceHeaderSize);
  put_u16(out.data() + at, tee_wire_id(evidence.type));
  put_u32(out.data() + at + 2, static_cast<uint32_t>(evidence.data.size()));
  out.insert(out.end(), evidence.data.begin(), evidence.data.end());
}

Result<attest::Evidence> parse_evidence(ByteView body, size_t& offset, std::string_view what) {
  if (body.size() < offset || body.size() - offset < kEvidenceHeaderSize) {
    return make_error(ErrorCode::kCorrupt, "{}: byte {}: evidence header truncated ({} bytes left, need {})", what,
                      offset, body.size() - std::min(offset, body.size()), kEvidenceHeaderSize);
  }
  auto type = tee_from_wire_id(get_u16(body.data() + offset));
  if (!type.ok()) return std::move(type).error().wrap(fmt::format("{}: byte {}", what, offset));
  uint32_t len = get_u32(body.data() + offset + 2);
  size_t start = offset + kEvidenceHeaderSize;
  if (len == 0) return make_error(ErrorCode::kCorrupt, "{}: byte {}: evidence is empty", what, offset + 2);
  if (body.size() - start < len) {
    return make_error(ErrorCode::kCorrupt, "{}: byte {}: evidence length {} runs past the message end ({} bytes left)",
                      what, offset + 2, len, body.size() - start);
  }
  attest::Evidence ev;
  ev.type = *type;
  ev.data.assign(body.begin() + static_cast<std::ptrdiff_t>(start),
                 body.begin() + static_cast<std::ptrdiff_t>(start + len));
  offset = start + len;
  return ev;
}

static Mac read_mac(ByteView body, size_t offset) {
  Mac m{};
  std::copy(body.begin() + static_cast<std::ptrdiff_t>(offset),
            body.begin() + static_cast<std::ptrdiff_t>(offset + kMacSize), m.begin());
  return m;
}

static Result<Hello> parse_exact_hello(ByteView body, std::string_view what) {
  if (body.size() != kHelloSize) {
    return make_error(ErrorCode::kCorrupt, "{}: {} bytes, must be exactly {}", what, body.size(), kHelloSize);
  }
  return parse_hello(body, what);
}

Result<Hello> parse_client_hello(ByteView body) { return parse_exact_hello(body, "ClientHello"); }
Result<Hello> parse_server_hello(ByteView body) { return parse_exact_hello(body, "ServerHello"); }

Result<attest::Evidence> parse_server_evidence(ByteView body) {
  size_t offset = 0;
  VEIL_ASSIGN_OR_RETURN(auto ev, parse_evidence(body, offset, "ServerEvidence"));
  if (offset != body.size()) {
    return make_error(ErrorCode::kCorrupt, "ServerEvidence: byte {}: {} bytes after the evidence", offset,
                      body.size() - offset);
  }
  return ev;
}

Result<Mac> parse_server_finished(ByteView body) {
  if (body.size() != kMacSize) {
    return make_error(ErrorCode::kCorrupt, "ServerFinished: {} bytes, must be exactly {}", body.size(), kMacSize);
  }
  return read_mac(body, 0);
}

Result<ClientFinish> parse_client_finish(ByteView body, Mode mode) {
  ClientFinish cf;
  size_t offset = 0;
  if (mode == Mode::kMutual) {
    VEIL_ASSIGN_OR_RETURN(auto ev, parse_evidence(body, offset, "ClientFinish"));
    cf.evidence = std::move(ev);
  }
  cf.evidence_end = offset;
  if (body.size() - offset != kMacSize) {
    return make_error(ErrorCode::kCorrupt, "ClientFinish: byte {}: {} bytes left for client_finished, must be {}",
                      offset, body.size() - offset, kMacSize);
  }
  cf.finished = read_mac(body, offset);
  return cf;
}

}  // namespace veil::channel::wire
