// libFuzzer target: arbitrary bytes through gguf::File::from_memory, every typed accessor, and the engine's
// tensor binding (Model::load). Must never crash, hang or read out of bounds; errors are expected.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/engine.h"
#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veil;
  auto owner = std::make_shared<Bytes>(data, data + size);
  auto file = gguf::File::from_memory(owner, ByteView(owner->data(), owner->size()), "fuzz.gguf");
  if (!file.ok()) return 0;
  for (const auto& [key, value] : file->metadata()) {
    (void)file->get_string(key);
    (void)file->get_uint(key);
    (void)file->get_int(key);
    (void)file->get_float(key);
    (void)file->get_bool(key);
    (void)file->get_string_array(key);
    (void)file->get_float_array(key);
    (void)file->get_int_array(key);
  }
  uint64_t sum = 0;
  for (const auto& t : file->tensors()) {
    if (t.n_bytes > 0) sum += t.data[0] + t.data[t.n_bytes - 1];  // first and last byte must be readable
  }
  (void)sum;
  auto shared = std::make_shared<const gguf::File>(std::move(file).value());
  auto model = engine::Model::load(shared);
  if (model.ok()) {
    engine::Context ctx((*model)->hparams(), {});
    engine::KvCache cache = (*model)->new_cache(4);
    engine::TokenId tok = 0;
    engine::ForwardRequest r{&cache, {&tok, 1}, engine::LogitsMode::kLast};
    // Only tiny models: a fuzzed header may describe a huge one that is valid but slow to run.
    if ((*model)->hparams().n_embd * uint64_t{(*model)->hparams().n_vocab} < (1u << 16)) {
      (void)(*model)->forward({&r, 1}, ctx);
    }
  }
  return 0;
}
