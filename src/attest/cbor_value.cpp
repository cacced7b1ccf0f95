#include "attest/cbor_value.h"

#include <cbor.h>

#include <optional>
#include <set>
#include <tuple>

namespace veil::attest::cbor {
namespace {

enum class Ev {
  kNone, kUint, kNegint, kBytes, kText, kArray, kMap, kTag, kBool, kNull,
  kIndefinite, kFloat, kUndefined, kBreak,
};

struct Event {
  Ev ev = Ev::kNone;
  uint64_t num = 0;
  const uint8_t* ptr = nullptr;
  size_t len = 0;
};

Event* ev_of(void* ctx) { return static_cast<Event*>(ctx); }
void on_u8(void* c, uint8_t v) { *ev_of(c) = {Ev::kUint, v, nullptr, 0}; }
void on_u16(void* c, uint16_t v) { *ev_of(c) = {Ev::kUint, v, nullptr, 0}; }
void on_u32(void* c, uint32_t v) { *ev_of(c) = {Ev::kUint, v, nullptr, 0}; }
void on_u64(void* c, uint64_t v) { *ev_of(c) = {Ev::kUint, v, nullptr, 0}; }
void on_n8(void* c, uint8_t v) { *ev_of(c) = {Ev::kNegint, v, nullptr, 0}; }
void on_n16(void* c, uint16_t v) { *ev_of(c) = {Ev::kNegint, v, nullptr, 0}; }
void on_n32(void* c, uint32_t v) { *ev_of(c) = {Ev::kNegint, v, nullptr, 0}; }
void on_n64(void* c, uint64_t v) { *ev_of(c) = {Ev::kNegint, v, nullptr, 0}; }
void on_bytes(void* c, cbor_data p, size_t n) { *ev_of(c) = {Ev::kBytes, 0, p, static_cast<size_t>(n)}; }
void on_text(void* c, cbor_data p, size_t n) { *ev_of(c) = {Ev::kText, 0, p, static_cast<size_t>(n)}; }
void on_indef(void* c) { *ev_of(c) = {Ev::kIndefinite, 0, nullptr, 0}; }
void on_array(void* c, size_t n) { *ev_of(c) = {Ev::kArray, n, nullptr, 0}; }
void on_map(void* c, size_t n) { *ev_of(c) = {Ev::kMap, n, nullptr, 0}; }
void on_tag(void* c, uint64_t v) { *ev_of(c) = {Ev::kTag, v, nullptr, 0}; }
void on_f4(void* c, float) { *ev_of(c) = {Ev::kFloat, 0, nullptr, 0}; }
void on_f8(void* c, double) { *ev_of(c) = {Ev::kFloat, 0, nullptr, 0}; }
void on_undef(void* c) { *ev_of(c) = {Ev::kUndefined, 0, nullptr, 0}; }
void on_null(void* c) { *ev_of(c) = {Ev::kNull, 0, nullptr, 0}; }
void on_bool(void* c, bool b) { *ev_of(c) = {Ev::kBool, b ? 1u : 0u, nullptr, 0}; }
void on_break(void* c) { *ev_of(c) = {Ev::kBreak, 0, nullptr, 0}; }

cbor_callbacks make_callbacks() {
  cbor_callbacks cb = cbor_empty_callbacks;
  cb.uint8 = on_u8;
  cb.uint16 = on_u16;
  cb.uint32 = on_u32;
  cb.uint64 = on_u64;
  cb.negint8 = on_n8;
  cb.negint16 = on_n16;
  cb.negint32 = on_n32;
  cb.negint64 = on_n64;
  cb.byte_string = on_bytes;
  cb.byte_string_start = on_indef;
  cb.string = on_text;
  cb.string_start = on_indef;
  cb.indef_array_start = on_indef;
  cb.array_start = on_array;
  cb.indef_map_start = on_indef;
  cb.map_start = on_map;
  cb.tag = on_tag;
  cb.float2 = on_f4;
  cb.float4 = on_f4;
  cb.float8 = on_f8;
  cb.undefined = on_undef;
  cb.null = on_null;
  cb.boolean = on_bool;
  cb.indef_break = on_break;
  return cb;
}

const cbor_callbacks& callbacks() {
  static const cbor_callbacks cb = make_callbacks();
  return cb;
}

struct Frame {
  Value v;
  uint64_t remaining = 0;  // items still expected (maps: keys and values counted separately)
};

// Map keys compared for duplicates: (kind, number, content).
using KeyId = std::tuple<int, uint64_t, std::string_view>;

Status check_duplicate_keys(const Value& map, std::string_view what) {
  std::set<KeyId> seen;
  for (size_t i = 0; i + 1 < map.items.size(); i += 2) {
    const Value& k = map.items[i];
    if (k.kind == Kind::kArray || k.kind == Kind::kMap || k.kind == Kind::kTag) {
      return make_error(ErrorCode::kCorrupt, "{}: map key at byte offset {} is a {}, not a scalar", what, k.offset,
                        kind_name(k.kind));
    }
    if (!seen.emplace(static_cast<int>(k.kind), k.num, k.text()).second) {
      return make_error(ErrorCode::kCorrupt, "{}: duplicate map key at byte offset {}", what, k.offset);
    }
  }
  return ok_status();
}

}  // namespace

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kUint: return "unsigned integer";
    case Kind::kNegint: return "negative integer";
    case Kind::kBytes: return "byte string";
    case Kind::kText: return "text string";
    case Kind::kArray: return "array";
    case Kind::kMap: return "map";
    case Kind::kTag: return "tag";
    case Kind::kBool: return "boolean";
    case Kind::kNull: return "null";
  }
  return "?";
}

