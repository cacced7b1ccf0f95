// cbor_value: a strict, bounded CBOR (RFC 8949) reader over libcbor's streaming decoder, and the few
// encoders the Nitro code needs. Internal to attest (COSE_Sign1 documents, NSM messages).
//
// Strict: exactly one item and no trailing bytes; definite lengths only (no indefinite strings,
// arrays or maps); no floats or "undefined"; duplicate map keys refused; nesting depth, item count
// and input size bounded; every count checked against the bytes that remain before anything is
// reserved. Byte and text strings are views into the input, which must outlive the Value.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/core.h"

namespace veil::attest::cbor {

enum class Kind { kUint, kNegint, kBytes, kText, kArray, kMap, kTag, kBool, kNull };

const char* kind_name(Kind kind);

struct Value {
  Kind kind = Kind::kNull;
  // kUint: the value; kNegint: n where the value is -1 - n; kTag: the tag number; kBool: 0 or 1.
  uint64_t num = 0;
  ByteView bytes;             // kBytes / kText: the content (a view into the input)
  std::vector<Value> items;   // kArray: elements; kMap: key0, value0, key1, value1, ...; kTag: the tagged item
  size_t offset = 0;          // byte offset of this item's head in the input

  std::string_view text() const { return as_chars(bytes); }
  size_t map_size() const { return items.size() / 2; }
  // Map lookup by text key or by integer key; nullptr when absent (or when this is not a map).
  const Value* find(std::string_view text_key) const;
  const Value* find_int(int64_t key) const;
  bool is_int() const { return kind == Kind::kUint || kind == Kind::kNegint; }
};

struct Limits {
  size_t max_input = size_t{1} << 20;  // bytes
  size_t max_depth = 16;               // nested arrays, maps and tags
  size_t max_items = 8192;             // data items in total
};

// Parses exactly one item filling all of `data`. `what` names the input in error messages.
// Errors are kCorrupt and name the byte offset.
Result<Value> parse(ByteView data, std::string_view what, const Limits& limits = {});

// Encoders (definite lengths, shortest form) appending to `out`.
void encode_uint(Bytes& out, uint64_t v);
void encode_bytes(Bytes& out, ByteView b);
void encode_text(Bytes& out, std::string_view s);
void encode_array_head(Bytes& out, size_t n);
void encode_map_head(Bytes& out, size_t n);
void encode_null(Bytes& out);
void encode_bool(Bytes& out, bool b);

}  // namespace veil::attest::cbor
