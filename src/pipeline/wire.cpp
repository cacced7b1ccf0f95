// Pipeline wire format (runtime.h, docs/pipeline.md): encode, decode with validation, multi-record framing.
#include <bit>
#include <cstring>

#include "pipeline/runtime.h"

namespace veil::pipeline {
namespace {

class Writer {
 public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  Bytes take() { return std::move(out_); }
  void reserve(size_t n) { out_.reserve(n); }

 private:
  // The format is little-endian, as is every platform Veil builds for (checked below).
  void put(const void* p, size_t n) { raw(p, n); }
  Bytes out_;
};
static_assert(std::endian::native == std::endian::little, "the pipeline wire format assumes a little-endian host");

class Reader {
 public:
  explicit Reader(ByteView data) : d_(data) {}
  Status need(size_t n, const char* field) const {
    if (d_.size() - off_ < n) {
      return make_error(ErrorCode::kCorrupt, "pipeline message: {} at byte {}: truncated ({} bytes left)", field, off_,
                        d_.size() - off_);
    }
    return ok_status();
  }
  Result<uint8_t> u8(const char* field) {
    VEIL_TRY(need(1, field));
    return d_[off_++];
  }
  Result<uint32_t> u32(const char* field) { return get<uint32_t>(field); }
  Result<uint64_t> u64(const char* field) { return get<uint64_t>(field); }
  // `count` items, bounds-checked against the remaining input before any allocation.
  template <typename V>
  Status array(V& out, uint64_t count, const char* field) {
    constexpr size_t size = sizeof(typename V::value_type);
    if (count > (d_.size() - off_) / size) {
      return make_error(ErrorCode::kCorrupt, "pipeline message: {} at byte {}: {} items do not fit in {} bytes", field,
                        off_, count, d_.size() - off_);
    }
    out.resize(count);
    if (count) std::memcpy(out.data(), d_.data() + off_, count * size);
    off_ += count * size;
    return ok_status();
  }
  Status done() const {
    if (off_ != d_.size()) {
      return make_error(ErrorCode::kCorrupt, "pipeline message: {} trailing bytes at byte {}", d_.size() - off_, off_);
    }
    return ok_status();
  }

