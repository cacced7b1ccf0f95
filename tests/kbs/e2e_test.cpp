// Key broker end to end over the attested channel with the simulated TEE: a sealed stories260K is
// loaded with a key that only the allowed measurement obtains.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include "attest/attest.h"
#include "channel/channel.h"
#include "kbs/kbs.h"
#include "kbs_test_util.h"
#include "sealed/sealed.h"
#include "support/sim_tee.h"

namespace veil::kbs {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path kStories = fs::path(VEIL_SHARED_DIR) / "models/stories260K/stories260K.gguf";

struct E2E : ::testing::Test {
  testsupport::TempDir tmp{"veil-kbs-e2e"};
  fs::path dir = tmp.path();
  attest::Collateral collateral;
  std::shared_ptr<attest::Provider> broker_tee, node_a, node_b;
  Bytes measurement_a, measurement_broker;
  SecretBytes master = sealed::generate_model_key();
  SecretBytes model_key = sealed::generate_model_key();
  std::unique_ptr<Broker> broker;
  std::unique_ptr<Server> server;
  fs::path sealed_path = dir / "stories260K.vsm";

  // A simulated workload on this machine (one platform key for all): its own configuration, so its own measurement.
  testsupport::SimTee sim(const std::string& config) {
    auto tee = testsupport::make_sim_tee(dir, "simulated workload: " + config);
    EXPECT_TRUE(tee.ok()) << (tee.ok() ? "" : tee.error().message());
    return tee.ok() ? std::move(*tee) : testsupport::SimTee{};
  }

  void SetUp() override {
    testsupport::SimTee kbs_sim = sim("broker"), a = sim("node-a"), other = sim("node-b");
    ASSERT_TRUE(kbs_sim.provider && a.provider && other.provider);
    broker_tee = kbs_sim.provider;
    node_a = a.provider;
    node_b = other.provider;
    collateral = a.collateral;
    measurement_a = a.measurement;
    measurement_broker = kbs_sim.measurement;
    ASSERT_NE(measurement_a, other.measurement);

    sealed::SealOptions so;
    so.model_id = "stories260K";
    so.model_version = 1;
    ASSERT_TRUE(sealed::seal_file(kStories, sealed_path, model_key, so).ok());
    auto b = Broker::open(dir / "kbs.db", master);
    ASSERT_TRUE(b.ok()) << b.error().message();
    broker = std::move(*b);
    ASSERT_TRUE(broker->add_key("stories260K", 1, model_key, test::sim_policy(measurement_a)).ok());
    server = start(*broker);
    ASSERT_TRUE(server);
  }

  std::unique_ptr<Server> start(Broker& b, channel::EvidenceVerifier override = {}) {
    ServerOptions o;
    o.attester = channel::attester_from_provider(broker_tee);
    o.collateral = collateral;
    o.verifier_override = std::move(override);
    o.handshake_timeout = 10s;
    o.io_timeout = 10s;
    auto s = Server::start(b, "tcp:127.0.0.1:0", std::move(o));
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message());
    return s.ok() ? std::move(*s) : nullptr;
  }

  // After one release of `range` to node_a: node_b (another measurement) is refused the same request, and the
  // released event (the audit's second entry, after add-key; a refusal third) is returned.
  std::string refuse_node_b_then_released_event(const RangeRequest& range) {
    auto refused = fetch_range_keys(server->address(), "stories260K", 1, range, channel::attester_from_provider(node_b),
                                    broker_check(), FetchOptions{10s});
    EXPECT_TRUE(!refused.ok() && refused.error().code() == ErrorCode::kSecurity);
    auto entries = broker->audit_entries();
    EXPECT_TRUE(entries.ok());
    if (!entries.ok() || entries->size() != 3u) {
      ADD_FAILURE() << "expected add-key, release, refusal in the audit";
      return "";
    }
    return (*entries)[1].event_json;
  }

  // The node checks that it talks to the genuine broker workload.
  channel::EvidenceVerifier broker_check() {
    auto p = attest::parse_policy(test::sim_policy(measurement_broker));
    EXPECT_TRUE(p.ok());
    return channel::verifier_from_policy(*p, collateral);
  }

