// Channel tests over the in-process pair with test-only fake attestation (fake_attest.h).
#include <gtest/gtest.h>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <future>
#include <sstream>
#include <thread>

#include "channel/channel.h"
#include "channel/fake_attest.h"
#include "channel/session.h"
#include "channel/wire.h"

namespace veil::channel {
namespace {

using namespace std::chrono_literals;
using testing::FakeTee;

const Bytes kGoodMeasurement(32, 0xaa);
const Bytes kOtherMeasurement(32, 0xbb);

Deadline soon() { return deadline_in(5s); }

// A transport wrapper that lets a test see and rewrite every write (a man in the middle on one direction).
// Each write_all() is one handshake frame or one record.
class TapTransport final : public Transport {
 public:
  using Hook = std::function<std::vector<Bytes>(Bytes write)>;  // returns what actually goes out
  TapTransport(std::unique_ptr<Transport> inner, Hook hook) : inner_(std::move(inner)), hook_(std::move(hook)) {}
  Status write_all(std::span<const ByteView> parts, Deadline d) override {
    Bytes all;
    for (auto p : parts) all.insert(all.end(), p.begin(), p.end());
    for (auto& w : hook_(std::move(all))) {
      ByteView v(w);
      VEIL_TRY(inner_->write_all(std::span<const ByteView>(&v, 1), d));
    }
    return ok_status();
  }
  Status read_exact(std::span<uint8_t> out, Deadline d) override { return inner_->read_exact(out, d); }
  void shutdown() override { inner_->shutdown(); }
  std::string peer() const override { return inner_->peer(); }

 private:
  std::unique_ptr<Transport> inner_;
  Hook hook_;
};

struct Pair {
  Result<std::unique_ptr<Channel>> client = make_error(ErrorCode::kInternal, "not run");
  Result<std::unique_ptr<Channel>> server = make_error(ErrorCode::kInternal, "not run");
};

Pair handshake(std::unique_ptr<Transport> ct, std::unique_ptr<Transport> st, const ChannelOptions& copt,
               const ChannelOptions& sopt) {
  Pair p;
  auto server = std::async(std::launch::async, [&] { return server_handshake(std::move(st), sopt); });
  p.client = client_handshake(std::move(ct), copt);
  p.server = server.get();
  return p;
}

struct Fixture {
  FakeTee tee;
  ChannelOptions client;
  ChannelOptions server;
  Fixture(Mode mode = Mode::kServerAttested) {
    client.mode = server.mode = mode;
    client.verifier = tee.verifier(kGoodMeasurement);
    server.attester = tee.attester(kGoodMeasurement);
    if (mode == Mode::kMutual) {
      client.attester = tee.attester(kGoodMeasurement);
      server.verifier = tee.verifier(kGoodMeasurement);
    }
    client.handshake_timeout = server.handshake_timeout = 2s;
  }
  Pair run() {
    auto [a, b] = make_in_process_pair();
    return handshake(std::move(a), std::move(b), client, server);
  }
};

Bytes pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 31);
  return b;
}

void expect_exchange(Channel& a, Channel& b) {
  for (size_t n : {0, 1, 1000, 70000}) {
    auto msg = pattern(n, static_cast<uint8_t>(n));
    auto sender = std::async(std::launch::async, [&] { return a.send(msg, soon()); });
    auto got = b.recv(soon());
    ASSERT_TRUE(sender.get().ok());
    ASSERT_TRUE(got.ok()) << got.error().message();
    EXPECT_EQ(*got, msg);
  }
}

TEST(ChannelHandshake, ServerAttestedExchangesBothWays) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok()) << p.client.error().message();
  ASSERT_TRUE(p.server.ok()) << p.server.error().message();
  auto& c = **p.client;
  auto& s = **p.server;
  EXPECT_EQ(c.transcript_hash(), s.transcript_hash());
  ASSERT_NE(c.peer_claims(), nullptr);
  EXPECT_EQ(c.peer_claims()->measurements.at("measurement"), kGoodMeasurement);
  EXPECT_EQ(s.peer_claims(), nullptr);
  EXPECT_EQ(c.suite(), crypto::AeadSuite::kAes256Gcm);
  expect_exchange(c, s);
  expect_exchange(s, c);
}