 private:
  template <typename T>
  Result<T> get(const char* field) {
    VEIL_TRY(need(sizeof(T), field));
    T v;
    std::memcpy(&v, d_.data() + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }
  ByteView d_;
  size_t off_ = 0;
};

void encode_info(Writer& w, const StageInfo& i) {
  for (uint32_t v : {i.stage_index, i.layer_begin, i.layer_end, i.n_layers, i.n_embd, i.n_vocab, i.n_ctx, i.max_slots}) {
    w.u32(v);
  }
}

Status decode_info(Reader& r, StageInfo& i) {
  for (uint32_t* v : {&i.stage_index, &i.layer_begin, &i.layer_end, &i.n_layers, &i.n_embd, &i.n_vocab, &i.n_ctx,
                      &i.max_slots}) {
    VEIL_ASSIGN_OR_RETURN(*v, r.u32("info"));
  }
  return ok_status();
}

Status decode_hello(Reader& r, Message& m) {
  VEIL_TRY(decode_info(r, m.info));
  VEIL_ASSIGN_OR_RETURN(uint8_t from, r.u8("hello sender"));
  if (from != static_cast<uint8_t>(Peer::kFront) && from != static_cast<uint8_t>(Peer::kPredecessor)) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: hello sender {} is unknown", from);
  }
  m.hello_from = static_cast<Peer>(from);
  VEIL_ASSIGN_OR_RETURN(m.timeout_ms, r.u32("hello timeout"));
  return ok_status();
}

void encode_forward(Writer& w, const Message& m) {
  w.reserve(64 + m.segments.size() * 13 + m.tokens.size() * 4 + m.values.size() * 4);
  w.u32(static_cast<uint32_t>(m.segments.size()));
  for (const Segment& s : m.segments) {
    w.u32(s.slot);
    w.u32(s.pos0);
    w.u32(s.n_tokens);
    w.u8(s.want_logits ? 1 : 0);
  }
  w.u64(m.tokens.size());
  w.raw(m.tokens.data(), m.tokens.size() * sizeof(int32_t));
  w.u64(m.values.size());
  w.raw(m.values.data(), m.values.size() * sizeof(float));
}

Status decode_forward(Reader& r, Message& m) {
  VEIL_ASSIGN_OR_RETURN(uint32_t n, r.u32("segment count"));
  if (n == 0 || n > kMaxSegments) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: segment count {} is not in 1..{}", n, kMaxSegments);
  }
  m.segments.resize(n);
  uint64_t total = 0;
  for (Segment& s : m.segments) {
    VEIL_ASSIGN_OR_RETURN(s.slot, r.u32("segment slot"));
    VEIL_ASSIGN_OR_RETURN(s.pos0, r.u32("segment position"));
    VEIL_ASSIGN_OR_RETURN(s.n_tokens, r.u32("segment token count"));
    VEIL_ASSIGN_OR_RETURN(uint8_t want, r.u8("segment logits flag"));
    if (want > 1) return make_error(ErrorCode::kCorrupt, "pipeline message: segment logits flag {} is not 0 or 1", want);
    if (s.n_tokens == 0) return make_error(ErrorCode::kCorrupt, "pipeline message: a segment has no tokens");
    s.want_logits = want == 1;
    total += s.n_tokens;
  }
  VEIL_ASSIGN_OR_RETURN(uint64_t n_tokens, r.u64("token count"));
  if (n_tokens != 0 && n_tokens != total) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: {} token ids for {} segment tokens", n_tokens, total);
  }
  VEIL_TRY(r.array(m.tokens, n_tokens, "token ids"));
  VEIL_ASSIGN_OR_RETURN(uint64_t n_values, r.u64("value count"));
  if ((n_tokens == 0) == (n_values == 0)) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: a forward carries either token ids or hidden states");
  }
  if (n_values != 0 && n_values % total != 0) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: {} hidden values are not a whole row per token ({})",
                      n_values, total);
  }
  return r.array(m.values, n_values, "hidden states");
}

Status decode_output(Reader& r, Message& m) {
  VEIL_ASSIGN_OR_RETURN(uint8_t kind, r.u8("output kind"));
  if (kind != static_cast<uint8_t>(OutputKind::kHidden) && kind != static_cast<uint8_t>(OutputKind::kLogits)) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: output kind {} is unknown", kind);
  }
  m.output = static_cast<OutputKind>(kind);
  VEIL_ASSIGN_OR_RETURN(m.rows, r.u32("output rows"));
  VEIL_ASSIGN_OR_RETURN(m.width, r.u32("output width"));
  return r.array(m.values, uint64_t{m.rows} * m.width, "output values");
}

Status decode_error(Reader& r, Message& m) {
  VEIL_ASSIGN_OR_RETURN(m.error_stage, r.u32("error stage"));
  VEIL_ASSIGN_OR_RETURN(uint8_t code, r.u8("error code"));
  if (code > static_cast<uint8_t>(ErrorCode::kInternal)) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: error code {} is unknown", code);
  }
  m.error_code = static_cast<ErrorCode>(code);
  VEIL_ASSIGN_OR_RETURN(uint32_t len, r.u32("reason length"));
  if (len > kMaxReasonBytes) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: reason of {} bytes exceeds {}", len, kMaxReasonBytes);
  }
  return r.array(m.reason, len, "reason");
}

}  // namespace