const Value* Value::find(std::string_view text_key) const {
  if (kind != Kind::kMap) return nullptr;
  for (size_t i = 0; i + 1 < items.size(); i += 2) {
    if (items[i].kind == Kind::kText && items[i].text() == text_key) return &items[i + 1];
  }
  return nullptr;
}

const Value* Value::find_int(int64_t key) const {
  if (kind != Kind::kMap) return nullptr;
  for (size_t i = 0; i + 1 < items.size(); i += 2) {
    const Value& k = items[i];
    if (key >= 0 && k.kind == Kind::kUint && k.num == static_cast<uint64_t>(key)) return &items[i + 1];
    if (key < 0 && k.kind == Kind::kNegint && k.num == static_cast<uint64_t>(-(key + 1))) return &items[i + 1];
  }
  return nullptr;
}

Result<Value> parse(ByteView data, std::string_view what, const Limits& limits) {
  if (data.empty()) return make_error(ErrorCode::kCorrupt, "{}: empty CBOR input", what);
  if (data.size() > limits.max_input) {
    return make_error(ErrorCode::kCorrupt, "{}: CBOR input of {} bytes exceeds the limit of {}", what, data.size(),
                      limits.max_input);
  }
  std::vector<Frame> stack;
  size_t pos = 0;
  size_t count = 0;
  std::optional<Value> root;
  while (!root) {
    if (pos >= data.size()) {
      return make_error(ErrorCode::kCorrupt, "{}: CBOR truncated at byte offset {}", what, pos);
    }
    Event ev;
    cbor_decoder_result r{};
    uint8_t initial = data[pos];
    if (initial >= 0xC6 && initial <= 0xD4) {
      // libcbor 0.8's streaming decoder refuses tags 6..20 in the initial byte (COSE_Sign1 is tag 18,
      // 0xD2), although RFC 8949 §3.4 allows them; decode that one-byte head here.
      ev = {Ev::kTag, static_cast<uint64_t>(initial - 0xC0), nullptr, 0};
      r.status = CBOR_DECODER_FINISHED;
      r.read = 1;
    } else {
      r = cbor_stream_decode(data.data() + pos, data.size() - pos, &callbacks(), &ev);
    }
    if (r.status == CBOR_DECODER_NEDATA) {
      return make_error(ErrorCode::kCorrupt, "{}: CBOR item at byte offset {} runs past the end of the input", what,
                        pos);
    }
    if (r.status != CBOR_DECODER_FINISHED || r.read == 0 || r.read > data.size() - pos) {
      return make_error(ErrorCode::kCorrupt, "{}: malformed CBOR item at byte offset {}", what, pos);
    }
    size_t head = pos;
    pos += r.read;
    size_t left = data.size() - pos;
    if (++count > limits.max_items) {
      return make_error(ErrorCode::kCorrupt, "{}: more than {} CBOR items (at byte offset {})", what, limits.max_items,
                        head);
    }
    Value v;
    v.offset = head;
    bool container = false;
    switch (ev.ev) {
      case Ev::kUint: v.kind = Kind::kUint; v.num = ev.num; break;
      case Ev::kNegint: v.kind = Kind::kNegint; v.num = ev.num; break;
      case Ev::kBytes:
      case Ev::kText:
        v.kind = ev.ev == Ev::kBytes ? Kind::kBytes : Kind::kText;
        if (ev.ptr < data.data() || ev.len > data.size() ||
            static_cast<size_t>(ev.ptr - data.data()) + ev.len != pos) {
          return make_error(ErrorCode::kInternal, "{}: CBOR string bounds at byte offset {}", what, head);
        }
        v.bytes = ByteView(ev.ptr, ev.len);
        break;
      case Ev::kArray:
      case Ev::kMap: {
        v.kind = ev.ev == Ev::kArray ? Kind::kArray : Kind::kMap;
        uint64_t need = ev.num;
        if (v.kind == Kind::kMap) {
          if (need > left / 2) need = UINT64_MAX; else need *= 2;
        }
        if (need > left) {
          return make_error(ErrorCode::kCorrupt, "{}: CBOR {} at byte offset {} declares {} entries but only {} bytes remain",
                            what, kind_name(v.kind), head, ev.num, left);
        }
        if (need > limits.max_items - count) {
          return make_error(ErrorCode::kCorrupt, "{}: CBOR {} at byte offset {} declares {} entries, over the limit of {} items",
                            what, kind_name(v.kind), head, ev.num, limits.max_items);
        }
        v.items.reserve(static_cast<size_t>(need));
        container = true;
        if (need == 0) container = false;  // complete at once
        else {
          if (stack.size() >= limits.max_depth) {
            return make_error(ErrorCode::kCorrupt, "{}: CBOR nesting deeper than {} at byte offset {}", what,
                              limits.max_depth, head);
          }
          stack.push_back({std::move(v), need});
        }
        break;
      }
      case Ev::kTag:
        v.kind = Kind::kTag;
        v.num = ev.num;
        if (stack.size() >= limits.max_depth) {
          return make_error(ErrorCode::kCorrupt, "{}: CBOR nesting deeper than {} at byte offset {}", what,
                            limits.max_depth, head);
        }
        stack.push_back({std::move(v), 1});
        container = true;
        break;
      case Ev::kBool: v.kind = Kind::kBool; v.num = ev.num; break;
      case Ev::kNull: v.kind = Kind::kNull; break;
      case Ev::kIndefinite:
        return make_error(ErrorCode::kCorrupt, "{}: indefinite-length CBOR item at byte offset {} is not allowed", what,
                          head);
      case Ev::kFloat:
        return make_error(ErrorCode::kCorrupt, "{}: CBOR float at byte offset {} is not allowed", what, head);
      case Ev::kUndefined:
        return make_error(ErrorCode::kCorrupt, "{}: CBOR undefined at byte offset {} is not allowed", what, head);
      case Ev::kBreak:
        return make_error(ErrorCode::kCorrupt, "{}: unexpected CBOR break at byte offset {}", what, head);
      case Ev::kNone:
        return make_error(ErrorCode::kCorrupt, "{}: unsupported CBOR item at byte offset {}", what, head);
    }
    if (container) continue;
    // `v` is complete: attach it to its parent, closing every parent it completes.
    while (true) {
      if (stack.empty()) {
        root = std::move(v);
        break;
      }
      Frame& top = stack.back();
      top.v.items.push_back(std::move(v));
      if (--top.remaining > 0) break;
      v = std::move(top.v);
      stack.pop_back();
      if (v.kind == Kind::kMap) VEIL_TRY(check_duplicate_keys(v, what));
    }
  }
  if (pos != data.size()) {
    return make_error(ErrorCode::kCorrupt, "{}: {} trailing bytes after the CBOR item at byte offset {}", what,
                      data.size() - pos, pos);
  }
  return std::move(*root);
}