TEST(ChannelHandshake, MutualGivesBothSidesClaims) {
  Fixture f(Mode::kMutual);
  auto p = f.run();
  ASSERT_TRUE(p.client.ok()) << p.client.error().message();
  ASSERT_TRUE(p.server.ok()) << p.server.error().message();
  ASSERT_NE((*p.client)->peer_claims(), nullptr);
  ASSERT_NE((*p.server)->peer_claims(), nullptr);
  EXPECT_EQ((*p.server)->peer_claims()->measurements.at("measurement"), kGoodMeasurement);
  expect_exchange(**p.client, **p.server);
}

TEST(ChannelHandshake, ChaChaSuite) {
  Fixture f;
  f.client.suite = crypto::AeadSuite::kChaCha20Poly1305;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok()) << p.client.error().message();
  ASSERT_TRUE(p.server.ok());
  EXPECT_EQ((*p.server)->suite(), crypto::AeadSuite::kChaCha20Poly1305);
  expect_exchange(**p.client, **p.server);
}

TEST(ChannelHandshake, SessionsHaveDistinctTranscripts) {
  Fixture f;
  auto p1 = f.run();
  auto p2 = f.run();
  ASSERT_TRUE(p1.client.ok() && p2.client.ok());
  EXPECT_NE((*p1.client)->transcript_hash(), (*p2.client)->transcript_hash());
}

TEST(ChannelHandshake, ServerRefusesSuiteItDoesNotAccept) {
  Fixture f;
  f.client.suite = crypto::AeadSuite::kChaCha20Poly1305;
  f.server.accepted_suites = {crypto::AeadSuite::kAes256Gcm};
  auto p = f.run();
  ASSERT_FALSE(p.server.ok());
  EXPECT_EQ(p.server.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.server.error().message().find("suite"), std::string::npos);
  EXPECT_FALSE(p.client.ok());
}

TEST(ChannelHandshake, ModeMismatchRefused) {
  Fixture f(Mode::kMutual);
  f.client.mode = Mode::kServerAttested;  // a client trying to skip its own attestation
  auto p = f.run();
  ASSERT_FALSE(p.server.ok());
  EXPECT_EQ(p.server.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.server.error().message().find("mode"), std::string::npos);
}

TEST(ChannelHandshake, MissingHooksAreMisuse) {
  Fixture f;
  f.client.verifier = nullptr;
  auto [a, b] = make_in_process_pair();
  auto r = client_handshake(std::move(a), f.client);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
}

// ---- bad peers ----

TEST(ChannelBadPeer, WrongMeasurementRefused) {
  Fixture f;
  f.server.attester = f.tee.attester(kOtherMeasurement);
  auto p = f.run();
  ASSERT_FALSE(p.client.ok());
  EXPECT_EQ(p.client.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.client.error().message().find("server evidence refused"), std::string::npos);
  EXPECT_FALSE(p.server.ok());  // the client hung up instead of finishing
}

TEST(ChannelBadPeer, WrongMeasurementOfClientRefusedInMutualMode) {
  Fixture f(Mode::kMutual);
  f.client.attester = f.tee.attester(kOtherMeasurement);
  auto p = f.run();
  ASSERT_FALSE(p.server.ok());
  EXPECT_EQ(p.server.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.server.error().message().find("client evidence refused"), std::string::npos);
}

TEST(ChannelBadPeer, WrongReportDataRefused) {
  Fixture f;
  f.server.attester = [&](const attest::ReportData&) {
    attest::ReportData other{};
    other.fill(0x42);
    return f.tee.quote(kGoodMeasurement, other);
  };
  auto p = f.run();
  ASSERT_FALSE(p.client.ok());
  EXPECT_EQ(p.client.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.client.error().message().find("report_data"), std::string::npos);
}

