// The "tpm" provider: a TPM 2.0 quote through tpm2-tss ESYS.
//  - TCTI: ProviderOptions::tpm_tcti (e.g. "swtpm:host=127.0.0.1,port=2321"), default "device:/dev/tpmrm0".
//  - AK: a primary ECC P-256 restricted signing key (ECDSA/SHA-256) under the endorsement hierarchy,
//    created with a fixed template, so the same TPM yields the same AK every time (nothing persisted).
//  - Quote over SHA-256 PCRs 0..23 with qualifyingData = SHA-256(report_data); the PCR values are read
//    before and after the quote and the quote is retried when they changed in between.
//  - The firmware event log is attached when the TPM is a local device and the kernel exposes it.
// sealing_root() is not offered: a TPM-sealed secret bound to PCRs is not implemented (kUnsupported).
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <cstring>
#include <filesystem>

#include "attest/formats.h"
#include "attest/tpm_bundle.h"

namespace veil::attest::tpm {
namespace {

constexpr const char* kDefaultTcti = "device:/dev/tpmrm0";
constexpr const char* kBiosLog = "/sys/kernel/security/tpm0/binary_bios_measurements";

Error tss_error(std::string_view what, TSS2_RC rc) {
  return make_error(ErrorCode::kIo, "tpm provider: {} failed: {}", what, Tss2_RC_Decode(rc));
}

template <typename T>
struct EsysPtr {
  T* p = nullptr;
  ~EsysPtr() { Esys_Free(p); }
};

class TpmProvider final : public Provider {
 public:
  TpmProvider(TSS2_TCTI_CONTEXT* tcti, ESYS_CONTEXT* ctx, bool device) : tcti_(tcti), ctx_(ctx), device_(device) {}
  ~TpmProvider() override {
    if (ak_ != ESYS_TR_NONE) Esys_FlushContext(ctx_, ak_);
    Esys_Finalize(&ctx_);
    Tss2_TctiLdr_Finalize(&tcti_);
  }
  TpmProvider(const TpmProvider&) = delete;
  TpmProvider& operator=(const TpmProvider&) = delete;

  TeeType type() const override { return TeeType::kTpm; }

  Status create_ak() {
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_PUBLIC in{};
    in.publicArea.type = TPM2_ALG_ECC;
    in.publicArea.nameAlg = TPM2_ALG_SHA256;
    in.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                     TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
    auto& ecc = in.publicArea.parameters.eccDetail;
    ecc.symmetric.algorithm = TPM2_ALG_NULL;
    ecc.scheme.scheme = TPM2_ALG_ECDSA;
    ecc.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    ecc.curveID = TPM2_ECC_NIST_P256;
    ecc.kdf.scheme = TPM2_ALG_NULL;
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION creation_pcr{};
    EsysPtr<TPM2B_PUBLIC> out_public;
    EsysPtr<TPM2B_CREATION_DATA> creation_data;
    EsysPtr<TPM2B_DIGEST> creation_hash;
    EsysPtr<TPMT_TK_CREATION> creation_ticket;
    TSS2_RC rc = Esys_CreatePrimary(ctx_, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                    &sensitive, &in, &outside, &creation_pcr, &ak_, &out_public.p, &creation_data.p,
                                    &creation_hash.p, &creation_ticket.p);
    if (rc != TSS2_RC_SUCCESS) return tss_error("creating the attestation key (CreatePrimary)", rc);
    uint8_t buf[sizeof(TPMT_PUBLIC)];
    size_t off = 0;
    rc = Tss2_MU_TPMT_PUBLIC_Marshal(&out_public.p->publicArea, buf, sizeof buf, &off);
    if (rc != TSS2_RC_SUCCESS) return tss_error("marshalling the AK public area", rc);
    ak_public_.assign(buf, buf + off);
    return ok_status();
  }

  Result<PcrBank> read_pcrs(const TPML_PCR_SELECTION& want) {
    PcrBank out;
    TPML_PCR_SELECTION left = want;
    for (int round = 0; round < 8; ++round) {
      bool any = false;
      for (uint32_t i = 0; i < left.count; ++i) {
        for (uint8_t b = 0; b < left.pcrSelections[i].sizeofSelect; ++b) any = any || left.pcrSelections[i].pcrSelect[b];
      }
      if (!any) return out;
      uint32_t counter = 0;
      EsysPtr<TPML_PCR_SELECTION> got_sel;
      EsysPtr<TPML_DIGEST> values;
      TSS2_RC rc = Esys_PCR_Read(ctx_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &left, &counter, &got_sel.p, &values.p);
      if (rc != TSS2_RC_SUCCESS) return tss_error("PCR_Read", rc);
      size_t v = 0;
      bool progress = false;
      for (uint32_t i = 0; i < got_sel.p->count; ++i) {
        const auto& s = got_sel.p->pcrSelections[i];
        for (uint32_t pcr = 0; pcr < s.sizeofSelect * 8u; ++pcr) {
          if (!(s.pcrSelect[pcr / 8] & (1u << (pcr % 8)))) continue;
          if (v >= values.p->count) return make_error(ErrorCode::kIo, "tpm provider: PCR_Read returned too few values");
          out[pcr] = Bytes(values.p->digests[v].buffer, values.p->digests[v].buffer + values.p->digests[v].size);
          ++v;
          progress = true;
          for (uint32_t j = 0; j < left.count; ++j) {
            if (left.pcrSelections[j].hash == s.hash) left.pcrSelections[j].pcrSelect[pcr / 8] &= ~(1u << (pcr % 8));
          }
        }
      }
      if (!progress) return make_error(ErrorCode::kIo, "tpm provider: the TPM does not report the selected PCRs");
    }
    return make_error(ErrorCode::kIo, "tpm provider: PCR_Read did not return every selected PCR");
  }

