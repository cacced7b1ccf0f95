// libFuzzer target: the strict policy parser, and check_policy on whatever it accepts.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "attest/attest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto p = veil::attest::parse_policy(text);
  if (!p.ok()) return 0;
  // An accepted policy always names at least one type: never "allow all".
  if (p->allowed_types.empty()) __builtin_trap();
  veil::attest::Claims c;
  c.type = *p->allowed_types.begin();
  c.simulated = c.type == veil::attest::TeeType::kSim;
  veil::attest::ReportData rd{};
  auto st = veil::attest::check_policy(*p, c, rd, std::chrono::system_clock::now());
  // Simulated claims pass only where the policy allows them.
  if (st.ok() && c.simulated && !p->allow_simulated) __builtin_trap();
  return 0;
}
