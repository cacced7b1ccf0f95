// The pipeline runtime end to end in one process: stage servers on 127.0.0.1 ephemeral ports with sim
// attestation, the front's PipelineStepModel, greedy output compared with one process on stories260K.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>

#include "pipeline/runtime.h"
#include "support/sim_tee.h"
#include "support/temp_dir.h"

namespace veil::pipeline {
namespace {

using namespace std::chrono_literals;

const std::string kModel = std::string(VEIL_SHARED_DIR) + "/models/stories260K/stories260K.gguf";
const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378, 276, 412, 293};

std::shared_ptr<const gguf::File> model_file() {
  static std::shared_ptr<const gguf::File> file = [] {
    auto f = gguf::File::open(kModel);
    EXPECT_TRUE(f.ok()) << f.error().message();
    return std::make_shared<const gguf::File>(std::move(*f));
  }();
  return file;
}

int32_t argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

// Greedy continuation with the whole model in this process: the reference.
std::vector<int32_t> reference_greedy(const std::vector<int32_t>& prompt, int n) {
  auto model = engine::Model::load(model_file());
  EXPECT_TRUE(model.ok());
  engine::Context ctx((*model)->hparams(), {.threads = 1});
  engine::KvCache cache = (*model)->new_cache(256);
  std::vector<int32_t> out, in = prompt;
  for (int i = 0; i < n; ++i) {
    engine::ForwardRequest r{&cache, in, engine::LogitsMode::kLast};
    EXPECT_TRUE((*model)->forward({&r, 1}, ctx).ok());
    out.push_back(argmax(ctx.logits()));
    in = {out.back()};
  }
  return out;
}

// Greedy continuation through a StepModel, `n_seq` copies of the prompt in parallel slots (one batch per step).
Result<std::vector<std::vector<int32_t>>> step_greedy(server::StepModel& m, const std::vector<int32_t>& prompt, int n,
                                                      uint32_t n_seq = 1, uint32_t first_slot = 0) {
  std::vector<std::vector<int32_t>> out(n_seq), in(n_seq, prompt);
  std::vector<uint32_t> pos(n_seq, 0);
  std::vector<float> logits;
  for (uint32_t s = 0; s < n_seq; ++s) m.reset_slot(first_slot + s);
  for (int i = 0; i < n; ++i) {
    std::vector<server::StepInput> batch;
    for (uint32_t s = 0; s < n_seq; ++s) batch.push_back({first_slot + s, in[s], pos[s], true});
    VEIL_TRY(m.forward(batch, logits));
    for (uint32_t s = 0; s < n_seq; ++s) {
      pos[s] += static_cast<uint32_t>(in[s].size());
      out[s].push_back(argmax(std::span<const float>(logits).subspan(s * m.vocab_size(), m.vocab_size())));
      in[s] = {out[s].back()};
    }
  }
  return out;
}

class PipelineRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tee = testsupport::make_sim_tee(dir_);
    ASSERT_TRUE(tee.ok()) << tee.error().message();
    provider_ = tee->provider;
    collateral_ = tee->collateral;
    measurement_ = tee->measurement;
  }
  void TearDown() override {
    front_.reset();
    stages_.clear();
  }

  attest::Policy policy(bool right_measurement) const {
    return testsupport::sim_policy(right_measurement ? measurement_ : Bytes(measurement_.size(), 0));
  }

  // A manifest for stories260K (5 layers) cut at `cuts`; endpoints are filled in when the stages start.
  ShardManifest make_manifest(const std::vector<uint32_t>& bounds) {
    ShardManifest m;
    m.model_id = "stories260K";
    m.model_version = 1;
    m.sealed_model_sha256 = Bytes(32, 0xaa);
    m.n_layers = 5;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      StageSpec s;
      s.index = static_cast<uint32_t>(i);
      s.layer_begin = bounds[i];
      s.layer_end = bounds[i + 1];
      s.weights_sha256 = Bytes(32, 0xbb);
      s.endpoint = "127.0.0.1:0";
      s.policy = policy(true);
      m.stages.push_back(s);
    }
    return m;
  }

  std::unique_ptr<StageServer> start_stage(const ShardManifest& m, uint32_t i, const std::string& listen,
                                           std::function<void()> hook = {}) {
    auto model = engine::Model::load(model_file(), {.layers = {m.stages[i].layer_begin, m.stages[i].layer_end}});
    EXPECT_TRUE(model.ok()) << model.error().message();
    StageOptions so;
    so.max_slots = 4;
    so.n_ctx = 256;
    so.listen = listen;
    so.channel.attester = channel::attester_from_provider(provider_);
    so.collateral = collateral_;
    so.retry.initial_backoff = 5ms;
    so.retry.max_backoff = 50ms;
    so.before_forward = std::move(hook);
    auto s = StageServer::start(m, i, *model, so);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Starts every stage on an ephemeral port and points the manifest at them, the last first: a stage reads its
  // successor's endpoint from the manifest it starts with. `endpoint_of` may put something in front of a stage (a
  // relay); the stages before it and the front then reach it there.
  void start_stages(ShardManifest& m, std::map<uint32_t, std::function<void()>> hooks = {},
                    const std::function<std::string(uint32_t, const std::string&)>& endpoint_of = {}) {
    stages_.resize(m.stages.size());
    for (size_t i = m.stages.size(); i-- > 0;) {
      stages_[i] = start_stage(m, static_cast<uint32_t>(i), "tcp:127.0.0.1:0", hooks[static_cast<uint32_t>(i)]);
      ASSERT_TRUE(stages_[i]);
      m.stages[i].endpoint = endpoint_of ? endpoint_of(static_cast<uint32_t>(i), stages_[i]->address())
                                         : stages_[i]->address();
    }
  }

  FrontOptions front_options(std::chrono::milliseconds timeout = 5s) const {
    FrontOptions fo;
    fo.collateral = collateral_;
    fo.request_timeout = timeout;
    fo.health_interval = 0ms;  // tests call check_health() themselves
    fo.retry.max_attempts = 20;
    fo.retry.initial_backoff = 5ms;
    fo.retry.max_backoff = 50ms;
    return fo;
  }

  testsupport::TempDir tmp_{"veil-pipeline"};
  std::filesystem::path dir_ = tmp_.path();
  std::shared_ptr<attest::Provider> provider_;
  attest::Collateral collateral_;
  Bytes measurement_;
  std::vector<std::unique_ptr<StageServer>> stages_;
  std::unique_ptr<PipelineStepModel> front_;
};