  Result<SecretBytes> fetch(Server& s, std::shared_ptr<attest::Provider> node, uint64_t version = 1) {
    return fetch_model_key(s.address(), "stories260K", version, channel::attester_from_provider(std::move(node)),
                           broker_check(), FetchOptions{10s});
  }
};

TEST_F(E2E, AllowedMeasurementGetsTheKeyAndLoadsTheSealedModel) {
  auto key = fetch(*server, node_a);
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_TRUE(ct_equal(key->view(), model_key.view()));
  sealed::LoadOptions lo;
  lo.expected_model_id = "stories260K";
  auto m = sealed::load_sealed_model(sealed_path, *key, lo);
  ASSERT_TRUE(m.ok()) << m.error().message();
  Bytes original = *read_file(kStories);
  ASSERT_EQ(m->buffer->size(), original.size());
  EXPECT_EQ(0, std::memcmp(m->buffer->data(), original.data(), original.size()));
  auto report = broker->verify_audit();
  ASSERT_TRUE(report.ok()) << report.error().message();
  EXPECT_EQ(report->entries, 2u);  // add-key, release
}

// A peer that connects and never speaks holds one worker until its handshake times out; everyone else is
// still served. (A broker serving one connection at a time would make this fetch time out.)
TEST_F(E2E, SilentPeerDoesNotDelayOtherNodes) {
  auto ep = channel::parse_endpoint(server->address());
  ASSERT_TRUE(ep.ok());
  auto silent = channel::connect(*ep, channel::deadline_in(5s));
  ASSERT_TRUE(silent.ok()) << silent.error().message();
  auto key = fetch_model_key(server->address(), "stories260K", 1, channel::attester_from_provider(node_a),
                             broker_check(), FetchOptions{3s});
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_TRUE(ct_equal(key->view(), model_key.view()));
  silent->reset();  // closes the idle connection, so the worker serving it is free before teardown
}

TEST_F(E2E, AnotherMeasurementIsRefused) {
  auto key = fetch(*server, node_b);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(key.error().message().find("measurement"), std::string::npos) << key.error().message();
  EXPECT_TRUE(broker->verify_audit().ok());
}

TEST_F(E2E, StaleEvidenceIsRefused) {
  // A broker whose clock is two hours ahead sees the node's fresh evidence as two hours old.
  auto later = Broker::open(dir / "kbs.db", master, [] { return std::chrono::system_clock::now() + 2h; });
  ASSERT_TRUE(later.ok());
  auto s = start(**later);
  ASSERT_TRUE(s);
  auto key = fetch(*s, node_a);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(key.error().message().find("older than"), std::string::npos) << key.error().message();
}

TEST_F(E2E, DebugEvidenceIsRefused) {
  // The sim evidence format has no debug bit; this verifier plays a TEE that reports debug mode.
  attest::Collateral col = collateral;
  auto debug_tee = [col](const attest::Evidence& ev, const attest::ReportData& expected) -> Result<attest::Claims> {
    VEIL_ASSIGN_OR_RETURN(attest::Claims c,
                          attest::verifier_for(ev.type)->verify(ev, col, std::chrono::system_clock::now()));
    if (c.report_data != expected) return Error(ErrorCode::kSecurity, "report_data");
    c.debug = true;
    return c;
  };
  auto s = start(*broker, debug_tee);
  ASSERT_TRUE(s);
  auto key = fetch(*s, node_a);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(key.error().message().find("debug"), std::string::npos) << key.error().message();
}

TEST_F(E2E, OlderVersionAfterANewerReleaseIsRefused) {
  SecretBytes k2 = sealed::generate_model_key();
  ASSERT_TRUE(broker->add_key("stories260K", 2, k2, test::sim_policy(measurement_a)).ok());
  auto v2 = fetch(*server, node_a, 2);
  ASSERT_TRUE(v2.ok()) << v2.error().message();
  auto v1 = fetch(*server, node_a, 1);
  ASSERT_FALSE(v1.ok());
  EXPECT_EQ(v1.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(v1.error().message().find("rollback"), std::string::npos) << v1.error().message();
  auto unknown = fetch(*server, node_a, 9);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kNotFound);
}

