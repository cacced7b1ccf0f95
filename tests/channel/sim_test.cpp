// End to end with the real attest component: the "sim" provider produces evidence, attest::verify_evidence and a
// Policy check it (through attester_from_provider / verifier_from_policy).
#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include "channel/channel.h"
#include "support/sim_tee.h"
#include "support/temp_dir.h"

namespace veil::channel {
namespace {

using namespace std::chrono_literals;
Deadline soon() { return deadline_in(5s); }

class SimChannel : public ::testing::Test {
 protected:
  void SetUp() override {
    // This binary's measurement and the platform key, learned from one quote checked by the sim verifier itself.
    auto tee = testsupport::make_sim_tee(dir_);
    ASSERT_TRUE(tee.ok()) << tee.error().message();
    provider_ = tee->provider;
    collateral_ = tee->collateral;
    measurement_ = tee->measurement;
    policy_ = tee->policy();
  }

  ChannelOptions server_options() {
    ChannelOptions o;
    o.attester = attester_from_provider(provider_);
    o.handshake_timeout = 5s;
    return o;
  }
  ChannelOptions client_options(attest::Policy policy,
                                std::function<std::chrono::system_clock::time_point()> now = {}) {
    ChannelOptions o;
    o.verifier = verifier_from_policy(std::move(policy), collateral_, std::move(now));
    o.handshake_timeout = 5s;
    return o;
  }

  std::pair<Result<std::unique_ptr<Channel>>, Result<std::unique_ptr<Channel>>> run(const ChannelOptions& c,
                                                                                     const ChannelOptions& s) {
    auto [a, b] = make_in_process_pair();
    auto server = std::async(std::launch::async, [&, t = std::move(b)]() mutable {
      return server_handshake(std::move(t), s);
    });
    auto client = client_handshake(std::move(a), c);
    return {std::move(client), server.get()};
  }

  testsupport::TempDir tmp_{"veil-channel-sim"};
  std::filesystem::path dir_ = tmp_.path();
  std::shared_ptr<attest::Provider> provider_;
  attest::Collateral collateral_;
  attest::Policy policy_;
  Bytes measurement_;
};

TEST_F(SimChannel, HandshakeWithSimEvidenceOverTcp) {
  auto listener = listen(*parse_endpoint("tcp:127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  auto sopt = server_options();
  auto server = std::async(std::launch::async, [&]() -> Status {
    VEIL_ASSIGN_OR_RETURN(auto t, (*listener)->accept(soon()));
    VEIL_ASSIGN_OR_RETURN(auto ch, server_handshake(std::move(t), sopt));
    VEIL_ASSIGN_OR_RETURN(auto msg, ch->recv(soon()));
    return ch->send(msg, soon());
  });
  auto ch = connect_channel(*parse_endpoint((*listener)->address()), client_options(policy_));
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  const attest::Claims* claims = (*ch)->peer_claims();
  ASSERT_NE(claims, nullptr);
  EXPECT_TRUE(claims->simulated);
  EXPECT_EQ(claims->measurements.at("measurement"), measurement_);
  ASSERT_TRUE((*ch)->send(as_bytes("ping"), soon()).ok());
  auto back = (*ch)->recv(soon());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(as_chars(*back), "ping");
  EXPECT_TRUE(server.get().ok());
}

TEST_F(SimChannel, MutualWithSimEvidence) {
  auto s = server_options();
  auto c = client_options(policy_);
  s.mode = c.mode = Mode::kMutual;
  c.attester = attester_from_provider(provider_);
  s.verifier = verifier_from_policy(policy_, collateral_);
  auto [client, server] = run(c, s);
  ASSERT_TRUE(client.ok()) << client.error().message();
  ASSERT_TRUE(server.ok()) << server.error().message();
  ASSERT_NE((*server)->peer_claims(), nullptr);
  EXPECT_EQ((*server)->peer_claims()->measurements.at("measurement"), measurement_);
}

TEST_F(SimChannel, WrongMeasurementRefusedByPolicy) {
  auto policy = policy_;
  policy.expected_measurements[attest::TeeType::kSim]["measurement"] = {Bytes(measurement_.size(), 0)};
  auto [client, server] = run(client_options(policy), server_options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(client.error().message().find("measurement"), std::string::npos) << client.error().message();
}

TEST_F(SimChannel, SimulatedEvidenceRefusedWithoutAllowSimulated) {
  auto policy = policy_;
  policy.allow_simulated = false;
  auto [client, server] = run(client_options(policy), server_options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code(), ErrorCode::kSecurity);
}

TEST_F(SimChannel, StaleEvidenceRefused) {
  // The verifier's clock says two hours later: the evidence is older than max_evidence_age.
  auto later = [] { return std::chrono::system_clock::now() + std::chrono::hours(2); };
  auto [client, server] = run(client_options(policy_, later), server_options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code(), ErrorCode::kSecurity);
}

TEST_F(SimChannel, EvidenceRecordedFromEarlierSessionRefused) {
  std::optional<attest::Evidence> recorded;
  auto genuine = attester_from_provider(provider_);
  auto s = server_options();
  s.attester = [&](const attest::ReportData& rd) {
    auto ev = genuine(rd);
    if (ev.ok()) recorded = *ev;
    return ev;
  };
  auto [c1, s1] = run(client_options(policy_), s);
  ASSERT_TRUE(c1.ok()) << c1.error().message();
  ASSERT_TRUE(recorded.has_value());
  auto replay = *recorded;
  s.attester = [replay](const attest::ReportData&) -> Result<attest::Evidence> { return replay; };
  auto [c2, s2] = run(client_options(policy_), s);
  ASSERT_FALSE(c2.ok());
  EXPECT_EQ(c2.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(c2.error().message().find("report_data"), std::string::npos) << c2.error().message();
}

}  // namespace
}  // namespace veil::channel
