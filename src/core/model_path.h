// Default model resolution shared by every subcommand that takes -m/--model:
//   1. the flag, 2. $VEIL_MODEL, 3. ../shared/models/stories260K/stories260K.gguf relative to the
//   repository, 4. the first *.gguf or *.vsm in ~/.cache/veil/models/.
// When none is found, the error names every place it looked.
#pragma once

#include <filesystem>
#include <string>

#include "core/result.h"

namespace veil {

Result<std::filesystem::path> resolve_model_path(const std::string& flag_value);

}  // namespace veil
