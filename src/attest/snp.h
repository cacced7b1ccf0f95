// attest internal: AMD SEV-SNP ATTESTATION_REPORT parsing (SEV-SNP Firmware ABI, pub. 56860, Table
// "ATTESTATION_REPORT Structure"). Offsets are documented in docs/attestation.md.
#pragma once

#include <array>

#include "attest/formats.h"

namespace veil::attest {

inline constexpr size_t kSnpReportSize = 0x4A0;
inline constexpr size_t kSnpSignedSize = 0x2A0;

enum class SnpProduct { kUnknown, kMilan, kGenoa, kTurin };
const char* snp_product_name(SnpProduct p);

struct SnpTcb {
  uint8_t fmc = 0, bootloader = 0, tee = 0, snp = 0, microcode = 0;
};
// TCB_VERSION decoding: Milan/Genoa [0]=BL [1]=TEE [6]=SNP [7]=UCODE; Turin [0]=FMC [1]=BL [2]=TEE [3]=SNP [7]=UCODE.
SnpTcb decode_snp_tcb(uint64_t raw, SnpProduct product);

struct SnpReport {
  uint32_t version = 0;
  uint32_t guest_svn = 0;
  uint64_t policy = 0;
  Bytes family_id, image_id;  // 16 each
  uint32_t vmpl = 0;
  uint32_t signature_algo = 0;
  uint64_t current_tcb = 0, platform_info = 0, reported_tcb = 0, committed_tcb = 0, launch_tcb = 0;
  uint32_t signer_info = 0;
  ReportData report_data{};
  Bytes measurement, host_data, id_key_digest, author_key_digest, report_id, report_id_ma, chip_id;
  bool has_cpuid = false;  // version >= 3
  uint8_t cpuid_fam = 0, cpuid_mod = 0, cpuid_step = 0;
  Bytes sig_r, sig_s;      // 72 bytes each, little-endian
  ByteView signed_region;  // bytes 0..0x2A0

  bool debug() const { return (policy >> 19) & 1; }
  bool migrate_ma() const { return (policy >> 18) & 1; }
  uint32_t signing_key() const { return (signer_info >> 2) & 7; }  // 0 VCEK, 1 VLEK, 7 none
  bool mask_chip_key() const { return (signer_info >> 1) & 1; }
  // The product implied by cpuid_fam/mod (v3+), or kUnknown.
  SnpProduct cpuid_product() const;
};

// The report's structure, or kCorrupt / kUnsupported naming the field and byte offset.
Result<SnpReport> parse_snp_report(ByteView data);

}  // namespace veil::attest