namespace {
template <typename F>
void append(Bytes& out, F&& enc) {
  uint8_t buf[16];
  size_t n = enc(buf, sizeof buf);
  out.insert(out.end(), buf, buf + n);
}
}  // namespace

void encode_uint(Bytes& out, uint64_t v) { append(out, [&](uint8_t* b, size_t n) { return cbor_encode_uint(v, b, n); }); }
void encode_bytes(Bytes& out, ByteView b) {
  append(out, [&](uint8_t* p, size_t n) { return cbor_encode_bytestring_start(b.size(), p, n); });
  out.insert(out.end(), b.begin(), b.end());
}
void encode_text(Bytes& out, std::string_view s) {
  append(out, [&](uint8_t* p, size_t n) { return cbor_encode_string_start(s.size(), p, n); });
  out.insert(out.end(), s.begin(), s.end());
}
void encode_array_head(Bytes& out, size_t count) {
  append(out, [&](uint8_t* p, size_t n) { return cbor_encode_array_start(count, p, n); });
}
void encode_map_head(Bytes& out, size_t count) {
  append(out, [&](uint8_t* p, size_t n) { return cbor_encode_map_start(count, p, n); });
}
void encode_null(Bytes& out) { append(out, [&](uint8_t* p, size_t n) { return cbor_encode_null(p, n); }); }
void encode_bool(Bytes& out, bool b) { append(out, [&](uint8_t* p, size_t n) { return cbor_encode_bool(b, p, n); }); }

}  // namespace veil::attest::cbor
