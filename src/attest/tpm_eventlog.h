// tpm_eventlog: the TCG PC Client crypto-agile event log (attest-internal).
// TCG PC Client Platform Firmware Profile Specification (rev 1.05), 10.2 Event Log Format: the first
// event is a TCG_PCClientPCREvent (SHA-1 format) of type EV_NO_ACTION carrying TCG_EfiSpecIdEvent
// ("Spec ID Event03", the digest sizes per algorithm); every later event is a TCG_PCR_EVENT2 with a
// TPML_DIGEST_VALUES. Little-endian. Replay extends PCR[i] = H(PCR[i] || digest) per bank, skipping
// EV_NO_ACTION; a "StartupLocality" EV_NO_ACTION event sets PCR0's initial last byte (10.4.5.3).
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "core/core.h"

namespace veil::attest::tpm {

inline constexpr uint32_t kEvNoAction = 0x00000003;
inline constexpr size_t kMaxEventLogSize = 16u << 20;
inline constexpr size_t kMaxEvents = 65536;

struct LogEvent {
  uint32_t pcr = 0;
  uint32_t type = 0;
  std::map<uint16_t, Bytes> digests;  // TPM_ALG_ID -> digest
  size_t offset = 0;                  // byte offset of the event in the log
  size_t data_size = 0;
};

struct EventLog {
  std::map<uint16_t, uint16_t> digest_sizes;  // from the Spec ID event
  uint8_t startup_locality = 0;
  std::vector<LogEvent> events;
};

Result<EventLog> parse_event_log(ByteView data);

// Replays one bank (TPM_ALG_ID). Returns PCR index -> value for every PCR that at least one
// measured (non-EV_NO_ACTION) event extends. kCorrupt if an event lacks a digest for that bank.
Result<std::map<uint32_t, Bytes>> replay(const EventLog& log, uint16_t bank);

}  // namespace veil::attest::tpm