TEST(ChannelBadPeer, StaleEvidenceRefused) {
  Fixture f;
  FakeTee old_tee;
  old_tee.now = [] { return std::chrono::system_clock::now() - std::chrono::hours(2); };
  f.server.attester = old_tee.attester(kGoodMeasurement);
  auto p = f.run();
  ASSERT_FALSE(p.client.ok());
  EXPECT_EQ(p.client.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(p.client.error().message().find("stale"), std::string::npos);
}

TEST(ChannelBadPeer, ServerEvidenceReplayedFromEarlierSessionRefused) {
  Fixture f;
  std::optional<attest::Evidence> recorded;
  auto genuine = f.tee.attester(kGoodMeasurement);
  f.server.attester = [&](const attest::ReportData& rd) {
    auto ev = genuine(rd);
    if (ev.ok()) recorded = *ev;
    return ev;
  };
  auto first = f.run();
  ASSERT_TRUE(first.client.ok()) << first.client.error().message();
  ASSERT_TRUE(recorded.has_value());
  // A second server (holding the session key, but not a fresh quote) replays the recorded evidence.
  auto replay = *recorded;
  f.server.attester = [replay](const attest::ReportData&) -> Result<attest::Evidence> { return replay; };
  auto second = f.run();
  ASSERT_FALSE(second.client.ok());
  EXPECT_EQ(second.client.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(second.client.error().message().find("report_data"), std::string::npos);
}

TEST(ChannelBadPeer, ClientEvidenceReplayedFromEarlierSessionRefused) {
  Fixture f(Mode::kMutual);
  std::optional<attest::Evidence> recorded;
  auto genuine = f.tee.attester(kGoodMeasurement);
  f.client.attester = [&](const attest::ReportData& rd) {
    auto ev = genuine(rd);
    if (ev.ok()) recorded = *ev;
    return ev;
  };
  ASSERT_TRUE(f.run().server.ok());
  auto replay = *recorded;
  f.client.attester = [replay](const attest::ReportData&) -> Result<attest::Evidence> { return replay; };
  auto second = f.run();
  ASSERT_FALSE(second.server.ok());
  EXPECT_EQ(second.server.error().code(), ErrorCode::kSecurity);
}

TEST(ChannelBadPeer, RecordedServerHelloReplayedIntoNewSessionRefused) {
  Fixture f;
  std::vector<Bytes> server_writes;
  {
    auto [a, b] = make_in_process_pair();
    auto tap = std::make_unique<TapTransport>(std::move(b), [&](Bytes w) {
      server_writes.push_back(w);
      return std::vector<Bytes>{std::move(w)};
    });
    auto p = handshake(std::move(a), std::move(tap), f.client, f.server);
    ASSERT_TRUE(p.client.ok());
  }
  ASSERT_FALSE(server_writes.empty());
  // An impostor answers a fresh ClientHello with the recorded server flight (hello, evidence, finished).
  ASSERT_GE(server_writes.size(), 3u);
  server_writes.resize(3);
  auto [a, b] = make_in_process_pair();
  auto impostor = std::async(std::launch::async, [&, t = std::move(b)]() mutable {
    Bytes hello(kFrameHeaderSize + wire::kHelloSize);
    EXPECT_TRUE(t->read_exact(hello, soon()).ok());
    for (const Bytes& w : server_writes) {
      ByteView v(w);
      (void)t->write_all(std::span<const ByteView>(&v, 1), soon());  // the client may hang up midway
    }
    Bytes rest(1);
    (void)t->read_exact(rest, soon());  // wait for the client to hang up
  });
  auto r = client_handshake(std::move(a), f.client);
  impostor.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("ServerEvidence: server evidence refused"), std::string::npos)
      << r.error().message();
}

TEST(ChannelBadPeer, TamperedHandshakeRefused) {
  // Flip one bit in each part of the server's flight: hello (ephemeral key, nonce), evidence, finished MAC.
  struct Flip {
    size_t write;  // which of the server's frames
    size_t pos;    // body offset; SIZE_MAX: the last byte
  };
  for (Flip flip : {Flip{0, 8}, Flip{0, 50}, Flip{1, 20}, Flip{2, SIZE_MAX}}) {
    Fixture f;
    auto [a, b] = make_in_process_pair();
    size_t writes = 0;
    auto tap = std::make_unique<TapTransport>(std::move(b), [&](Bytes w) {
      if (writes++ == flip.write) w[flip.pos == SIZE_MAX ? w.size() - 1 : kFrameHeaderSize + flip.pos] ^= 0x01;
      return std::vector<Bytes>{std::move(w)};
    });
    auto p = handshake(std::move(a), std::move(tap), f.client, f.server);
    ASSERT_FALSE(p.client.ok()) << "bit flip in frame " << flip.write << " at " << flip.pos;
    EXPECT_EQ(p.client.error().code(), ErrorCode::kSecurity) << p.client.error().message();
  }
}

TEST(ChannelBadPeer, SilentHandshakeTimesOut) {
  Fixture f;
  f.server.handshake_timeout = 200ms;
  auto [a, b] = make_in_process_pair();
  auto start = Clock::now();
  auto r = server_handshake(std::move(b), f.server);  // the client never speaks
  auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  EXPECT_LT(took, 2s);
  EXPECT_GE(took, 200ms);
}

TEST(ChannelBadPeer, SlowHandshakeTimesOutAsAWhole) {
  // The peer sends part of its ClientHello and stalls: the deadline covers the handshake, not each read.
  Fixture f;
  f.server.handshake_timeout = 200ms;
  auto [a, b] = make_in_process_pair();
  Bytes partial(kFrameHeaderSize + 10, 0);
  wire::encode_frame_header({static_cast<uint32_t>(wire::kHelloSize), 1}, partial.data());
  ByteView v(partial);
  ASSERT_TRUE(a->write_all(std::span<const ByteView>(&v, 1), soon()).ok());
  auto start = Clock::now();
  auto r = server_handshake(std::move(b), f.server);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(ChannelBadPeer, SlowClientHelloStillWithinDeadlineButServerSilent) {
  // A server that accepts the connection but never answers: the client gives up at its deadline.
  Fixture f;
  f.client.handshake_timeout = 150ms;
  auto [a, b] = make_in_process_pair();
  auto start = Clock::now();
  auto r = client_handshake(std::move(a), f.client);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(ChannelBadPeer, OversizedHandshakeFrameRefusedWithoutAllocating) {
  Fixture f;
  auto [a, b] = make_in_process_pair();
  uint8_t header[kFrameHeaderSize];
  wire::encode_frame_header({0xfffffff0u, 1}, header);
  ByteView v(header, sizeof header);
  ASSERT_TRUE(a->write_all(std::span<const ByteView>(&v, 1), soon()).ok());
  auto r = server_handshake(std::move(b), f.server);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message().find("exceeds the limit"), std::string::npos);
}

TEST(ChannelBadPeer, WrongFirstFrameTypeRefused) {
  Fixture f;
  auto [a, b] = make_in_process_pair();
  uint8_t header[kFrameHeaderSize];
  wire::encode_frame_header({16, uint8_t(wire::FrameType::kData)}, header);
  ByteView v(header, sizeof header);
  ASSERT_TRUE(a->write_all(std::span<const ByteView>(&v, 1), soon()).ok());
  auto r = server_handshake(std::move(b), f.server);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
}

// ---- record layer ----

struct Connected {
  std::unique_ptr<Channel> client, server;
};

// Handshake with a tap on the client's writes, for record-layer tampering.
Connected connect_tapped(Fixture& f, TapTransport::Hook hook) {
  auto [a, b] = make_in_process_pair();
  auto tap = std::make_unique<TapTransport>(std::move(a), std::move(hook));
  auto p = handshake(std::move(tap), std::move(b), f.client, f.server);
  EXPECT_TRUE(p.client.ok() && p.server.ok());
  if (!p.client.ok() || !p.server.ok()) return {};
  return {std::move(*p.client), std::move(*p.server)};
}

bool is_data_record(const Bytes& w) { return w.size() >= kFrameHeaderSize && w[4] == uint8_t(wire::FrameType::kData); }

TEST(ChannelRecord, TamperedRecordClosesSession) {
  Fixture f;
  auto c = connect_tapped(f, [](Bytes w) {
    if (is_data_record(w)) w[kFrameHeaderSize + 3] ^= 0x80;
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client);
  ASSERT_TRUE(c.client->send(pattern(100, 1), soon()).ok());
  auto r = c.server->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("record 0"), std::string::npos);
  // The session is closed for good.
  EXPECT_FALSE(c.server->recv(soon()).ok());
  EXPECT_FALSE(c.server->send(pattern(1, 1), soon()).ok());
}

TEST(ChannelRecord, TamperedHeaderDetected) {
  Fixture f;
  auto c = connect_tapped(f, [](Bytes w) {
    if (is_data_record(w)) w[4] = uint8_t(wire::FrameType::kKeyUpdate);  // the type is authenticated as AAD
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client->send(pattern(10, 1), soon()).ok());
  auto r = c.server->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
}

TEST(ChannelRecord, ReplayedRecordDetected) {
  Fixture f;
  auto c = connect_tapped(f, [](Bytes w) {
    if (is_data_record(w)) return std::vector<Bytes>{w, w};
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client->send(pattern(10, 1), soon()).ok());
  auto first = c.server->recv(soon());
  ASSERT_TRUE(first.ok());
  auto second = c.server->recv(soon());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), ErrorCode::kSecurity);
}

TEST(ChannelRecord, ReorderedRecordsDetected) {
  Fixture f;
  std::optional<Bytes> held;
  auto c = connect_tapped(f, [&](Bytes w) {
    if (!is_data_record(w)) return std::vector<Bytes>{std::move(w)};
    if (!held) {
      held = std::move(w);
      return std::vector<Bytes>{};
    }
    return std::vector<Bytes>{std::move(w), *held};
  });
  ASSERT_TRUE(c.client->send(pattern(10, 1), soon()).ok());
  ASSERT_TRUE(c.client->send(pattern(10, 2), soon()).ok());
  auto r = c.server->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
}

TEST(ChannelRecord, DroppedRecordDetected) {
  Fixture f;
  int n = 0;
  auto c = connect_tapped(f, [&](Bytes w) {
    if (is_data_record(w) && n++ == 0) return std::vector<Bytes>{};
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client->send(pattern(10, 1), soon()).ok());
  ASSERT_TRUE(c.client->send(pattern(10, 2), soon()).ok());
  auto r = c.server->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
}

TEST(ChannelRecord, TruncationWithoutCloseDetected) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  ASSERT_TRUE((*p.client)->send(pattern(10, 1), soon()).ok());
  (*p.client)->abort();  // transport ends, no Close record
  ASSERT_TRUE((*p.server)->recv(soon()).ok());
  auto r = (*p.server)->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSecurity);
  EXPECT_NE(r.error().message().find("truncation"), std::string::npos);
}

TEST(ChannelRecord, AuthenticatedCloseIsCancelled) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  ASSERT_TRUE((*p.client)->send(pattern(10, 1), soon()).ok());
  ASSERT_TRUE((*p.client)->close(soon()).ok());
  ASSERT_TRUE((*p.server)->recv(soon()).ok());
  auto r = (*p.server)->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCancelled);
  EXPECT_FALSE((*p.client)->send(pattern(1, 1), soon()).ok());
}