TEST_F(E2E, TheNodeRefusesAnImpostorBroker) {
  // A broker running other code (node B's measurement) cannot even receive the request.
  auto imp_tee = node_b;
  ServerOptions o;
  o.attester = channel::attester_from_provider(imp_tee);
  o.collateral = collateral;
  auto s = Server::start(*broker, "tcp:127.0.0.1:0", std::move(o));
  ASSERT_TRUE(s.ok());
  auto key = fetch(**s, node_a);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), ErrorCode::kSecurity);
}

TEST_F(E2E, AuditLogVerifiesAndATamperedLogIsDetected) {
  ASSERT_TRUE(fetch(*server, node_a).ok());
  ASSERT_FALSE(fetch(*server, node_b).ok());
  auto ok = broker->verify_audit();
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(ok->entries, 3u);
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "kbs.db").c_str(), &h), SQLITE_OK);
  // Hide the refusal: rewrite it as a release.
  ASSERT_EQ(sqlite3_exec(h, "UPDATE audit SET event = replace(event, '\"refuse\"', '\"release\"') WHERE seq = 3",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(h);
  auto bad = broker->verify_audit();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(bad.error().message().find("entry 3"), std::string::npos) << bad.error().message();
}


// A pipeline stage asks for its range only: the set it gets loads its layers, and cannot open another layer's chunks.
TEST_F(E2E, AStageGetsOnlyItsRangesKeysAndLoadsItsLayers) {
  auto mapped = read_file(sealed_path);
  ASSERT_TRUE(mapped.ok());
  auto header = sealed::parse_header(*mapped);
  ASSERT_TRUE(header.ok()) << header.error().message();
  ASSERT_EQ(sealed::layer_count(*header), 5u);
  RangeRequest range{0, 1, sealed::layer_count(*header), sealed::has_tied_embeddings(*header)};
  auto set = fetch_range_keys(server->address(), "stories260K", 1, range, channel::attester_from_provider(node_a),
                              broker_check(), FetchOptions{10s});
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_FALSE(set->holds(2));
  sealed::LoadOptions lo;
  lo.expected_model_id = "stories260K";
  lo.layers = sealed::LayerRange{0, 1};
  auto m = sealed::load_sealed_model(sealed_path, *set, lo);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_TRUE(m->has_tensor("blk.1.attn_norm.weight"));
  lo.layers = sealed::LayerRange{1, 2};
  auto other = sealed::load_sealed_model(sealed_path, *set, lo);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.error().message().find("belongs to layer 2"), std::string::npos) << other.error().message();
  // Another measurement gets no range either.
  std::string released = refuse_node_b_then_released_event(range);
  EXPECT_NE(released.find(R"("released":"layers 0..1 + rest + input")"), std::string::npos) << released;
}

// A pipeline front asks for the metadata only: the rest key opens the tokenizer and nothing else.
TEST_F(E2E, AFrontGetsOnlyTheRestKeyAndLoadsTheMetadata) {
  RangeRequest meta;
  meta.metadata_only = true;
  auto set = fetch_range_keys(server->address(), "stories260K", 1, meta, channel::attester_from_provider(node_a),
                              broker_check(), FetchOptions{10s});
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_EQ(set->describe(), "metadata only (rest)");
  EXPECT_FALSE(set->holds(0) || set->holds(sealed::kPartInput) || set->holds(sealed::kPartOutput));
  sealed::LoadOptions lo;
  lo.expected_model_id = "stories260K";
  lo.metadata_only = true;
  auto m = sealed::load_sealed_model(sealed_path, *set, lo);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_TRUE(m->gguf.get_string("tokenizer.ggml.model").ok());
  EXPECT_FALSE(m->has_tensor("token_embd.weight"));
  lo.metadata_only = false;
  lo.layers = sealed::LayerRange{0, 0};
  auto layer0 = sealed::load_sealed_model(sealed_path, *set, lo);
  ASSERT_FALSE(layer0.ok());
  EXPECT_EQ(layer0.error().code(), ErrorCode::kSecurity);
  std::string released = refuse_node_b_then_released_event(meta);
  EXPECT_NE(released.find(R"("range":{"metadata_only":true})"), std::string::npos) << released;
  EXPECT_NE(released.find(R"x("released":"metadata only (rest)")x"), std::string::npos) << released;
}

}  // namespace
}  // namespace veil::kbs