  Result<Evidence> quote(const ReportData& report_data) override {
    TPML_PCR_SELECTION sel{};
    sel.count = 1;
    sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
    sel.pcrSelections[0].sizeofSelect = 3;
    sel.pcrSelections[0].pcrSelect[0] = sel.pcrSelections[0].pcrSelect[1] = sel.pcrSelections[0].pcrSelect[2] = 0xFF;
    Bytes qd = qualifying_data(report_data);
    TPM2B_DATA qualifying{};
    qualifying.size = static_cast<UINT16>(qd.size());
    std::memcpy(qualifying.buffer, qd.data(), qd.size());
    TPMT_SIG_SCHEME scheme{};
    scheme.scheme = TPM2_ALG_NULL;  // the AK's own scheme
    for (int attempt = 0; attempt < 4; ++attempt) {
      VEIL_ASSIGN_OR_RETURN(PcrBank before, read_pcrs(sel));
      EsysPtr<TPM2B_ATTEST> quoted;
      EsysPtr<TPMT_SIGNATURE> signature;
      TSS2_RC rc = Esys_Quote(ctx_, ak_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qualifying, &scheme, &sel,
                              &quoted.p, &signature.p);
      if (rc != TSS2_RC_SUCCESS) return tss_error("Quote", rc);
      VEIL_ASSIGN_OR_RETURN(PcrBank after, read_pcrs(sel));
      if (before != after) continue;  // a PCR was extended meanwhile: quote again
      uint8_t sbuf[sizeof(TPMT_SIGNATURE)];
      size_t off = 0;
      rc = Tss2_MU_TPMT_SIGNATURE_Marshal(signature.p, sbuf, sizeof sbuf, &off);
      if (rc != TSS2_RC_SUCCESS) return tss_error("marshalling the quote signature", rc);
      Bundle bundle;
      bundle.report_data = report_data;
      bundle.ak_public = ak_public_;
      bundle.quotes.push_back({Bytes(quoted.p->attestationData, quoted.p->attestationData + quoted.p->size),
                               Bytes(sbuf, sbuf + off)});
      bundle.pcrs[kAlgSha256] = std::move(after);
      if (device_ && std::filesystem::exists(kBiosLog)) {
        auto log = read_file(kBiosLog, kMaxEventLogSize);
        if (log.ok() && !log->empty()) bundle.event_log = std::move(*log);
      }
      return Evidence{TeeType::kTpm, to_bytes(bundle_to_json(bundle))};
    }
    return make_error(ErrorCode::kUnavailable, "tpm provider: PCRs kept changing during the quote; try again");
  }

  Result<SecretBytes> sealing_root() override {
    return make_error(ErrorCode::kUnsupported, "tpm provider: a TPM-sealed root secret is not implemented");
  }

 private:
  TSS2_TCTI_CONTEXT* tcti_;
  ESYS_CONTEXT* ctx_;
  bool device_;
  ESYS_TR ak_ = ESYS_TR_NONE;
  Bytes ak_public_;
};

}  // namespace
}  // namespace veil::attest::tpm

namespace veil::attest {

Result<std::unique_ptr<Provider>> make_tpm_provider(const ProviderOptions& options) {
  std::string conf = options.tpm_tcti.empty() ? tpm::kDefaultTcti : options.tpm_tcti;
  if (conf.size() > 256) return make_error(ErrorCode::kInvalidArgument, "tpm provider: TCTI configuration too long");
  bool device = conf.rfind("device", 0) == 0;
  if (device) {
    auto colon = conf.find(':');
    std::string path = colon == std::string::npos ? "/dev/tpmrm0" : conf.substr(colon + 1);
    if (!std::filesystem::exists(path)) {
      return make_error(ErrorCode::kUnsupported, "tpm provider: no TPM device at {}", path);
    }
  }
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(conf.c_str(), &tcti);
  if (rc != TSS2_RC_SUCCESS) {
    return make_error(device ? ErrorCode::kUnsupported : ErrorCode::kUnavailable,
                      "tpm provider: cannot open TCTI '{}': {}", conf, Tss2_RC_Decode(rc));
  }
  ESYS_CONTEXT* ctx = nullptr;
  rc = Esys_Initialize(&ctx, tcti, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    Tss2_TctiLdr_Finalize(&tcti);
    return make_error(ErrorCode::kUnavailable, "tpm provider: Esys_Initialize failed: {}", Tss2_RC_Decode(rc));
  }
  auto provider = std::make_unique<tpm::TpmProvider>(tcti, ctx, device);
  VEIL_TRY(provider->create_ak());
  return std::unique_ptr<Provider>(std::move(provider));
}

}  // namespace veil::attest