TEST(PipelineWire, RoundTripsAndRejectsMalformedMessages) {
  Message m;
  m.type = MsgType::kForward;
  m.request_id = 42;
  m.segments = {{1, 0, 2, false}, {3, 7, 1, true}};
  m.values.assign(3 * 4, 0.5f);
  auto back = decode_message(encode_message(m));
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->request_id, 42u);
  ASSERT_EQ(back->segments.size(), 2u);
  EXPECT_EQ(back->segments[1].pos0, 7u);
  EXPECT_TRUE(back->segments[1].want_logits);
  EXPECT_EQ(back->values, m.values);

  Bytes b = encode_message(m);
  b[0] = 9;
  EXPECT_EQ(decode_message(b).error().code(), ErrorCode::kUnsupported);
  b = encode_message(m);
  b.pop_back();
  EXPECT_EQ(decode_message(b).error().code(), ErrorCode::kCorrupt);  // truncated hidden states
  b = encode_message(m);
  b.push_back(0);
  EXPECT_EQ(decode_message(b).error().code(), ErrorCode::kCorrupt);  // trailing byte
  m.values.assign(7, 0.0f);  // not a whole row per token
  EXPECT_EQ(decode_message(encode_message(m)).error().code(), ErrorCode::kCorrupt);
  m.values.clear();  // neither tokens nor hidden states
  EXPECT_EQ(decode_message(encode_message(m)).error().code(), ErrorCode::kCorrupt);
  // A huge declared count is refused before any allocation.
  Message f;
  f.type = MsgType::kForward;
  f.segments = {{0, 0, 1, true}};
  f.tokens = {5};
  b = encode_message(f);
  std::memset(b.data() + b.size() - 16, 0xff, 8);  // the token count
  EXPECT_EQ(decode_message(b).error().code(), ErrorCode::kCorrupt);

  Message h;
  h.type = MsgType::kHello;
  h.hello_from = Peer::kPredecessor;
  h.timeout_ms = 1234;
  h.info = {1, 2, 4, 5, 0, 0, 0, 0};
  auto hb = decode_message(encode_message(h));
  ASSERT_TRUE(hb.ok()) << hb.error().message();
  EXPECT_EQ(hb->hello_from, Peer::kPredecessor);
  EXPECT_EQ(hb->timeout_ms, 1234u);
  EXPECT_EQ(hb->info, h.info);
  b = encode_message(h);
  b[2 + 8 + 32] = 3;  // an unknown sender
  EXPECT_EQ(decode_message(b).error().code(), ErrorCode::kCorrupt);
  Message done;
  done.type = MsgType::kDone;
  done.request_id = 77;
  auto db = decode_message(encode_message(done));
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(db->type, MsgType::kDone);
  EXPECT_EQ(db->request_id, 77u);

  Message e;
  e.type = MsgType::kError;
  e.error_stage = 2;
  e.error_code = ErrorCode::kTimeout;
  e.reason = std::string(500, 'x');
  auto eb = decode_message(encode_message(e));
  ASSERT_TRUE(eb.ok());
  EXPECT_EQ(eb->error_stage, 2u);
  EXPECT_EQ(eb->reason.size(), kMaxReasonBytes);
}

