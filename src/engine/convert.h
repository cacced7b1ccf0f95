// Model-file tools behind `veil convert`, `veil quantize` and `veil synth`: each fills a gguf::Writer, which the
// caller writes atomically. Inputs from outside (checkpoints, tokenizers, vocabularies) are validated before use;
// errors name the file, field and byte offset.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/core.h"
#include "gguf/gguf.h"
#include "gguf/writer.h"

namespace veil::engine {

// llama2.c checkpoint (legacy header: 7 int32, negative vocab = separate classifier; or v1: magic "ak42", version 1,
// 256-byte header, shared-classifier flag) plus its tokenizer.bin -> a llama GGUF with a SentencePiece-style vocabulary.
Result<gguf::Writer> convert_llama2c(ByteView checkpoint, std::string_view checkpoint_name, ByteView tokenizer,
                                     std::string_view tokenizer_name);

struct QuantizeReport {
  size_t quantized = 0;   // tensors stored in the requested type
  size_t fallback = 0;    // row length not a multiple of the block size: stored in a compatible type
  size_t kept = 0;        // 1-D tensors (norms, biases) kept in F32
};
// Re-encodes every 2-D weight of `in` in `type` (1-D tensors stay F32). A row length that the type's block size does
// not divide falls back to the closest type that fits (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, else F16).
Result<QuantizeReport> quantize_model(const gguf::File& in, gguf::TensorType type, gguf::Writer& out);

enum class SynthShape { kGpt2_124m, kStories15m, kTinyllama_1_1b };
Result<SynthShape> parse_synth_shape(std::string_view name);
const char* synth_shape_name(SynthShape shape);

using Metadata = std::vector<std::pair<std::string, gguf::Value>>;

// Vocabulary metadata (tokenizer.* keys) from a GGUF with a vocabulary, a llama2.c tokenizer.bin, or GPT-2's
// encoder.json (with vocab.bpe beside it).
Result<Metadata> load_vocabulary(const std::filesystem::path& path);
// tokenizer.* keys of a llama2.c tokenizer.bin holding `n_vocab` entries.
Result<Metadata> llama2c_vocabulary(ByteView tokenizer, std::string_view name, uint32_t n_vocab);

// Fixed-seed random weights at a real model's shape, with `vocab`'s tokenizer metadata; marked veil.synthetic = true.
// The output matrix is stored separately from the token embedding (as llama.cpp's converters do), in `output_type`
// when given (llama.cpp's Q4_0 files keep it in Q6_K). The vocabulary size must match the shape's (50257 gpt2,
// 32000 otherwise).
Result<gguf::Writer> synth_model(SynthShape shape, gguf::TensorType type, const Metadata& vocab, uint64_t seed = 1234,
                                 std::optional<gguf::TensorType> output_type = std::nullopt);

}  // namespace veil::engine
