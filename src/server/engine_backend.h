// The real inference parts behind BatchingBackend: the CPU engine (one KV cache per slot, one batched
// forward per scheduler step), the model's tokenizer and chat template, and the seeded sampler.
//
// Thread-safety: construct on any thread; the returned backend is thread-safe (scheduler.h).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "server/scheduler.h"

namespace veil::gguf {
class File;
}
namespace veil::tokenizer {
class Tokenizer;
}

namespace veil::server {

struct EngineBackendOptions {
  std::string model_id;       // the id clients name; empty: the file name without extension (e.g. "stories260K")
  uint32_t threads = 0;       // 0: hardware concurrency (at most 8)
  uint32_t context = 0;       // per-sequence context; 0: the model's, at most 2048
  engine::KvType kv_type = engine::KvType::kF32;  // every slot's KV cache
  BatchingOptions batching;
};

// Loads the model, tokenizer and sampler over an opened GGUF file (a file on disk, or a sealed model
// decrypted in memory).
// The model's tokenizer as the scheduler's TextCodec (exposed for tests that drive the scheduler with a scripted
// StepModel and a real vocabulary).
std::unique_ptr<TextCodec> make_tokenizer_codec(tokenizer::Tokenizer tok);

Result<std::unique_ptr<BatchingBackend>> make_engine_backend(std::shared_ptr<const gguf::File> file,
                                                             const EngineBackendOptions& options);

// The tokenizer, chat template and seeded samplers of `file` over any StepModel: the local engine above,
// or a pipeline front (pipeline/runtime.h). Every `veil serve` goes through here.
Result<std::unique_ptr<BatchingBackend>> make_step_backend(const gguf::File& file, std::unique_ptr<StepModel> step,
                                                           const EngineBackendOptions& options);

}  // namespace veil::server