TEST_F(PipelineRuntime, OneTwoAndThreeStagesMatchOneProcess) {
  const int n = 24;
  auto want = reference_greedy(kPrompt, n);
  for (const auto& bounds : std::vector<std::vector<uint32_t>>{{0, 5}, {0, 2, 5}, {0, 2, 4, 5}}) {
    SCOPED_TRACE(bounds.size() - 1);
    ShardManifest m = make_manifest(bounds);
    start_stages(m);
    auto front = PipelineStepModel::connect(m, front_options());
    ASSERT_TRUE(front.ok()) << front.error().message();
    EXPECT_EQ((*front)->vocab_size(), 512u);
    auto got = step_greedy(**front, kPrompt, n, /*n_seq=*/2);
    ASSERT_TRUE(got.ok()) << got.error().message();
    EXPECT_EQ((*got)[0], want);
    EXPECT_EQ((*got)[1], want);
    (*front)->check_health();  // a ping over every control channel
    for (const StageHealth& h : (*front)->health()) {
      EXPECT_TRUE(h.connected) << h.index << ": " << h.last_error;
      EXPECT_EQ(h.reconnects, 0u);
    }
    for (size_t i = 1; i < stages_.size(); ++i) EXPECT_EQ(stages_[i]->data_sessions(), 1u) << i;
    front->reset();
    stages_.clear();
  }
}

// Lanes: without micro-batching the front lets one forward pass per stage run at once (the scheduler's lanes),
// each holding one stage at a time. Two threads stepping disjoint slots through the same front at once both get
// the one-process tokens: replies never cross between the concurrent passes.
TEST_F(PipelineRuntime, ConcurrentForwardPassesOnDisjointSlotsMatchOneProcess) {
  const int n = 16;
  auto want = reference_greedy(kPrompt, n);
  ShardManifest m = make_manifest({0, 2, 4, 5});
  start_stages(m);
  auto front = PipelineStepModel::connect(m, front_options());
  ASSERT_TRUE(front.ok()) << front.error().message();
  EXPECT_EQ((*front)->max_concurrent_forwards(), 3u);
  auto lane = [&](uint32_t first_slot) { return step_greedy(**front, kPrompt, n, /*n_seq=*/2, first_slot); };
  auto a = std::async(std::launch::async, lane, 0u);
  auto b = std::async(std::launch::async, lane, 2u);
  for (auto* f : {&a, &b}) {
    ASSERT_EQ(f->wait_for(60s), std::future_status::ready);
    auto got = f->get();
    ASSERT_TRUE(got.ok()) << got.error().message();
    EXPECT_EQ((*got)[0], want);
    EXPECT_EQ((*got)[1], want);
  }
  front->reset();  // a stage serves one front at a time
  FrontOptions fo = front_options();
  fo.micro_batches = 2;
  auto fill_drain = PipelineStepModel::connect(m, fo);
  ASSERT_TRUE(fill_drain.ok()) << fill_drain.error().message();
  EXPECT_EQ((*fill_drain)->max_concurrent_forwards(), 1u);  // fill-drain holds every stage of a pass
}

