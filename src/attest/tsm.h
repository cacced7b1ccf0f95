// attest internal: quotes through Linux configfs-tsm (Documentation/ABI/testing/configfs-tsm):
//   mkdir <root>/<entry>; write inblob (64 bytes of report_data); read outblob, auxblob, provider;
//   read generation before and after: it must have advanced by exactly our one write, or another
//   writer raced us and the outblob may not be ours; rmdir the entry.
#pragma once

#include <filesystem>
#include <functional>

#include "attest/formats.h"

namespace veil::attest {

struct TsmReport {
  std::string provider;  // "tdx_guest" or "sev_guest"
  Bytes outblob;         // the TDX quote or the SNP report
  Bytes auxblob;         // SNP: the certificate table from the host (may be empty)
  uint64_t generation = 0;
};

// Tests substitute the kernel: called after inblob has been written, with the entry folder.
struct TsmHooks {
  std::function<void(const std::filesystem::path& entry)> after_mkdir;
  std::function<void(const std::filesystem::path& entry)> after_inblob_write;
};

// One report through configfs-tsm at `root`. kUnsupported when `root` does not exist; kSecurity when
// the provider is not `expected_provider` or the generation shows a concurrent writer.
Result<TsmReport> tsm_get_report(const std::filesystem::path& root, std::string_view expected_provider, const ReportData& report_data,
                                 const TsmHooks& hooks = {});

// The tdx / sev-snp provider over configfs-tsm (make_tdx_provider / make_snp_provider pass no hooks).
Result<std::unique_ptr<Provider>> make_tsm_provider(TeeType type, const ProviderOptions& options, TsmHooks hooks = {});

}  // namespace veil::attest
