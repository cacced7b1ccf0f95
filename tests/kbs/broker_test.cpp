// Key broker core: policy decisions, rollback protection, wrapping and the audit chain (no transport).
#include <gtest/gtest.h>

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <functional>

#include "kbs/kbs.h"
#include "kbs_test_util.h"
#include "sealed/sealed.h"

namespace veil::kbs {
namespace {

using namespace std::chrono_literals;

attest::Claims sim_claims(const Bytes& measurement, TimePoint issued) {
  attest::Claims c;
  c.type = attest::TeeType::kSim;
  c.simulated = true;
  c.measurements["measurement"] = measurement;
  c.issued_at = issued;
  return c;
}

struct BrokerFixture : ::testing::Test {
  testsupport::TempDir tmp{"veil-kbs"};
  std::filesystem::path dir = tmp.path();
  std::filesystem::path db = dir / "kbs.db";
  SecretBytes master = sealed::generate_model_key();
  TimePoint now = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));
  Bytes good = Bytes(48, 0xA1);
  Bytes other = Bytes(48, 0xB2);
  std::unique_ptr<Broker> broker;
  SecretBytes key1 = sealed::generate_model_key();
  SecretBytes key2 = sealed::generate_model_key();

  void SetUp() override {
    auto b = Broker::open(db, master, [this] { return now; });
    ASSERT_TRUE(b.ok()) << b.error().message();
    broker = std::move(*b);
    ASSERT_TRUE(broker->add_key("stories", 1, key1, test::sim_policy(good)).ok());
    ASSERT_TRUE(broker->add_key("stories", 2, key2, test::sim_policy(good)).ok());
  }
  ReleaseRequest req(uint64_t v) { return {"stories", v, "test-peer", std::nullopt}; }
  void sql(const std::string& s) {
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    char* err = nullptr;
    int rc = sqlite3_exec(h, s.c_str(), nullptr, nullptr, &err);
    EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(h);
  }
};

TEST_F(BrokerFixture, AllowedMeasurementGetsTheKey) {
  auto r = broker->release(req(1), sim_claims(good, now - 5s));
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(ct_equal(r->key.view(), key1.view()));
  EXPECT_EQ(r->key_id, sealed::key_id_for(key1.view()));
  EXPECT_EQ(*broker->highest_released("stories"), 1u);
  auto keys = broker->list_keys();
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->size(), 2u);
}

TEST_F(BrokerFixture, OtherMeasurementDebugAndStaleEvidenceAreRefused) {
  auto a = broker->release(req(1), sim_claims(other, now));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(a.error().message().find("measurement"), std::string::npos) << a.error().message();
  attest::Claims dbg = sim_claims(good, now);
  dbg.debug = true;
  auto b = broker->release(req(1), dbg);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message().find("debug"), std::string::npos) << b.error().message();
  auto c = broker->release(req(1), sim_claims(good, now - 1h));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code(), ErrorCode::kSecurity);
  attest::Claims real = sim_claims(good, now);
  real.simulated = false;
  real.type = attest::TeeType::kTdx;
  EXPECT_FALSE(broker->release(req(1), real).ok());
  auto d = broker->release({"unknown", 1, "p", std::nullopt}, sim_claims(good, now));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code(), ErrorCode::kNotFound);
  // Nothing was released, every refusal is audited, and refusals carry no key material.
  EXPECT_EQ(*broker->highest_released("stories"), 0u);
  auto log = broker->audit_entries();
  ASSERT_TRUE(log.ok());
  int refusals = 0;
  for (const auto& e : *log) {
    if (e.event_json.find("\"refuse\"") != std::string::npos) ++refusals;
    EXPECT_EQ(e.event_json.find(to_hex(key1.view())), std::string::npos);
  }
  EXPECT_EQ(refusals, 5);
  EXPECT_TRUE(broker->verify_audit().ok());
}