// Fill-drain: the prompt (and, in decode, the sequences of a step) split into micro-batches that overlap across
// stages give the same tokens; 5 micro-batches cut the 8-token prompts of 3 sequences mid-sequence.
TEST_F(PipelineRuntime, MicroBatchedStagesMatchOneProcess) {
  const int n = 12;
  auto want = reference_greedy(kPrompt, n);
  for (const auto& bounds : std::vector<std::vector<uint32_t>>{{0, 2, 5}, {0, 2, 4, 5}}) {
    SCOPED_TRACE(bounds.size() - 1);
    ShardManifest m = make_manifest(bounds);
    start_stages(m);
    FrontOptions fo = front_options();
    fo.micro_batches = 5;
    auto front = PipelineStepModel::connect(m, fo);
    ASSERT_TRUE(front.ok()) << front.error().message();
    EXPECT_EQ((*front)->vocab_size(), 512u);
    auto got = step_greedy(**front, kPrompt, n, /*n_seq=*/3);
    ASSERT_TRUE(got.ok()) << got.error().message();
    for (const auto& seq : *got) EXPECT_EQ(seq, want);
    front->reset();
    stages_.clear();
  }
}

// Relay mode: every stage behind a host relay (a TCP forwarder that sees only channel ciphertext).
std::unique_ptr<Relay> relay_to(const std::string& stage_address, RelayOptions o = {}) {
  o.listen = "127.0.0.1:0";
  o.target = stage_address;
  auto r = Relay::start(std::move(o));
  EXPECT_TRUE(r.ok()) << r.error().message();
  return r.ok() ? std::move(*r) : nullptr;
}

TEST_F(PipelineRuntime, StagesBehindRelaysMatchOneProcess) {
  const int n = 12;
  ShardManifest m = make_manifest({0, 2, 4, 5});
  std::vector<std::unique_ptr<Relay>> relays(m.stages.size());
  // Every stage behind its relay: the front's control channels and the stage-to-stage data channels cross them.
  start_stages(m, {}, [&](uint32_t i, const std::string& address) {
    relays[i] = relay_to(address);
    return relays[i] ? relays[i]->address() : address;
  });
  for (auto& r : relays) ASSERT_TRUE(r);
  auto front = PipelineStepModel::connect(m, front_options());
  ASSERT_TRUE(front.ok()) << front.error().message();
  auto got = step_greedy(**front, kPrompt, n, /*n_seq=*/2);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ((*got)[0], reference_greedy(kPrompt, n));
  EXPECT_EQ((*got)[1], (*got)[0]);
  front->reset();
  for (size_t i = 0; i < relays.size(); ++i) {
    relays[i]->stop();
    RelayStats st = relays[i]->stats();
    EXPECT_EQ(st.accepted, i == 0 ? 1u : 2u) << i;  // the front, and the previous stage
    EXPECT_GT(st.bytes_to_target, 0u);
    EXPECT_GT(st.bytes_to_client, 0u);
  }
  for (size_t i = 1; i < stages_.size(); ++i) EXPECT_EQ(stages_[i]->data_sessions(), 1u) << i;
}