TEST(ChannelRecord, OversizedRecordRefused) {
  Fixture f;
  f.server.max_message = 1024;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  // The client's own limit is larger, so it sends; the server refuses from the header alone.
  ASSERT_TRUE((*p.client)->send(pattern(4096, 1), soon()).ok());
  auto r = (*p.server)->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message().find("exceeds the limit"), std::string::npos);
}

TEST(ChannelRecord, ForgedHugeLengthRefusedWithoutAllocating) {
  Fixture f;
  auto c = connect_tapped(f, [](Bytes w) {
    if (is_data_record(w)) wire::put_u32(w.data(), 0x7fffffffu);
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client->send(pattern(10, 1), soon()).ok());
  auto r = c.server->recv(soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
}

TEST(ChannelRecord, SendAboveLimitIsMisuseAndKeepsSession) {
  Fixture f;
  f.client.max_message = 100;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  auto st = (*p.client)->send(pattern(101, 1), soon());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
  ASSERT_TRUE((*p.client)->send(pattern(100, 1), soon()).ok());
  auto got = (*p.server)->recv(soon());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, pattern(100, 1));
}

TEST(ChannelRecord, RekeysByRecordCount) {
  Fixture f;
  f.client.rekey_after_records = 4;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  auto& c = **p.client;
  auto& s = **p.server;
  for (int i = 0; i < 20; ++i) {
    auto msg = pattern(100 + i, uint8_t(i));
    ASSERT_TRUE(c.send(msg, soon()).ok());
    auto got = s.recv(soon());
    ASSERT_TRUE(got.ok()) << got.error().message();
    EXPECT_EQ(*got, msg);
  }
  // 20 data records, at most 3 per key (the 4th record of a key is the KeyUpdate).
  EXPECT_EQ(c.send_epoch(), 6u);
  EXPECT_EQ(s.recv_epoch(), 6u);
  EXPECT_EQ(s.send_epoch(), 0u);
  expect_exchange(s, c);
}

TEST(ChannelRecord, RekeysByByteCount) {
  Fixture f;
  f.server.rekey_after_bytes = 10000;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  for (int i = 0; i < 10; ++i) {
    auto msg = pattern(4000, uint8_t(i));
    ASSERT_TRUE((*p.server)->send(msg, soon()).ok());
    auto got = (*p.client)->recv(soon());
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, msg);
  }
  EXPECT_GE((*p.server)->send_epoch(), 4u);
  EXPECT_EQ((*p.client)->recv_epoch(), (*p.server)->send_epoch());
}