TEST_F(BrokerFixture, RollbackIsRefusedUntilAnAuditedDowngrade) {
  ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());
  auto old = broker->release(req(1), sim_claims(good, now));
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(old.error().message().find("rollback"), std::string::npos) << old.error().message();
  EXPECT_FALSE(broker->allow_downgrade("stories", 1, "").ok());   // a reason is required
  EXPECT_FALSE(broker->allow_downgrade("stories", 2, "x").ok());  // not a downgrade
  ASSERT_TRUE(broker->allow_downgrade("stories", 1, "v2 regressed; ticket 42").ok());
  auto again = broker->release(req(1), sim_claims(good, now));
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_TRUE(ct_equal(again->key.view(), key1.view()));
  ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());  // newer still allowed
  EXPECT_FALSE(broker->release(req(1), sim_claims(good, now)).ok());  // and the mark moved up again
  bool audited = false;
  auto log = broker->audit_entries();
  ASSERT_TRUE(log.ok());
  std::vector<AuditEntry> entries = std::move(*log);
  for (const auto& e : entries) audited |= e.event_json.find("allow-downgrade") != std::string::npos;
  EXPECT_TRUE(audited);
  EXPECT_TRUE(broker->verify_audit().ok());
}

TEST_F(BrokerFixture, DuplicateKeysAndBadPoliciesAreRefused) {
  EXPECT_FALSE(broker->add_key("stories", 1, key2, test::sim_policy(good)).ok());
  EXPECT_FALSE(broker->add_key("stories", 3, key2, "{}").ok());
  EXPECT_FALSE(broker->add_key("stories", 3, key2, R"({"allowed_types": []})").ok());
  EXPECT_FALSE(broker->add_key("stories", 3, SecretBytes(5), test::sim_policy(good)).ok());
}

TEST_F(BrokerFixture, AnotherMasterKeyIsRefused) {
  broker.reset();
  auto b = Broker::open(db, sealed::generate_model_key());
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code(), ErrorCode::kSecurity);
}

TEST_F(BrokerFixture, PolicyLoosenedInTheDatabaseMakesTheKeyUnusable) {
  sql("UPDATE model_keys SET policy = '" + test::sim_policy(other) + "' WHERE version = 1");
  auto r = broker->release(req(1), sim_claims(other, now));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("fails authentication"), std::string::npos) << r.error().message();
}

TEST_F(BrokerFixture, RollbackRecordLoweredInTheDatabaseIsDetected) {
  ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());
  sql("UPDATE rollback SET highest = 1");
  auto r = broker->release(req(1), sim_claims(good, now));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("rollback"), std::string::npos) << r.error().message();
}

struct AuditFixture : BrokerFixture {
  void SetUp() override {
    BrokerFixture::SetUp();
    ASSERT_TRUE(broker->release(req(1), sim_claims(good, now)).ok());
    ASSERT_FALSE(broker->release(req(1), sim_claims(other, now)).ok());
    ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());
    auto rep = broker->verify_audit();
    ASSERT_TRUE(rep.ok()) << rep.error().message();
    ASSERT_EQ(rep->entries, 5u);  // 2 add-key, release, refuse, release
  }
  void expect_detected(std::string_view fragment) {
    auto rep = broker->verify_audit();
    ASSERT_FALSE(rep.ok());
    EXPECT_EQ(rep.error().code(), ErrorCode::kSecurity);
    EXPECT_NE(rep.error().message().find(fragment), std::string::npos) << rep.error().message();
  }
};

TEST_F(AuditFixture, ChangedEntryIsDetected) {
  sql("UPDATE audit SET event = replace(event, 'test-peer', 'someone') WHERE seq = 3");
  expect_detected("entry 3: MAC mismatch");
}

TEST_F(AuditFixture, RemovedEntryIsDetected) {
  sql("DELETE FROM audit WHERE seq = 2");
  expect_detected("entry 2");
}

TEST_F(AuditFixture, ReorderedEntriesAreDetected) {
  sql("UPDATE audit SET seq = 100 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; "
      "UPDATE audit SET seq = 4 WHERE seq = 100;");
  expect_detected("entry 3");
}

TEST_F(AuditFixture, RemovedTailIsDetected) {
  sql("DELETE FROM audit WHERE seq = 5");
  expect_detected("removed");
}

TEST_F(AuditFixture, AppendedForgeryIsDetected) {
  sql("INSERT INTO audit(seq, event, prev, mac) SELECT 6, event, mac, mac FROM audit WHERE seq = 5");
  expect_detected("entry 6");
}