Bytes encode_message(const Message& m) {
  Writer w;
  w.u8(kWireVersion);
  w.u8(static_cast<uint8_t>(m.type));
  w.u64(m.request_id);
  switch (m.type) {
    case MsgType::kHello:
      encode_info(w, m.info);
      w.u8(static_cast<uint8_t>(m.hello_from));
      w.u32(m.timeout_ms);
      break;
    case MsgType::kInfo:
      encode_info(w, m.info);
      break;
    case MsgType::kForward:
      encode_forward(w, m);
      break;
    case MsgType::kOutput:
      w.u8(static_cast<uint8_t>(m.output));
      w.u32(m.rows);
      w.u32(m.width);
      w.raw(m.values.data(), m.values.size() * sizeof(float));
      break;
    case MsgType::kError: {
      w.u32(m.error_stage);
      w.u8(static_cast<uint8_t>(m.error_code));
      size_t len = std::min(m.reason.size(), kMaxReasonBytes);
      w.u32(static_cast<uint32_t>(len));
      w.raw(m.reason.data(), len);
      break;
    }
    case MsgType::kReset:
      w.u32(m.slot);
      break;
    case MsgType::kPing:
    case MsgType::kPong:
    case MsgType::kDone:
      break;
  }
  return w.take();
}

Result<Message> decode_message(ByteView data) {
  Reader r(data);
  VEIL_ASSIGN_OR_RETURN(uint8_t version, r.u8("version"));
  if (version != kWireVersion) {
    return make_error(ErrorCode::kUnsupported, "pipeline message: version {} (this build speaks {})", version,
                      kWireVersion);
  }
  VEIL_ASSIGN_OR_RETURN(uint8_t type, r.u8("type"));
  if (type < static_cast<uint8_t>(MsgType::kHello) || type > static_cast<uint8_t>(MsgType::kDone)) {
    return make_error(ErrorCode::kCorrupt, "pipeline message: type {} is unknown", type);
  }
  Message m;
  m.type = static_cast<MsgType>(type);
  VEIL_ASSIGN_OR_RETURN(m.request_id, r.u64("request id"));
  switch (m.type) {
    case MsgType::kHello:
      VEIL_TRY(decode_hello(r, m));
      break;
    case MsgType::kInfo:
      VEIL_TRY(decode_info(r, m.info));
      break;
    case MsgType::kForward:
      VEIL_TRY(decode_forward(r, m));
      break;
    case MsgType::kOutput:
      VEIL_TRY(decode_output(r, m));
      break;
    case MsgType::kError:
      VEIL_TRY(decode_error(r, m));
      break;
    case MsgType::kReset: {
      VEIL_ASSIGN_OR_RETURN(m.slot, r.u32("slot"));
      break;
    }
    case MsgType::kPing:
    case MsgType::kPong:
    case MsgType::kDone:
      break;
  }
  VEIL_TRY(r.done());
  return m;
}

Status send_message(channel::Channel& ch, const Message& m, channel::Deadline deadline) {
  Bytes body = encode_message(m);
  const size_t chunk = channel::kDefaultMaxMessage - 1;
  Bytes record;
  record.reserve(std::min(body.size(), chunk) + 1);
  size_t off = 0;
  do {
    size_t n = std::min(chunk, body.size() - off);
    record.assign(1, off + n < body.size() ? 1 : 0);
    record.insert(record.end(), body.begin() + static_cast<ptrdiff_t>(off), body.begin() + static_cast<ptrdiff_t>(off + n));
    VEIL_TRY(ch.send(record, deadline));
    off += n;
  } while (off < body.size());
  return ok_status();
}

Result<Message> recv_message(channel::Channel& ch, channel::Deadline deadline) {
  Bytes body, record;
  for (;;) {
    VEIL_TRY(ch.recv_into(record, deadline));
    if (record.empty() || record[0] > 1) {
      return make_error(ErrorCode::kCorrupt, "pipeline message from {}: bad record continuation byte", ch.peer());
    }
    if (body.size() + record.size() - 1 > kMaxWireMessage) {
      return make_error(ErrorCode::kCorrupt, "pipeline message from {}: larger than {} bytes", ch.peer(),
                        kMaxWireMessage);
    }
    body.insert(body.end(), record.begin() + 1, record.end());
    if (record[0] == 0) break;
  }
  return decode_message(body);
}

Result<channel::Endpoint> stage_endpoint(std::string_view text) {
  bool has_scheme = text.starts_with("tcp:") || text.starts_with("unix:") || text.starts_with("vsock:");
  return channel::parse_endpoint(has_scheme ? std::string(text) : "tcp:" + std::string(text));
}

}  // namespace veil::pipeline
