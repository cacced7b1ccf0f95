// Fuzzes the evidence a verifier receives from outside (docs/attestation.md): the first input byte picks the target.
//   0: the evidence envelope JSON ({"type", "data"}: HTTP attestation endpoint, KBS requests, `veil attest`);
//      accepted envelopes survive a write / read round trip.
//   1: simulated-TEE evidence bytes (format 2), parsed and then verified against one fixed platform key, the one
//      that signed the seeds: whatever verifies must be simulated, of type sim and bind the expected report_data,
//      and must stop verifying when one byte of its signature changes.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/sim.h"

using namespace veil;
using namespace veil::attest;

namespace {

// The platform public key of fuzz/corpus/evidence's seeds (public: it only lets the seeds verify), the time they
// were issued plus one second, and the report_data they bind (64 x 0xab).
constexpr std::string_view kPlatformKey =
    "BJ28l3REWLI480pYWbVcF5C0XUjAEo+ALQcqE6M+nK2qNtG/M6OBlEGo4ilMZJdBIErYqEPs5RX0wgC9lcp1O3A=";
constexpr int64_t kSeedTime = 1795565758;

const Collateral& collateral() {
  static const Collateral c = [] {
    Collateral k;
    k.items[item::kSimPlatformPublicKey] = *base64_decode(kPlatformKey);
    return k;
  }();
  return c;
}

const Policy& policy() {
  static const Policy p = *parse_policy(R"({"allowed_types": ["sim"], "allow_simulated": true})");
  return p;
}

void fuzz_envelope(std::string_view text) {
  auto e = evidence_from_json(text);
  if (!e.ok()) return;
  auto back = evidence_from_json(evidence_to_json(*e));
  if (!back.ok() || back->type != e->type || back->data != e->data) __builtin_trap();
}

void fuzz_sim(ByteView data) {
  auto parsed = parse_sim_evidence(data);
  if (parsed.ok() && (parsed->measurement.size() != 48 || parsed->platform_key_id.size() != 32 ||
                      parsed->signature.size() != 64))
    __builtin_trap();
  ReportData rd;
  rd.fill(0xab);
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(kSeedTime));
  Evidence ev{TeeType::kSim, Bytes(data.begin(), data.end())};
  auto claims = verify_evidence(ev, collateral(), policy(), rd, now);
  if (!claims.ok()) return;
  if (!parsed.ok() || !claims->simulated || claims->type != TeeType::kSim || claims->report_data != rd) __builtin_trap();
  ev.data.back() ^= 0x01;
  if (verify_evidence(ev, collateral(), policy(), rd, now).ok()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const ByteView body(data + 1, size - 1);
  switch (data[0]) {
    case 0: fuzz_envelope(std::string_view(reinterpret_cast<const char*>(body.data()), body.size())); break;
    case 1: fuzz_sim(body); break;
    default: break;
  }
  return 0;
}