// A relay that changes one byte of what a stage sends: the front's channel refuses the record, the request fails
// within the timeout naming the stage, and the next request reconnects (through the same relay) and succeeds.
TEST_F(PipelineRuntime, ARelayThatFlipsAByteFailsTheRequestNamingTheStage) {
  ShardManifest m = make_manifest({0, 2, 5});
  start_stages(m);
  std::atomic<bool> armed{false};
  std::atomic<int> flipped{0};
  RelayOptions o;
  o.on_chunk_for_tests = [&](RelayDirection dir, std::span<uint8_t> chunk) {
    if (dir == RelayDirection::kToClient && !chunk.empty() && armed.exchange(false)) {
      chunk.back() ^= 0x01;  // the last byte of a record's authentication tag
      flipped.fetch_add(1);
    }
  };
  auto relay = relay_to(m.stages[1].endpoint, o);
  ASSERT_TRUE(relay);
  m.stages[1].endpoint = relay->address();
  auto front = PipelineStepModel::connect(m, front_options(5s));
  ASSERT_TRUE(front.ok()) << front.error().message();

  armed = true;  // the stage's next reply is changed on the way
  auto t0 = std::chrono::steady_clock::now();
  auto got = step_greedy(**front, kPrompt, 3);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(flipped.load(), 1);
  // The channel reports kSecurity ("authentication failed"); during serving the front reports any stage failure
  // as kUnavailable (a killed stage also reads as a truncated channel), keeping the channel's words.
  EXPECT_EQ(got.error().code(), ErrorCode::kUnavailable) << got.error().message();
  EXPECT_NE(got.error().message().find("pipeline stage 1"), std::string::npos) << got.error().message();
  EXPECT_NE(got.error().message().find("authentication failed"), std::string::npos) << got.error().message();
  EXPECT_FALSE((*front)->health()[1].connected);

  auto again = step_greedy(**front, kPrompt, 6);
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ((*again)[0], reference_greedy(kPrompt, 6));
  EXPECT_EQ(relay->stats().accepted, 2u);
}

// Raw channels to a stage: a hello as the front or as a predecessor, then the stage's answer.
Result<std::unique_ptr<channel::Channel>> open_raw(const ShardManifest& m, uint32_t index, Peer from, uint32_t as,
                                                   channel::ChannelOptions co, Message* answer) {
  VEIL_ASSIGN_OR_RETURN(auto ep, stage_endpoint(m.stages[index].endpoint));
  VEIL_ASSIGN_OR_RETURN(auto ch, channel::connect_channel(ep, co, channel::RetryPolicy{}));
  Message hello;
  hello.type = MsgType::kHello;
  hello.request_id = 1;
  hello.hello_from = from;
  hello.timeout_ms = 5000;
  hello.info = {as, m.stages[as].layer_begin, m.stages[as].layer_end, m.n_layers, 0, 0, 0, 0};
  VEIL_TRY(send_message(*ch, hello, channel::deadline_in(5s)));
  VEIL_ASSIGN_OR_RETURN(*answer, recv_message(*ch, channel::deadline_in(5s)));
  return ch;
}

// A stage checks a batch's payload against its segments before it uses it: hidden states sent to stage 0 (which
// takes token ids), or rows of another width to a later stage, get an error sentinel naming the counts. The sentinel
// travels down the chain to the last stage, which hands it to the front. (A payload that is not a whole row per token
// is refused earlier, by the wire decoder, and ends the session.)
TEST_F(PipelineRuntime, StageRefusesAPayloadThatDoesNotMatchItsSegments) {
  ShardManifest m = make_manifest({0, 2, 5});
  start_stages(m);
  channel::ChannelOptions co;
  co.verifier = channel::verifier_from_policy(policy(true), collateral_);
  Message answer;
  // A front session with the last stage, and a data channel into it from a raw "stage 0".
  auto ctl1 = open_raw(m, 1, Peer::kFront, 1, co, &answer);
  ASSERT_TRUE(ctl1.ok()) << ctl1.error().message();
  ASSERT_EQ(answer.type, MsgType::kInfo);
  auto data1 = open_raw(m, 1, Peer::kPredecessor, 0, co, &answer);
  ASSERT_TRUE(data1.ok()) << data1.error().message();
  ASSERT_EQ(answer.type, MsgType::kInfo);
  Message hidden;  // 2 tokens of hidden states, 32 wide where the model is 64
  hidden.type = MsgType::kForward;
  hidden.request_id = 2;
  hidden.segments = {{0, 0, 2, true}};
  hidden.values.assign(2 * 32, 0.5f);
  ASSERT_TRUE(send_message(**data1, hidden, channel::deadline_in(5s)).ok());
  auto narrow = recv_message(**ctl1, channel::deadline_in(5s));
  ASSERT_TRUE(narrow.ok()) << narrow.error().message();
  EXPECT_EQ(narrow->type, MsgType::kError);
  EXPECT_EQ(narrow->error_stage, 1u);
  EXPECT_NE(narrow->reason.find("64 hidden values for 2 tokens of width 64"), std::string::npos) << narrow->reason;

  // A front session with stage 0 (it opens its data channel to stage 1, replacing the raw one): hidden states are
  // wrong for stage 0, and its sentinel reaches the front's channel with the last stage.
  auto ctl0 = open_raw(m, 0, Peer::kFront, 0, co, &answer);
  ASSERT_TRUE(ctl0.ok()) << ctl0.error().message();
  ASSERT_EQ(answer.type, MsgType::kInfo);
  hidden.request_id = 3;
  hidden.values.assign(2 * 64, 0.5f);
  ASSERT_TRUE(send_message(**ctl0, hidden, channel::deadline_in(5s)).ok());
  auto travelled = recv_message(**ctl1, channel::deadline_in(5s));
  ASSERT_TRUE(travelled.ok()) << travelled.error().message();
  EXPECT_EQ(travelled->type, MsgType::kError);
  EXPECT_EQ(travelled->request_id, 3u);
  EXPECT_EQ(travelled->error_stage, 0u);
  EXPECT_NE(travelled->reason.find("0 token ids and 128 hidden values for 2 tokens"), std::string::npos)
      << travelled->reason;
  EXPECT_EQ(stages_[1]->data_sessions(), 2u);
}

