// tpm_quote: verification of a TPM 2.0 quote (attest-internal), shared by the tpm verifier and the
// Azure vTPM verifiers.
//
// Order of checks (docs/attestation-nitro-tpm.md): parse TPMS_ATTEST (magic TPM_GENERATED_VALUE, type
// TPM_ST_ATTEST_QUOTE) -> signature over the whole TPMS_ATTEST with the AK (scheme and hash of the
// TPMT_SIGNATURE must match a restricted AK's scheme; SHA-1 refused) -> extraData equals the expected nonce (constant time) -> pcrDigest
// equals H_sig(selected PCR values, banks in listed order, PCRs ascending) over the PCR values given.
// Optional: the event log replays to the quoted PCRs of every bank it and the quote share.
// Thread-safety: pure functions.
#pragma once

#include <map>
#include <optional>

#include <openssl/evp.h>

#include "attest/tpm_eventlog.h"
#include "attest/tpm_structs.h"
#include "crypto/crypto.h"

namespace veil::attest::tpm {

// The attestation key, from a TPMT_PUBLIC, an X.509 certificate, a SubjectPublicKeyInfo or a JWK.
struct AkKey {
  bool rsa = true;
  Bytes modulus, exponent;                         // RSA, big-endian
  crypto::EcCurve curve = crypto::EcCurve::kP256;  // ECC
  Bytes point;                                     // ECC: 0x04 || X || Y
  std::optional<Bytes> name;                       // TPM Name, when known (TPMT_PUBLIC)
  uint16_t scheme = kAlgNull;                      // restricted key's scheme, when known
  uint16_t scheme_hash = kAlgNull;
};

// Requires a restricted signing key that is fixedTPM (an attestation key, Part 1 §25).
Result<AkKey> ak_from_public(const Public& pub);
Result<AkKey> ak_from_pkey(EVP_PKEY* key, std::string_view what);
Result<AkKey> ak_from_spki(ByteView der);
// True when both describe the same public key.
bool same_key(const AkKey& a, const AkKey& b);

using PcrBank = std::map<uint32_t, Bytes>;       // PCR index -> value
using PcrBanks = std::map<uint16_t, PcrBank>;    // TPM_ALG_ID -> bank

struct VerifiedQuote {
  Attest attest;
  PcrBanks quoted;  // the selected PCR values, now bound by the signature
};

// Verifies a quote signed as a TPMT_SIGNATURE.
Result<VerifiedQuote> verify_quote(ByteView attest, const Signature& signature, const AkKey& ak,
                                   ByteView expected_nonce, const PcrBanks& pcrs);

// Checks the event log against the quoted PCRs: for every bank both have, every PCR the log
// extends and the quote covers must replay to the quoted value. At least one bank must be shared.
Status check_event_log(const EventLog& log, const PcrBanks& quoted);

}  // namespace veil::attest::tpm
