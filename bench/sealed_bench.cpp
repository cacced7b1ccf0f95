// Sealed-model load throughput: decrypt + verify every chunk into locked anonymous memory, then open the
// GGUF view. Synthetic model (fixed-seed random F32 weights at a small-LLM-like layout), built once.
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <filesystem>
#include <random>

#include "gguf/writer.h"
#include "sealed/sealed.h"

namespace {

namespace fs = std::filesystem;
using namespace veil;

constexpr uint32_t kLayers = 16;
constexpr uint64_t kFloatsPerTensor = 1u << 20;  // 4 MiB per tensor, 4 per layer: 256 MiB + embeddings

struct Fixture {
  fs::path dir;
  fs::path vsm;     // format 2 (the default)
  fs::path vsm_v1;  // the same model in format 1, for the side-by-side
  SecretBytes key = sealed::generate_model_key();
  uint64_t plaintext_size = 0;

  Fixture() {
    dir = fs::temp_directory_path() / fmt::format("veil_sealed_bench_{}", ::getpid());
    fs::create_directories(dir);
    gguf::Writer w;
    w.set("general.architecture", gguf::make_string("llama"));
    w.set("general.name", gguf::make_string("synthetic sealed-bench model (random weights)"));
    w.set("llama.block_count", gguf::make_u32(kLayers));
    std::mt19937_64 rng(42);
    auto tensor = [&](const std::string& name) {
      Bytes data(kFloatsPerTensor * 4);
      for (size_t i = 0; i + 8 <= data.size(); i += 8) {
        uint64_t v = rng();
        std::memcpy(data.data() + i, &v, 8);
      }
      Status st = w.add_tensor(name, {1024, kFloatsPerTensor / 1024}, gguf::TensorType::kF32, std::move(data));
      if (!st.ok()) throw std::runtime_error(st.error().message());
    };
    tensor("token_embd.weight");
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (const char* t : {"attn_qkv", "attn_output", "ffn_up", "ffn_down"}) {
        tensor(fmt::format("blk.{}.{}.weight", l, t));
      }
    }
    tensor("output.weight");
    fs::path gguf_path = dir / "synthetic.gguf";
    Status st = w.write(gguf_path);
    if (!st.ok()) throw std::runtime_error(st.error().message());
    plaintext_size = fs::file_size(gguf_path);
    vsm = dir / "synthetic.vsm";
    sealed::SealOptions o;
    o.model_id = "synthetic-bench";
    o.model_version = 1;
    st = sealed::seal_file(gguf_path, vsm, key, o);
    if (!st.ok()) throw std::runtime_error(st.error().message());
    vsm_v1 = dir / "synthetic-v1.vsm";
    o.format_version = sealed::kFormatVersion1;
    st = sealed::seal_file(gguf_path, vsm_v1, key, o);
    if (!st.ok()) throw std::runtime_error(st.error().message());
    fs::remove(gguf_path);
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// Times load_sealed_model(path, keys, o), `keys` a model key or a range key set; freeing (zeroing +
// unmapping) is not load time. Bytes processed counts the whole model.
template <typename Keys>
void time_loads(benchmark::State& state, const fs::path& path, const Keys& keys, const sealed::LoadOptions& o) {
  Fixture& f = fixture();
  for (auto _ : state) {
    auto m = sealed::load_sealed_model(path, keys, o);
    if (!m.ok()) {
      state.SkipWithError(m.error().message().c_str());
      return;
    }
    benchmark::DoNotOptimize(m->buffer->data());
    state.PauseTiming();
    m = Error(ErrorCode::kCancelled, "freed");
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.plaintext_size));
}

// The whole model: header MAC, every chunk authenticated and decrypted, GGUF validated.
void BM_LoadSealedModel(benchmark::State& state) {
  Fixture& f = fixture();
  sealed::LoadOptions o;
  o.threads = static_cast<unsigned>(state.range(0));
  time_loads(state, f.vsm, f.key, o);
}
BENCHMARK(BM_LoadSealedModel)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// A pipeline stage holding a quarter of the layers: bytes processed counts the whole model, so the
// figure shows the saving.
void BM_LoadLayerRange(benchmark::State& state) {
  Fixture& f = fixture();
  sealed::LoadOptions o;
  o.layers = sealed::LayerRange{4, 7};
  time_loads(state, f.vsm, f.key, o);
}
BENCHMARK(BM_LoadLayerRange)->Unit(benchmark::kMillisecond)->UseRealTime();

// With the optional per-tensor and whole-file SHA-256 cross-check.
void BM_LoadVerifyHashes(benchmark::State& state) {
  Fixture& f = fixture();
  sealed::LoadOptions o;
  o.verify_plaintext_hashes = true;
  time_loads(state, f.vsm, f.key, o);
}
BENCHMARK(BM_LoadVerifyHashes)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same whole-model load of the format-1 file (one chunk key): the cost of per-part keys is the difference.
void BM_LoadSealedModelFormat1(benchmark::State& state) {
  Fixture& f = fixture();
  sealed::LoadOptions o;
  o.threads = 1;
  time_loads(state, f.vsm_v1, f.key, o);
}
BENCHMARK(BM_LoadSealedModelFormat1)->Unit(benchmark::kMillisecond)->UseRealTime();

// BM_LoadLayerRange with the stage's range key set (what the broker releases) instead of the model key.
void BM_LoadLayerRangeWithRangeKeys(benchmark::State& state) {
  Fixture& f = fixture();
  sealed::LoadOptions o;
  o.layers = sealed::LayerRange{4, 7};
  auto spec = sealed::range_spec_for(*o.layers, kLayers, false);
  if (!spec.ok()) {
    state.SkipWithError(spec.error().message().c_str());
    return;
  }
  auto keys = sealed::RangeKeySet::derive(f.key, "synthetic-bench", 1, *spec);
  if (!keys.ok()) {
    state.SkipWithError(keys.error().message().c_str());
    return;
  }
  time_loads(state, f.vsm, *keys, o);
}
BENCHMARK(BM_LoadLayerRangeWithRangeKeys)->Unit(benchmark::kMillisecond)->UseRealTime();

// Baseline on the same machine and file: copy the sealed body from its map into fresh anonymous memory
// (the same page-fault and memory traffic, no cryptography). Compare ratios, not absolute numbers.
void BM_BaselinePlainCopy(benchmark::State& state) {
  Fixture& f = fixture();
  auto file = MappedFile::open(f.vsm);
  if (!file.ok()) {
    state.SkipWithError(file.error().message().c_str());
    return;
  }
  for (auto _ : state) {
    auto buf = sealed::PlaintextBuffer::allocate(f.plaintext_size);
    if (!buf.ok()) {
      state.SkipWithError("allocate");
      return;
    }
    std::memcpy((*buf)->data(), file->data(), f.plaintext_size);
    benchmark::DoNotOptimize((*buf)->data());
    state.PauseTiming();
    buf = Error(ErrorCode::kCancelled, "freed");
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.plaintext_size));
}
BENCHMARK(BM_BaselinePlainCopy)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
