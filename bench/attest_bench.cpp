// Attestation verification cost. TDX: a real v4 quote (dcap-qvl vector) with its collateral already
// loaded into a Collateral; each iteration runs every check of verify_tdx_quote (quote and QE report
// signatures, PCK chain with both CRLs, TCB info and QE identity signatures and chains, TCB status).
// SEV-SNP: a real Milan report with VCEK and ASK/ARK. Data is read from ../shared (never copied).
#include <benchmark/benchmark.h>

#include <filesystem>

#include "attest/formats.h"
#include "attest/tdx.h"

namespace {

namespace fs = std::filesystem;
using namespace veil;

fs::path shared() { return fs::path(VEIL_SHARED_DIR) / "testdata" / "attestation"; }

void BM_VerifyTdxQuote(benchmark::State& state) {
  auto quote = read_file(shared() / "tdx/dcap-qvl/tdx_quote");
  auto text = read_text_file(shared() / "tdx/dcap-qvl/tdx_quote_collateral.json");
  if (!quote.ok() || !text.ok()) {
    state.SkipWithError("../shared attestation vectors not found");
    return;
  }
  auto collateral = attest::collateral_from_json(*text);
  auto now = *attest::parse_time("2025-07-01T00:00:00Z");
  if (!collateral.ok() || !attest::verify_tdx_quote(*quote, *collateral, now).ok()) {
    state.SkipWithError("TDX vector does not verify");
    return;
  }
  for (auto _ : state) {
    auto claims = attest::verify_tdx_quote(*quote, *collateral, now);
    benchmark::DoNotOptimize(claims);
  }
}
BENCHMARK(BM_VerifyTdxQuote)->Unit(benchmark::kMicrosecond);

// The figure the spec asks for: collateral already parsed and checked (prepare_tdx_collateral once), then
// per quote: parse, quote and QE report signatures, binding, PCK chain with both CRLs, TCB status.
void BM_VerifyTdxQuotePreparedCollateral(benchmark::State& state) {
  auto quote = read_file(shared() / "tdx/dcap-qvl/tdx_quote");
  auto text = read_text_file(shared() / "tdx/dcap-qvl/tdx_quote_collateral.json");
  if (!quote.ok() || !text.ok()) {
    state.SkipWithError("../shared attestation vectors not found");
    return;
  }
  auto now = *attest::parse_time("2025-07-01T00:00:00Z");
  auto prepared = attest::prepare_tdx_collateral(*attest::collateral_from_json(*text), now);
  if (!prepared.ok() || !attest::verify_tdx_quote_prepared(*quote, **prepared, now).ok()) {
    state.SkipWithError("TDX vector does not verify");
    return;
  }
  for (auto _ : state) {
    auto claims = attest::verify_tdx_quote_prepared(*quote, **prepared, now);
    benchmark::DoNotOptimize(claims);
  }
}
BENCHMARK(BM_VerifyTdxQuotePreparedCollateral)->Unit(benchmark::kMicrosecond);

void BM_VerifySnpReport(benchmark::State& state) {
  auto report = read_file(shared() / "sev-snp/oak/milan_report.bin");
  auto vcek = read_file(shared() / "sev-snp/oak/milan_vcek.der");
  auto chain = read_file(shared() / "sev-snp/go-sev-guest/ask_ark_milan.pem");
  if (!report.ok() || !vcek.ok() || !chain.ok()) {
    state.SkipWithError("../shared attestation vectors not found");
    return;
  }
  attest::Collateral c;
  c.items[attest::item::kVcek] = *vcek;
  c.items[attest::item::kAskArk] = *chain;
  auto now = *attest::parse_time("2025-09-01T00:00:00Z");
  for (auto _ : state) {
    auto claims = attest::verify_snp_report(*report, c, now);
    benchmark::DoNotOptimize(claims);
  }
}
BENCHMARK(BM_VerifySnpReport)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
