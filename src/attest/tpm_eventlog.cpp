#include "attest/tpm_eventlog.h"

#include <cstring>

#include "attest/tpm_structs.h"

namespace veil::attest::tpm {
namespace {

class LeReader {
 public:
  explicit LeReader(ByteView d) : d_(d) {}
  size_t pos() const { return pos_; }
  size_t left() const { return d_.size() - pos_; }
  Error fail(std::string_view field, std::string_view why) const {
    return make_error(ErrorCode::kCorrupt, "TPM event log: field {} at byte offset {}: {}", field, pos_, why);
  }
  Result<uint64_t> le(std::string_view field, size_t n) {
    if (left() < n) return fail(field, fmt::format("needs {} bytes, {} remain", n, left()));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t{d_[pos_ + i]} << (8 * i);
    pos_ += n;
    return v;
  }
  Result<ByteView> take(std::string_view field, size_t n) {
    if (left() < n) return fail(field, fmt::format("needs {} bytes, {} remain", n, left()));
    ByteView v = d_.subspan(pos_, n);
    pos_ += n;
    return v;
  }

 private:
  ByteView d_;
  size_t pos_ = 0;
};

constexpr char kSpecId[] = "Spec ID Event03";  // 16 bytes with the NUL
constexpr char kStartupLocality[] = "StartupLocality";  // 16 bytes with the NUL

}  // namespace

Result<EventLog> parse_event_log(ByteView data) {
  if (data.size() > kMaxEventLogSize) {
    return make_error(ErrorCode::kCorrupt, "TPM event log: {} bytes exceeds the limit of {}", data.size(),
                      kMaxEventLogSize);
  }
  LeReader r(data);
  EventLog log;
  // Header: TCG_PCClientPCREvent.
  VEIL_ASSIGN_OR_RETURN(uint64_t pcr0, r.le("header.pcrIndex", 4));
  VEIL_ASSIGN_OR_RETURN(uint64_t type0, r.le("header.eventType", 4));
  if (pcr0 != 0 || type0 != kEvNoAction) return r.fail("header", "first event is not EV_NO_ACTION on PCR0");
  VEIL_ASSIGN_OR_RETURN(ByteView sha1, r.take("header.digest", 20));
  (void)sha1;
  VEIL_ASSIGN_OR_RETURN(uint64_t hsize, r.le("header.eventSize", 4));
  VEIL_ASSIGN_OR_RETURN(ByteView spec, r.take("header.event", hsize));
  if (spec.size() < 16 + 4 + 4 + 4 + 1 || std::memcmp(spec.data(), kSpecId, 16) != 0) {
    return make_error(ErrorCode::kUnsupported,
                      "TPM event log: byte offset 32: not a crypto-agile log (no \"Spec ID Event03\")");
  }
  // TCG_EfiSpecIdEvent: signature[16] platformClass u32, minor, major, errata, uintnSize (u8 each),
  // numberOfAlgorithms u32, {algId u16, digestSize u16}..., vendorInfoSize u8, vendorInfo.
  LeReader s(spec);
  VEIL_TRY(s.take("specId.signature", 16));
  VEIL_TRY(s.le("specId.platformClass", 4));
  VEIL_TRY(s.take("specId.version", 4));
  VEIL_ASSIGN_OR_RETURN(uint64_t nalg, s.le("specId.numberOfAlgorithms", 4));
  if (nalg == 0 || nalg > 8) return s.fail("specId.numberOfAlgorithms", fmt::format("{} (1..8 accepted)", nalg));
  for (uint64_t i = 0; i < nalg; ++i) {
    VEIL_ASSIGN_OR_RETURN(uint64_t alg, s.le("specId.algId", 2));
    VEIL_ASSIGN_OR_RETURN(uint64_t size, s.le("specId.digestSize", 2));
    if (size == 0 || size > 64) return s.fail("specId.digestSize", fmt::format("{} (1..64 accepted)", size));
    auto known = digest_alg(static_cast<uint16_t>(alg));
    if (known.ok() && crypto::digest_size(*known) != size) {
      return s.fail("specId.digestSize", fmt::format("{} does not match algorithm 0x{:04x}", size, alg));
    }
    if (!log.digest_sizes.emplace(static_cast<uint16_t>(alg), static_cast<uint16_t>(size)).second) {
      return s.fail("specId.algId", "algorithm listed twice");
    }
  }
  VEIL_ASSIGN_OR_RETURN(uint64_t vsize, s.le("specId.vendorInfoSize", 1));
  VEIL_TRY(s.take("specId.vendorInfo", vsize));
  if (s.left() != 0) return s.fail("specId", "trailing bytes in the Spec ID event");

  while (r.left() > 0) {
    LogEvent ev;
    ev.offset = r.pos();
    if (log.events.size() >= kMaxEvents) return r.fail("event", fmt::format("more than {} events", kMaxEvents));
    VEIL_ASSIGN_OR_RETURN(uint64_t pcr, r.le("event.pcrIndex", 4));
    if (pcr > 31) return r.fail("event.pcrIndex", fmt::format("{} (0..31 accepted)", pcr));
    ev.pcr = static_cast<uint32_t>(pcr);
    VEIL_ASSIGN_OR_RETURN(uint64_t type, r.le("event.eventType", 4));
    ev.type = static_cast<uint32_t>(type);
    VEIL_ASSIGN_OR_RETURN(uint64_t count, r.le("event.digests.count", 4));
    if (count > log.digest_sizes.size()) {
      return r.fail("event.digests.count", fmt::format("{} digests but the log declares {} algorithms", count,
                                                       log.digest_sizes.size()));
    }
    for (uint64_t i = 0; i < count; ++i) {
      VEIL_ASSIGN_OR_RETURN(uint64_t alg, r.le("event.digests.hashAlg", 2));
      auto it = log.digest_sizes.find(static_cast<uint16_t>(alg));
      if (it == log.digest_sizes.end()) {
        return r.fail("event.digests.hashAlg", fmt::format("algorithm 0x{:04x} not declared in the Spec ID event", alg));
      }
      VEIL_ASSIGN_OR_RETURN(ByteView d, r.take("event.digests.digest", it->second));
      if (!ev.digests.emplace(it->first, Bytes(d.begin(), d.end())).second) {
        return r.fail("event.digests.hashAlg", "algorithm listed twice in one event");
      }
    }
    VEIL_ASSIGN_OR_RETURN(uint64_t esize, r.le("event.eventSize", 4));
    VEIL_ASSIGN_OR_RETURN(ByteView edata, r.take("event.event", esize));
    ev.data_size = edata.size();
    if (ev.type == kEvNoAction && ev.pcr == 0 && edata.size() == 17 &&
        std::memcmp(edata.data(), kStartupLocality, 16) == 0) {
      log.startup_locality = edata[16];
    }
    log.events.push_back(std::move(ev));
  }
  return log;
}

Result<std::map<uint32_t, Bytes>> replay(const EventLog& log, uint16_t bank) {
  VEIL_ASSIGN_OR_RETURN(auto alg, digest_alg(bank));
  auto size_it = log.digest_sizes.find(bank);
  if (size_it == log.digest_sizes.end()) {
    return make_error(ErrorCode::kNotFound, "TPM event log: bank {} is not in the log", bank_name(bank));
  }
  std::map<uint32_t, Bytes> pcrs;
  for (const LogEvent& ev : log.events) {
    if (ev.type == kEvNoAction) continue;
    auto d = ev.digests.find(bank);
    if (d == ev.digests.end()) {
      return make_error(ErrorCode::kCorrupt, "TPM event log: event at byte offset {} has no {} digest", ev.offset,
                        bank_name(bank));
    }
    auto [it, fresh] = pcrs.try_emplace(ev.pcr, Bytes(crypto::digest_size(alg), 0));
    if (fresh && ev.pcr == 0) it->second.back() = log.startup_locality;
    Bytes buf = it->second;
    buf.insert(buf.end(), d->second.begin(), d->second.end());
    it->second = crypto::digest(alg, buf);
  }
  return pcrs;
}

}  // namespace veil::attest::tpm