// A data channel is accepted only from the stage's predecessor, and only inside a front's session.
TEST_F(PipelineRuntime, StageAcceptsADataChannelOnlyFromItsPredecessor) {
  ShardManifest m = make_manifest({0, 2, 4, 5});
  start_stages(m);
  channel::ChannelOptions co;
  co.verifier = channel::verifier_from_policy(policy(true), collateral_);
  Message answer;
  auto early = open_raw(m, 2, Peer::kPredecessor, 1, co, &answer);  // no front session yet
  ASSERT_TRUE(early.ok()) << early.error().message();
  EXPECT_EQ(answer.type, MsgType::kError);
  EXPECT_EQ(answer.error_code, ErrorCode::kUnavailable);
  auto ctl = open_raw(m, 2, Peer::kFront, 2, co, &answer);
  ASSERT_TRUE(ctl.ok()) << ctl.error().message();
  ASSERT_EQ(answer.type, MsgType::kInfo);
  auto skipping = open_raw(m, 2, Peer::kPredecessor, 0, co, &answer);  // stage 0 is not stage 2's predecessor
  ASSERT_TRUE(skipping.ok()) << skipping.error().message();
  EXPECT_EQ(answer.type, MsgType::kError);
  EXPECT_EQ(answer.error_code, ErrorCode::kSecurity);
  auto first = open_raw(m, 0, Peer::kPredecessor, 0, co, &answer);  // stage 0 has none
  ASSERT_TRUE(first.ok()) << first.error().message();
  EXPECT_EQ(answer.type, MsgType::kError);
  EXPECT_EQ(answer.error_code, ErrorCode::kSecurity);
  EXPECT_EQ(stages_[2]->data_sessions(), 0u);
  EXPECT_EQ(stages_[0]->data_sessions(), 0u);
}

// A stage that cannot reach its successor sends an error sentinel naming it: the front fails the request with the
// successor named, within the timeout, while the front itself still reaches every stage.
TEST_F(PipelineRuntime, UnreachableSuccessorIsNamedByItsPredecessor) {
  ShardManifest m = make_manifest({0, 2, 4, 5});
  std::unique_ptr<Relay> relay;  // stage 1 reaches stage 2 only through it
  std::string stage2;
  start_stages(m, {}, [&](uint32_t i, const std::string& address) {
    if (i != 2) return address;
    stage2 = address;
    relay = relay_to(address);
    return relay ? relay->address() : address;
  });
  ASSERT_TRUE(relay);
  ShardManifest direct = m;  // the front reaches stage 2 directly
  direct.stages[2].endpoint = stage2;
  auto front = PipelineStepModel::connect(direct, front_options(1s));
  ASSERT_TRUE(front.ok()) << front.error().message();
  ASSERT_TRUE(step_greedy(**front, kPrompt, 2).ok());
  relay->stop();  // the data channel from stage 1 to stage 2 is cut
  auto t0 = std::chrono::steady_clock::now();
  auto got = step_greedy(**front, kPrompt, 2);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.error().message().find("pipeline stage 2"), std::string::npos) << got.error().message();
  // Reconnecting, stage 1 cannot open its data channel: it answers the front's hello with the sentinel.
  auto again = step_greedy(**front, kPrompt, 2);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), ErrorCode::kUnavailable);
  EXPECT_NE(again.error().message().find("pipeline stage 2"), std::string::npos) << again.error().message();
  EXPECT_NE(again.error().message().find("unreachable from stage 1"), std::string::npos) << again.error().message();
}