// A range request gets only its parts' keys, after the same policy and rollback checks; the audit records the range.
TEST_F(BrokerFixture, RangeRequestReleasesOnlyThatRangesKeys) {
  ReleaseRequest r = req(1);
  r.range = RangeRequest{1, 2, 5, false};
  auto rel = broker->release(r, sim_claims(good, now));
  ASSERT_TRUE(rel.ok()) << rel.error().message();
  EXPECT_TRUE(rel->key.empty());  // never the model key
  ASSERT_TRUE(rel->range_keys.has_value());
  const sealed::RangeKeySet& set = *rel->range_keys;
  EXPECT_EQ(set.describe(), "layers 1..2 + rest");
  EXPECT_EQ(set.key_id(), sealed::key_id_for(key1.view()));
  auto expected = sealed::RangeKeySet::derive(key1, "stories", 1, {{1, 2}, false, false});
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(ct_equal(set.part_key(2), expected->part_key(2)));
  EXPECT_FALSE(set.holds(0) || set.holds(3) || set.holds(sealed::kPartInput) || set.holds(sealed::kPartOutput));
  EXPECT_EQ(*broker->highest_released("stories"), 1u);
  // The last stage of a tied-embedding model also gets the input globals (token_embd is its head).
  r.range = RangeRequest{4, 4, 5, true};
  auto last = broker->release(r, sim_claims(good, now));
  ASSERT_TRUE(last.ok()) << last.error().message();
  EXPECT_EQ(last->range_keys->describe(), "layers 4..4 + rest + input + output");
  auto entries = broker->audit_entries();
  ASSERT_TRUE(entries.ok());
  const std::string& ev = entries->back().event_json;
  EXPECT_NE(ev.find(R"("range":{"first_layer":4,"last_layer":4,"layer_count":5,"tied_embeddings":true})"),
            std::string::npos) << ev;
  EXPECT_NE(ev.find(R"("released":"layers 4..4 + rest + input + output")"), std::string::npos) << ev;
}

TEST_F(BrokerFixture, RangeRequestsFollowPolicyRollbackAndValidation) {
  ReleaseRequest r = req(1);
  r.range = RangeRequest{0, 1, 5, false};
  auto refused = broker->release(r, sim_claims(other, now));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kSecurity);
  ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());
  auto rollback = broker->release(r, sim_claims(good, now));
  ASSERT_FALSE(rollback.ok());
  EXPECT_NE(rollback.error().message().find("rollback"), std::string::npos) << rollback.error().message();
  ReleaseRequest bad = req(2);
  for (RangeRequest range : {RangeRequest{2, 1, 5, false}, RangeRequest{0, 5, 5, false}, RangeRequest{0, 0, 0, false}}) {
    bad.range = range;
    auto b = broker->release(bad, sim_claims(good, now));
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.error().code(), ErrorCode::kInvalidArgument) << b.error().message();
  }
  auto entries = broker->audit_entries();
  ASSERT_TRUE(entries.ok());
  EXPECT_NE(entries->back().event_json.find(R"("event":"refuse")"), std::string::npos);
  EXPECT_NE(entries->back().event_json.find(R"("range":{"first_layer":0,"last_layer":0,"layer_count":0)"),
            std::string::npos) << entries->back().event_json;
  EXPECT_TRUE(broker->verify_audit().ok());
}