TEST(ChannelRecord, RecvTimeoutClosesSession) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  auto r = (*p.server)->recv(deadline_in(50ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kTimeout);
  EXPECT_FALSE((*p.server)->recv(soon()).ok());
}

TEST(ChannelRecord, ConcurrentSendAndRecvOnBothEnds) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  auto& c = **p.client;
  auto& s = **p.server;
  constexpr int kN = 200;
  auto pump = [](Channel& from, int seed) {
    for (int i = 0; i < kN; ++i) {
      if (!from.send(pattern(3000, uint8_t(seed + i)), soon()).ok()) return false;
    }
    return true;
  };
  auto drain = [](Channel& to, int seed) {
    Bytes buf;
    for (int i = 0; i < kN; ++i) {
      if (!to.recv_into(buf, soon()).ok() || buf != pattern(3000, uint8_t(seed + i))) return false;
    }
    return true;
  };
  auto a = std::async(std::launch::async, pump, std::ref(c), 1);
  auto b = std::async(std::launch::async, pump, std::ref(s), 7);
  auto d = std::async(std::launch::async, drain, std::ref(s), 1);
  EXPECT_TRUE(drain(c, 7));
  EXPECT_TRUE(a.get());
  EXPECT_TRUE(b.get());
  EXPECT_TRUE(d.get());
}