TEST_F(PipelineRuntime, StageWithWrongMeasurementIsRefusedBeforeItReceivesAnything) {
  ShardManifest m = make_manifest({0, 2, 5});
  start_stages(m);
  m.stages[1].policy = policy(false);
  auto front = PipelineStepModel::connect(m, front_options());
  ASSERT_FALSE(front.ok());
  EXPECT_EQ(front.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(front.error().message().find("pipeline stage 1"), std::string::npos) << front.error().message();
  EXPECT_EQ(stages_[1]->messages_received(), 0u);
  EXPECT_EQ(stages_[1]->sessions(), 0u);
}

TEST_F(PipelineRuntime, MutualAttestationRefusesAnUnattestedFront) {
  ShardManifest m = make_manifest({0, 2, 5});
  m.front_policy = policy(true);  // every channel mutual: front -> stages and stage 0 -> stage 1
  start_stages(m);
  // A front that does not present evidence is refused in the handshake (the stage closes the connection, so the
  // front sees it as unavailable); the stage receives nothing.
  FrontOptions quick = front_options();
  quick.retry.max_attempts = 2;
  auto anonymous = PipelineStepModel::connect(m, quick);
  ASSERT_FALSE(anonymous.ok());
  EXPECT_NE(anonymous.error().message().find("pipeline stage 1"), std::string::npos) << anonymous.error().message();
  EXPECT_EQ(stages_[1]->messages_received(), 0u);
  // An attested front is accepted, stage 0 attests itself to stage 1, and the tokens are the single-process ones.
  FrontOptions fo = front_options();
  fo.channel.mode = channel::Mode::kMutual;
  fo.channel.attester = channel::attester_from_provider(provider_);
  auto front = PipelineStepModel::connect(m, fo);
  ASSERT_TRUE(front.ok()) << front.error().message();
  auto got = step_greedy(**front, kPrompt, 6);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ((*got)[0], reference_greedy(kPrompt, 6));
  EXPECT_EQ(stages_[1]->data_sessions(), 1u);
}

// Mutual data channels hold the predecessor to the manifest's policy for its stage: a stage 1 whose manifest expects
// another measurement for stage 0 refuses stage 0's data channel (though the same evidence satisfies the front's
// policy), and the front learns it from stage 0, naming stage 1.
TEST_F(PipelineRuntime, MutualDataChannelRefusesAPredecessorOutsideItsPolicy) {
  ShardManifest m = make_manifest({0, 2, 5});
  m.front_policy = policy(true);
  ShardManifest strict = m;
  strict.stages[0].policy = policy(false);
  stages_.resize(2);
  stages_[1] = start_stage(strict, 1, "tcp:127.0.0.1:0");
  ASSERT_TRUE(stages_[1]);
  m.stages[1].endpoint = stages_[1]->address();
  stages_[0] = start_stage(m, 0, "tcp:127.0.0.1:0");
  ASSERT_TRUE(stages_[0]);
  m.stages[0].endpoint = stages_[0]->address();
  FrontOptions fo = front_options();
  fo.channel.mode = channel::Mode::kMutual;
  fo.channel.attester = channel::attester_from_provider(provider_);
  auto front = PipelineStepModel::connect(m, fo);
  ASSERT_FALSE(front.ok());
  EXPECT_EQ(front.error().code(), ErrorCode::kSecurity) << front.error().message();
  EXPECT_NE(front.error().message().find("pipeline stage 1"), std::string::npos) << front.error().message();
  EXPECT_NE(front.error().message().find("unreachable from stage 0"), std::string::npos) << front.error().message();
  EXPECT_EQ(stages_[1]->data_sessions(), 0u);
}

// A middle stage hangs: the front cannot see it directly (the batch went to stage 0), but stage 0 noted the request
// done, so the timeout names stage 1.
TEST_F(PipelineRuntime, HungStageTimesOutNamedAndTheNextRequestSucceeds) {
  std::promise<void> release_p;
  std::shared_future<void> release = release_p.get_future().share();
  std::atomic<int> calls{0};
  ShardManifest m = make_manifest({0, 2, 4, 5});
  start_stages(m, {{1, [&] {
                      if (calls.fetch_add(1) == 1) release.wait();  // the second forward pass hangs
                    }}});
  auto front = PipelineStepModel::connect(m, front_options(400ms));
  ASSERT_TRUE(front.ok()) << front.error().message();
  auto t0 = std::chrono::steady_clock::now();
  auto got = step_greedy(**front, kPrompt, 3);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  release_p.set_value();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), ErrorCode::kTimeout);
  EXPECT_NE(got.error().message().find("pipeline stage 1"), std::string::npos) << got.error().message();
  EXPECT_LT(elapsed, 3s);
  EXPECT_FALSE((*front)->health()[1].connected);
  // The stage is free again: the next request reconnects and gets the same tokens as one process.
  auto again = step_greedy(**front, kPrompt, 8);
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ((*again)[0], reference_greedy(kPrompt, 8));
  EXPECT_EQ((*front)->health()[1].reconnects, 1u);
}