// A pipeline front asks for the metadata only: after the same policy and rollback checks it gets the rest key
// alone, and the audit says so.
TEST_F(BrokerFixture, MetadataOnlyRequestReleasesOnlyTheRestKey) {
  ReleaseRequest r = req(1);
  r.range = RangeRequest{};
  r.range->metadata_only = true;
  auto refused = broker->release(r, sim_claims(other, now));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(refused.error().message().find("metadata only: refused by the model's release policy"), std::string::npos)
      << refused.error().message();
  auto rel = broker->release(r, sim_claims(good, now));
  ASSERT_TRUE(rel.ok()) << rel.error().message();
  EXPECT_TRUE(rel->key.empty());  // never the model key
  ASSERT_TRUE(rel->range_keys.has_value());
  const sealed::RangeKeySet& set = *rel->range_keys;
  EXPECT_TRUE(set.spec().metadata_only);
  EXPECT_EQ(set.describe(), "metadata only (rest)");
  EXPECT_EQ(set.key_id(), sealed::key_id_for(key1.view()));
  EXPECT_FALSE(set.holds(0) || set.holds(sealed::kPartInput) || set.holds(sealed::kPartOutput));
  auto full = sealed::RangeKeySet::derive(key1, "stories", 1, {{0, 0}, true, false});
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(ct_equal(set.part_key(sealed::kPartRest), full->part_key(sealed::kPartRest)));
  auto entries = broker->audit_entries();
  ASSERT_TRUE(entries.ok());
  const std::string& ev = entries->back().event_json;
  EXPECT_NE(ev.find(R"("event":"release")"), std::string::npos) << ev;
  EXPECT_NE(ev.find(R"("range":{"metadata_only":true})"), std::string::npos) << ev;
  EXPECT_NE(ev.find(R"x("released":"metadata only (rest)")x"), std::string::npos) << ev;
  const std::string& refusal = (*entries)[entries->size() - 2].event_json;
  EXPECT_NE(refusal.find(R"("event":"refuse")"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find(R"("range":{"metadata_only":true})"), std::string::npos) << refusal;
  // Rollback protection applies as to any release.
  ASSERT_TRUE(broker->release(req(2), sim_claims(good, now)).ok());
  auto rollback = broker->release(r, sim_claims(good, now));
  ASSERT_FALSE(rollback.ok());
  EXPECT_NE(rollback.error().message().find("rollback"), std::string::npos) << rollback.error().message();
  // A key stored with its layer count: a metadata-only request names none and is not held to it.
  SecretBytes key3 = sealed::generate_model_key();
  ASSERT_TRUE(broker->add_key("stories", 3, key3, test::sim_policy(good), 5).ok());
  ReleaseRequest r3 = req(3);
  r3.range = r.range;
  EXPECT_TRUE(broker->release(r3, sim_claims(good, now)).ok());
  EXPECT_TRUE(broker->verify_audit().ok());
}

// A key stored with its model's layer count: range requests naming another count are refused; the count is bound
// into the wrapped record, so changing it in the database makes the key unusable.
TEST_F(BrokerFixture, KnownLayerCountIsEnforcedAndBound) {
  SecretBytes key3 = sealed::generate_model_key();
  ASSERT_TRUE(broker->add_key("stories", 3, key3, test::sim_policy(good), 5).ok());
  EXPECT_FALSE(broker->add_key("other", 1, key3, test::sim_policy(good), 0).ok());
  ReleaseRequest r = req(3);
  r.range = RangeRequest{1, 2, 5, false};
  ASSERT_TRUE(broker->release(r, sim_claims(good, now)).ok());
  r.range = RangeRequest{1, 2, 6, false};
  auto wrong = broker->release(r, sim_claims(good, now));
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(wrong.error().message().find("the model has 5"), std::string::npos) << wrong.error().message();
  auto keys = broker->list_keys();
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->back().layer_count, std::optional<uint32_t>(5));
  EXPECT_FALSE(keys->front().layer_count.has_value());
  sql("UPDATE model_keys SET layer_count = 6 WHERE version = 3");
  r.range = RangeRequest{1, 2, 6, false};
  auto edited = broker->release(r, sim_claims(good, now));
  ASSERT_FALSE(edited.ok());
  EXPECT_NE(edited.error().message().find("fails authentication"), std::string::npos) << edited.error().message();
  EXPECT_TRUE(broker->verify_audit().ok());
}

