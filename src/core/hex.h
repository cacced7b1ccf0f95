// Hex encoding. from_hex accepts upper or lower case, rejects odd lengths and non-hex characters.
#pragma once

#include <string>
#include <string_view>

#include "core/bytes.h"
#include "core/result.h"

namespace veil {

std::string to_hex(ByteView bytes);
Result<Bytes> from_hex(std::string_view hex);

}  // namespace veil