TEST_F(PipelineRuntime, StageKilledMidRequestFailsNamedAndServesAgainAfterRestart) {
  std::promise<void> entered_p, release_p;
  std::shared_future<void> release = release_p.get_future().share();
  std::atomic<int> calls{0};
  ShardManifest m = make_manifest({0, 2, 4, 5});
  start_stages(m, {{1, [&] {
                      if (calls.fetch_add(1) == 2) {
                        entered_p.set_value();
                        release.wait();
                      }
                    }}});
  auto front = PipelineStepModel::connect(m, front_options(5s));
  ASSERT_TRUE(front.ok()) << front.error().message();
  auto request = std::async(std::launch::async, [&] { return step_greedy(**front, kPrompt, 6); });
  entered_p.get_future().wait();
  auto stopped = std::async(std::launch::async, [&] { stages_[1]->stop(); });  // the connection drops now
  auto t0 = std::chrono::steady_clock::now();
  auto got = request.get();
  auto elapsed = std::chrono::steady_clock::now() - t0;
  release_p.set_value();
  stopped.get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), ErrorCode::kUnavailable) << got.error().message();
  EXPECT_NE(got.error().message().find("pipeline stage 1"), std::string::npos) << got.error().message();
  EXPECT_LT(elapsed, 3s);

  // The stage comes back on the same endpoint: the health check reconnects it and a new request succeeds.
  std::string addr = stages_[1]->address();
  stages_[1] = start_stage(m, 1, addr);
  ASSERT_TRUE(stages_[1]);
  (*front)->check_health();
  EXPECT_TRUE((*front)->health()[1].connected);
  auto again = step_greedy(**front, kPrompt, 8);
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ((*again)[0], reference_greedy(kPrompt, 8));
}

TEST_F(PipelineRuntime, StageDownFailsWithinTheTimeout) {
  ShardManifest m = make_manifest({0, 2, 5});
  start_stages(m);
  auto front = PipelineStepModel::connect(m, front_options(500ms));
  ASSERT_TRUE(front.ok()) << front.error().message();
  stages_[1]->stop();
  auto t0 = std::chrono::steady_clock::now();
  auto got = step_greedy(**front, kPrompt, 2);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.error().message().find("pipeline stage 1"), std::string::npos) << got.error().message();
  (*front)->check_health();
  EXPECT_FALSE((*front)->health()[1].connected);
  EXPECT_FALSE((*front)->health()[1].last_error.empty());
}

}  // namespace
}  // namespace veil::pipeline