// A key stored with a pipeline's stage table: a range goes only to evidence satisfying the policy of the one stage
// given exactly that range; the front policy gates the metadata-only request; the whole key is refused; the table
// is bound into the wrapped record, so editing it in the database makes the key unusable.
TEST_F(BrokerFixture, StageTableBindsEachRangeToItsStagesPolicy) {
  const Bytes s0(48, 0xC0), s1(48, 0xC1), front(48, 0xF0);
  const std::string any_sim = R"({"allowed_types": ["sim"], "allow_simulated": true})";
  StageTable table{{{0, 2, test::sim_policy(s0)}, {3, 4, test::sim_policy(s1)}}, test::sim_policy(front)};
  SecretBytes key = sealed::generate_model_key();
  // Validation: a layer count to check against, contiguous ranges covering it, valid policies.
  EXPECT_FALSE(broker->add_key("piped", 1, key, any_sim, std::nullopt, table).ok());
  for (auto edit : std::initializer_list<std::function<void(StageTable&)>>{
           [](StageTable& t) { t.stages[1].first_layer = 4; }, [](StageTable& t) { t.stages[1].last_layer = 5; },
           [](StageTable& t) { t.stages.pop_back(); }, [](StageTable& t) { t.stages[0].policy_json = "{"; },
           [](StageTable& t) { t.front_policy_json = "[]"; }}) {
    StageTable bad = table;
    edit(bad);
    auto st = broker->add_key("piped", 1, key, any_sim, 5, bad);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(st.error().message().find("stage table"), std::string::npos) << st.error().message();
  }
  ASSERT_TRUE(broker->add_key("piped", 1, key, any_sim, 5, table).ok());
  auto keys = broker->list_keys();
  ASSERT_TRUE(keys.ok());
  ASSERT_TRUE(keys->front().stages.has_value());
  EXPECT_EQ(keys->front().stages->stages.size(), 2u);

  auto ask = [&](std::optional<RangeRequest> range, const Bytes& measurement) {
    return broker->release({"piped", 1, "test-peer", range}, sim_claims(measurement, now));
  };
  auto expect_refused = [&](const Result<Release>& rel, std::string_view what) {
    ASSERT_FALSE(rel.ok()) << what;
    EXPECT_EQ(rel.error().code(), ErrorCode::kSecurity) << rel.error().message();
    EXPECT_NE(rel.error().message().find(what), std::string::npos) << rel.error().message();
  };
  auto last_event = [&] {
    auto entries = broker->audit_entries();
    return entries.ok() && !entries->empty() ? entries->back().event_json : std::string();
  };
  // Stage 1's evidence gets stage 1's range, and the audit names the stage.
  auto got = ask(RangeRequest{3, 4, 5, false}, s1);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(got->range_keys->describe(), "layers 3..4 + rest + output");
  EXPECT_NE(last_event().find(R"("stage":1,"released":"layers 3..4 + rest + output")"), std::string::npos)
      << last_event();
  // ... and not stage 0's, nor a range that is no stage's, nor the whole key.
  expect_refused(ask(RangeRequest{0, 2, 5, false}, s1), "layers 0..2: refused by stage 0's policy");
  EXPECT_NE(last_event().find(R"("event":"refuse")"), std::string::npos) << last_event();
  expect_refused(ask(RangeRequest{1, 2, 5, false}, s1), "layers 1..2: refused: no stage of the recorded stage table");
  expect_refused(ask(RangeRequest{0, 4, 5, false}, s0), "layers 0..4: refused: no stage");
  expect_refused(ask(std::nullopt, s0), "only stage ranges are released");
  ASSERT_TRUE(ask(RangeRequest{0, 2, 5, false}, s0).ok());
  EXPECT_NE(last_event().find(R"("stage":0)"), std::string::npos) << last_event();
  // The front's metadata-only request needs the front policy.
  RangeRequest meta;
  meta.metadata_only = true;
  expect_refused(ask(meta, s1), "metadata only: refused by the front policy");
  auto front_got = ask(meta, front);
  ASSERT_TRUE(front_got.ok()) << front_got.error().message();
  EXPECT_EQ(front_got->range_keys->describe(), "metadata only (rest)");
  // Stage policies swapped, or the table removed, behind the broker's back: the record no longer authenticates.
  sql("UPDATE model_keys SET stage_table = replace(stage_table, '" + to_hex(s0) + "', '" + to_hex(s1) +
      "') WHERE model_id = 'piped'");
  expect_refused(ask(RangeRequest{0, 2, 5, false}, s1), "fails authentication");
  sql("UPDATE model_keys SET stage_table = NULL WHERE model_id = 'piped'");
  expect_refused(ask(RangeRequest{0, 2, 5, false}, s1), "fails authentication");
  EXPECT_TRUE(broker->verify_audit().ok());
}

