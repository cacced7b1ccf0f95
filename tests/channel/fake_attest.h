// TEST-ONLY fake attestation for the channel tests: "evidence" is an HMAC under a test platform key over
// (measurement || report_data || issued_at). It exercises the channel's hooks without a TEE or the sim provider.
// Never use outside tests.
#pragma once

#include <chrono>
#include <cstring>

#include "channel/channel.h"

namespace veil::channel::testing {

struct FakeTee {
  Bytes platform_key = Bytes(32, 0x5a);
  std::function<std::chrono::system_clock::time_point()> now = [] { return std::chrono::system_clock::now(); };

  // Evidence layout (test-only): measurement[32] | report_data[64] | issued_at_unix_s u64 BE | hmac[32].
  Result<attest::Evidence> quote(const Bytes& measurement, const attest::ReportData& rd) const {
    Bytes data(measurement);
    data.resize(32, 0);
    data.insert(data.end(), rd.begin(), rd.end());
    uint64_t t = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                           now().time_since_epoch()).count());
    for (int i = 7; i >= 0; --i) data.push_back(static_cast<uint8_t>(t >> (8 * i)));
    auto mac = crypto::hmac(crypto::HashAlg::kSha256, platform_key, data);
    data.insert(data.end(), mac.begin(), mac.end());
    return attest::Evidence{attest::TeeType::kSim, std::move(data)};
  }

  Attester attester(Bytes measurement) const {
    return [this, measurement](const attest::ReportData& rd) { return quote(measurement, rd); };
  }

  // Accepts evidence with a valid MAC, the expected measurement, the expected report_data and at most
  // `max_age` old.
  EvidenceVerifier verifier(Bytes expected_measurement, std::chrono::seconds max_age = std::chrono::seconds(60)) const {
    return [this, expected_measurement, max_age](const attest::Evidence& ev,
                                                 const attest::ReportData& expected) -> Result<attest::Claims> {
      const Bytes& d = ev.data;
      if (ev.type != attest::TeeType::kSim || d.size() != 32 + 64 + 8 + 32) {
        return make_error(ErrorCode::kCorrupt, "fake evidence: {} bytes, want 136", d.size());
      }
      auto mac = crypto::hmac(crypto::HashAlg::kSha256, platform_key, ByteView(d).first(104));
      if (!ct_equal(mac, ByteView(d).subspan(104))) return make_error(ErrorCode::kSecurity, "fake evidence: bad MAC");
      attest::Claims c;
      c.type = attest::TeeType::kSim;
      c.simulated = true;
      c.measurements["measurement"] = Bytes(d.begin(), d.begin() + 32);
      std::memcpy(c.report_data.data(), d.data() + 32, 64);
      uint64_t t = 0;
      for (int i = 0; i < 8; ++i) t = (t << 8) | d[96 + i];
      c.issued_at = std::chrono::system_clock::time_point(std::chrono::seconds(t));
      if (c.measurements["measurement"] != expected_measurement) {
        return make_error(ErrorCode::kSecurity, "fake evidence: measurement is not the expected one");
      }
      if (now() - *c.issued_at > max_age) return make_error(ErrorCode::kSecurity, "fake evidence: stale");
      if (!ct_equal(c.report_data, expected)) {
        return make_error(ErrorCode::kSecurity, "fake evidence: report_data does not match this handshake");
      }
      return c;
    };
  }
};

}  // namespace veil::channel::testing