TEST(ChannelRecord, AbortUnblocksBlockedReceiver) {
  Fixture f;
  auto p = f.run();
  ASSERT_TRUE(p.client.ok() && p.server.ok());
  auto& s = **p.server;
  auto waiter = std::async(std::launch::async, [&] { return s.recv(soon()); });
  s.abort();
  auto r = waiter.get();
  ASSERT_FALSE(r.ok());
  // Whether the receiver was already blocked or not, it reports the local abort, not a peer fault.
  EXPECT_EQ(r.error().code(), ErrorCode::kCancelled) << r.error().message();
  EXPECT_NE(r.error().message().find("aborted locally"), std::string::npos) << r.error().message();
}

// Captures everything logged through spdlog's default logger while alive.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST(ChannelLogging, RefusalsAreLoggedWithPeerAndReasonButNoSecrets) {
  LogCapture capture;
  const std::string marker = "PLAINTEXT-MARKER-7f3a";
  // 1. A refused handshake: the evidence (and the report_data in it) must not be logged.
  Fixture f;
  std::optional<attest::Evidence> sent;
  f.server.attester = [&](const attest::ReportData& rd) {
    auto ev = f.tee.quote(kOtherMeasurement, rd);
    if (ev.ok()) sent = *ev;
    return ev;
  };
  auto p = f.run();
  ASSERT_FALSE(p.client.ok());
  ASSERT_TRUE(sent.has_value());
  // 2. A tampered record carrying the marker.
  Fixture g;
  auto c = connect_tapped(g, [](Bytes w) {
    if (is_data_record(w)) w.back() ^= 1;
    return std::vector<Bytes>{std::move(w)};
  });
  ASSERT_TRUE(c.client->send(as_bytes(marker), soon()).ok());
  ASSERT_FALSE(c.server->recv(soon()).ok());

  std::string log = capture.text();
  EXPECT_NE(log.find("channel client handshake with inproc:b"), std::string::npos) << log;
  EXPECT_NE(log.find("server evidence refused"), std::string::npos) << log;
  EXPECT_NE(log.find("authentication failed"), std::string::npos) << log;
  EXPECT_EQ(log.find(marker), std::string::npos);
  EXPECT_EQ(log.find(to_hex(ByteView(sent->data).subspan(32, 64))), std::string::npos);  // report_data
  EXPECT_EQ(log.find(to_hex(ByteView(sent->data).subspan(104))), std::string::npos);     // evidence MAC
}