// A key stored without a stage table (e.g. by 'veil seal --kbs-db', before its manifest could exist) gets one later:
// re-wrapped with the table bound in, audited, never replaced; from then on the stage rules apply.
TEST_F(BrokerFixture, AStageTableCanBeBoundOnceToAKeyStoredWithoutOne) {
  const Bytes s0(48, 0xC0), s1(48, 0xC1);
  StageTable table{{{0, 2, test::sim_policy(s0)}, {3, 4, test::sim_policy(s1)}}, ""};
  auto no_count = broker->bind_stages("stories", 1, table);  // stored without a layer count
  ASSERT_FALSE(no_count.ok());
  EXPECT_NE(no_count.error().message().find("needs the model's layer count"), std::string::npos)
      << no_count.error().message();
  EXPECT_EQ(broker->bind_stages("missing", 1, table).error().code(), ErrorCode::kNotFound);
  SecretBytes key = sealed::generate_model_key();
  const std::string any_sim = R"({"allowed_types": ["sim"], "allow_simulated": true})";
  ASSERT_TRUE(broker->add_key("late", 1, key, any_sim, 5).ok());
  ReleaseRequest whole{"late", 1, "test-peer", std::nullopt};
  ASSERT_TRUE(broker->release(whole, sim_claims(s0, now)).ok());  // no table yet: as before
  Status bound = broker->bind_stages("late", 1, table);
  ASSERT_TRUE(bound.ok()) << bound.error().message();
  auto again = broker->bind_stages("late", 1, table);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message().find("already has a stage table"), std::string::npos) << again.error().message();
  auto refused = broker->release(whole, sim_claims(s0, now));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kSecurity);
  ReleaseRequest stage1{"late", 1, "test-peer", RangeRequest{3, 4, 5, false}};
  auto got = broker->release(stage1, sim_claims(s1, now));
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_TRUE(ct_equal(got->range_keys->part_key(3),
                       sealed::RangeKeySet::derive(key, "late", 1, {{3, 4}, false, false})->part_key(3)));
  EXPECT_FALSE(broker->release(stage1, sim_claims(s0, now)).ok());
  auto entries = broker->audit_entries();
  ASSERT_TRUE(entries.ok());
  bool audited = false;
  for (const AuditEntry& e : *entries) {
    audited |= e.event_json.find(R"("event":"bind-stages","model_id":"late")") != std::string::npos;
  }
  EXPECT_TRUE(audited);
  sql("UPDATE model_keys SET stage_table = NULL WHERE model_id = 'late'");  // removing it does not undo the binding
  auto removed = broker->release(whole, sim_claims(s0, now));
  ASSERT_FALSE(removed.ok());
  EXPECT_NE(removed.error().message().find("fails authentication"), std::string::npos) << removed.error().message();
  EXPECT_TRUE(broker->verify_audit().ok());
}

// A database created before the layer_count column: opening it adds the column; its records still release.
TEST(BrokerMigration, ADatabaseWithoutTheLayerCountColumnIsUpgraded) {
  testsupport::TempDir dir{"veil-kbs-migrate"};
  auto db = dir / "old.db";
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(h,
                         "CREATE TABLE model_keys(model_id TEXT NOT NULL, version INTEGER NOT NULL, key_id BLOB NOT NULL,"
                         " wrapped BLOB NOT NULL, policy TEXT NOT NULL, created_at INTEGER NOT NULL,"
                         " PRIMARY KEY(model_id, version));",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(h);
  SecretBytes master = sealed::generate_model_key();
  auto b = Broker::open(db, master);
  ASSERT_TRUE(b.ok()) << b.error().message();
  SecretBytes key = sealed::generate_model_key();
  ASSERT_TRUE((*b)->add_key("m", 1, key, test::sim_policy(Bytes(48, 1)), 4).ok());
  auto keys = (*b)->list_keys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ(keys->front().layer_count, std::optional<uint32_t>(4));
  b->reset();
  EXPECT_TRUE(Broker::open(db, master).ok());  // reopening does not migrate twice
}

// The wire: both request types parse; every field is validated; unknown fields and types are refused.
TEST(KbsWire, RequestsAreValidatedFieldByField) {
  auto parse = [](std::string_view text) { return parse_key_request(as_bytes(text), "peer"); };
  auto whole = parse(R"({"type":"key-request","model_id":"m","version":3})");
  ASSERT_TRUE(whole.ok()) << whole.error().message();
  EXPECT_FALSE(whole->range.has_value());
  auto range = parse(R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":1,"last_layer":2,)"
                     R"("layer_count":4,"tied_embeddings":false})");
  ASSERT_TRUE(range.ok()) << range.error().message();
  ASSERT_TRUE(range->range.has_value());
  EXPECT_EQ(range->range->last_layer, 2u);
  EXPECT_EQ(range->range->layer_count, 4u);
  EXPECT_FALSE(range->range->metadata_only);
  auto meta = parse(R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":true})");
  ASSERT_TRUE(meta.ok()) << meta.error().message();
  ASSERT_TRUE(meta->range.has_value());
  EXPECT_TRUE(meta->range->metadata_only);
  auto not_meta = parse(R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":1,"last_layer":2,)"
                        R"("layer_count":4,"tied_embeddings":false,"metadata_only":false})");
  ASSERT_TRUE(not_meta.ok()) << not_meta.error().message();
  EXPECT_FALSE(not_meta->range->metadata_only);
  const char* bad[] = {
      // metadata_only: a boolean, never beside a layer field, never in a whole-key request
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":1})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":"true"})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":true,"first_layer":0})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":true,"layer_count":5})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":true,"tied_embeddings":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"metadata_only":true,"x":1})",
      R"({"type":"range-key-request","model_id":"","version":3,"metadata_only":true})",
      R"({"type":"range-key-request","model_id":"m","version":-3,"metadata_only":true})",
      R"({"type":"key-request","model_id":"m","version":3,"metadata_only":true})",
      R"({"type":"key-request","model_id":"m","version":3,"first_layer":1})",  // range field in a whole-key request
      R"({"type":"range-key-request","model_id":"m","version":3})",            // range fields missing
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":2,"last_layer":1,"layer_count":4,"tied_embeddings":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":0,"last_layer":4,"layer_count":4,"tied_embeddings":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":0,"last_layer":1,"layer_count":4294967296,"tied_embeddings":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":-1,"last_layer":1,"layer_count":4,"tied_embeddings":false})",
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":0,"last_layer":1,"layer_count":4,"tied_embeddings":1})",
      R"({"type":"range-key-request","model_id":"m","version":3,"first_layer":0,"last_layer":1,"layer_count":4,"tied_embeddings":false,"x":1})",
      R"({"type":"whole-model","model_id":"m","version":3})",
      R"({"type":7,"model_id":"m","version":3})",
  };
  for (const char* b : bad) {
    auto r = parse(b);
    ASSERT_FALSE(r.ok()) << b;
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << b;
    EXPECT_EQ(r.error().message().find('\n'), std::string::npos);
  }
}

TEST(KbsWire, RepliesAreCheckedForTheirKind) {
  SecretBytes key = sealed::generate_model_key();
  auto reply_of = [](const sealed::RangeKeySet& set) {  // 0x02 || the set's wire form
    SecretBytes wire = set.serialize();
    Bytes reply{2};
    reply.insert(reply.end(), wire.view().begin(), wire.view().end());
    return reply;
  };
  auto set = sealed::RangeKeySet::derive(key, "m", 1, {{0, 0}, true, false});
  ASSERT_TRUE(set.ok());
  Bytes range_reply = reply_of(*set);
  auto r = parse_key_reply(range_reply, true);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(ct_equal(r->range_keys->part_key(0), set->part_key(0)));
  EXPECT_FALSE(parse_key_reply(range_reply, false).ok());  // a range set where the whole key was asked for
  auto meta_set = sealed::RangeKeySet::derive(key, "m", 1, sealed::metadata_only_spec());
  ASSERT_TRUE(meta_set.ok());
  Bytes meta_reply = reply_of(*meta_set);
  auto mr = parse_key_reply(meta_reply, true);
  ASSERT_TRUE(mr.ok()) << mr.error().message();
  EXPECT_TRUE(mr->range_keys->spec().metadata_only);
  EXPECT_FALSE(parse_key_reply(meta_reply, false).ok());
  Bytes whole_reply{0};
  whole_reply.insert(whole_reply.end(), key.view().begin(), key.view().end());
  auto id = sealed::key_id_for(key.view());
  whole_reply.insert(whole_reply.end(), id.begin(), id.end());
  EXPECT_TRUE(parse_key_reply(whole_reply, false).ok());
  EXPECT_FALSE(parse_key_reply(whole_reply, true).ok());
  whole_reply[1] ^= 1;  // the key no longer matches its id
  EXPECT_EQ(parse_key_reply(whole_reply, false).error().code(), ErrorCode::kSecurity);
  Bytes refusal{1, static_cast<uint8_t>(ErrorCode::kNotFound), 'n', 'o', '\n'};
  auto e = parse_key_reply(refusal, true);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(e.error().message(), "refused: no?");
}

}  // namespace
}  // namespace veil::kbs