// ---- wire parsers ----

// A well-formed 72-byte hello (AES-256-GCM, one-way).
Bytes encoded_hello(uint16_t version = wire::kVersion) {
  wire::Hello h;
  h.version = version;
  h.suite = 1;
  h.mode = 1;
  Bytes body;
  wire::encode_hello(h, body);
  return body;
}

TEST(ChannelWire, HelloValidation) {
  const Bytes body = encoded_hello();
  ASSERT_TRUE(wire::parse_client_hello(body).ok());
  auto bad = body;
  bad[6] = 1;
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kCorrupt);
  bad = body;
  bad[1] = 1;  // version 1
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kUnsupported);
  bad[1] = 3;
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kUnsupported);
  bad = body;
  bad[3] = 9;
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kUnsupported);
  bad = body;
  bad[4] = 3;
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kCorrupt);
  bad = body;
  bad.push_back(0);
  EXPECT_EQ(wire::parse_client_hello(bad).error().code(), ErrorCode::kCorrupt);
}

TEST(ChannelWire, EvidenceLengthPastEndRefused) {
  Bytes body;
  attest::Evidence ev{attest::TeeType::kTdx, Bytes(10, 1)};
  wire::encode_evidence(ev, body);
  auto ok = wire::parse_server_evidence(body);
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(ok->type, attest::TeeType::kTdx);
  Bytes trailing = body;
  trailing.push_back(0);
  auto extra = wire::parse_server_evidence(trailing);
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().message().find("byte 16: 1 bytes after the evidence"), std::string::npos)
      << extra.error().message();
  wire::put_u32(body.data() + 2, 0xffffffffu);
  auto r = wire::parse_server_evidence(body);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("byte 2"), std::string::npos) << r.error().message();
}

TEST(ChannelWire, ServerFlightFramesHaveExactSizes) {
  const Bytes hello = encoded_hello();
  EXPECT_TRUE(wire::parse_server_hello(hello).ok());
  Bytes longer = hello;
  longer.push_back(0);
  EXPECT_FALSE(wire::parse_server_hello(longer).ok());
  EXPECT_TRUE(wire::parse_server_finished(Bytes(32, 1)).ok());
  EXPECT_FALSE(wire::parse_server_finished(Bytes(31, 1)).ok());
  EXPECT_FALSE(wire::parse_server_finished(Bytes(33, 1)).ok());
  // Version 1's one-frame server flight is gone: a version-1 peer is refused.
  const Bytes v1 = encoded_hello(1);
  auto r = wire::parse_server_hello(v1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("protocol version 1 is not supported"), std::string::npos) << r.error().message();
}

TEST(ChannelWire, ClientFinishShapeDependsOnMode) {
  Bytes mac_only(32, 7);
  EXPECT_TRUE(wire::parse_client_finish(mac_only, Mode::kServerAttested).ok());
  EXPECT_FALSE(wire::parse_client_finish(mac_only, Mode::kMutual).ok());
  Bytes longer(33, 7);
  EXPECT_FALSE(wire::parse_client_finish(longer, Mode::kServerAttested).ok());
}

}  // namespace
}  // namespace veil::channel
