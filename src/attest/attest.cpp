// attest core: names, evidence JSON, collateral JSON, base64, time parsing, verify_evidence.
#include "attest/attest.h"

#include <openssl/evp.h>

#include <ctime>

#include <nlohmann/json.hpp>

#include "attest/formats.h"

namespace veil::attest {

namespace {
struct NameEntry {
  TeeType type;
  const char* name;
};
constexpr NameEntry kNames[] = {
    {TeeType::kSim, "sim"},         {TeeType::kTdx, "tdx"},
    {TeeType::kSevSnp, "sev-snp"},  {TeeType::kNitro, "nitro"},
    {TeeType::kTpm, "tpm"},         {TeeType::kAzSnpVtpm, "az-snp-vtpm"},
    {TeeType::kAzTdxVtpm, "az-tdx-vtpm"},
};

bool is_b64_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}
}  // namespace

const char* tee_type_name(TeeType type) {
  for (const auto& e : kNames)
    if (e.type == type) return e.name;
  return "unknown";
}

Result<TeeType> tee_type_from_name(std::string_view name) {
  for (const auto& e : kNames)
    if (name == e.name) return e.type;
  return make_error(ErrorCode::kInvalidArgument,
                    "unknown TEE type '{}' (expected sim, tdx, sev-snp, nitro, tpm, az-snp-vtpm or az-tdx-vtpm)",
                    name.substr(0, 64));
}

std::string base64_encode(ByteView data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  if (data.empty()) return out;
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n < 0 ? 0 : n));
  return out;
}

Result<Bytes> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return make_error(ErrorCode::kCorrupt, "base64: length {} is not a multiple of 4", text.size());
  size_t pad = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '=') {
      if (i + 2 < text.size()) return make_error(ErrorCode::kCorrupt, "base64: '=' at byte {} before the end", i);
      ++pad;
    } else if (pad != 0 || !is_b64_char(c)) {
      return make_error(ErrorCode::kCorrupt, "base64: invalid character at byte {}", i);
    }
  }
  Bytes out(text.size() / 4 * 3);
  if (text.empty()) return out;
  int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0 || static_cast<size_t>(n) < pad) return make_error(ErrorCode::kCorrupt, "base64: undecodable input");
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

Result<TimePoint> parse_time(std::string_view text) {
  if (!text.empty() && text.size() <= 12 && text.find_first_not_of("0123456789") == std::string_view::npos) {
    int64_t v = 0;
    for (char c : text) v = v * 10 + (c - '0');
    return TimePoint(std::chrono::seconds(v));
  }
  // YYYY-MM-DDTHH:MM:SS[.fraction]Z
  auto bad = [&](const char* why) {
    return make_error(ErrorCode::kInvalidArgument, "time '{}': {} (expected RFC 3339 UTC such as 2025-09-01T00:00:00Z or unix seconds)",
                      text.substr(0, 40), why);
  };
  if (text.size() < 20) return bad("too short");
  auto num = [&](size_t pos, size_t len, int& out) {
    out = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
      out = out * 10 + (text[i] - '0');
    }
    return true;
  };
  int y, mo, d, h, mi, s;
  if (!num(0, 4, y) || text[4] != '-' || !num(5, 2, mo) || text[7] != '-' || !num(8, 2, d) ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' ') || !num(11, 2, h) || text[13] != ':' ||
      !num(14, 2, mi) || text[16] != ':' || !num(17, 2, s))
    return bad("malformed");
  size_t pos = 19;
  int64_t frac_ms = 0;
  if (text[pos] == '.') {
    ++pos;
    size_t digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits < 3) frac_ms = frac_ms * 10 + (text[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return bad("empty fraction");
    for (size_t k = digits; k < 3; ++k) frac_ms *= 10;
  }
  if (pos + 1 != text.size() || (text[pos] != 'Z' && text[pos] != 'z')) return bad("must end in Z");
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return bad("field out of range");
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  time_t t = timegm(&tm);
  return TimePoint(std::chrono::seconds(t)) + std::chrono::milliseconds(frac_ms);
}

std::string format_time(TimePoint t) {
  time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string evidence_to_json(const Evidence& evidence) {
  nlohmann::json j;
  j["type"] = tee_type_name(evidence.type);
  j["data"] = base64_encode(evidence.data);
  return j.dump();
}

Result<Evidence> evidence_from_json(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "evidence JSON: not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "type" && it.key() != "data")
      return make_error(ErrorCode::kCorrupt, "evidence JSON: unknown field '{}'", it.key().substr(0, 64));
  if (!j.contains("type") || !j["type"].is_string())
    return make_error(ErrorCode::kCorrupt, "evidence JSON: field 'type' missing or not a string");
  if (!j.contains("data") || !j["data"].is_string())
    return make_error(ErrorCode::kCorrupt, "evidence JSON: field 'data' missing or not a string");
  auto type = tee_type_from_name(j["type"].get<std::string>());
  if (!type.ok()) return Error(ErrorCode::kCorrupt, "evidence JSON: field 'type': " + type.error().message());
  auto data = base64_decode(j["data"].get<std::string>());
  if (!data.ok()) return std::move(data).error().wrap("evidence JSON: field 'data'");
  if (data->empty()) return make_error(ErrorCode::kCorrupt, "evidence JSON: field 'data' is empty");
  return Evidence{*type, std::move(*data)};
}

namespace {

// Intel PCS / dcap-qvl QuoteCollateralV3 shape: hex CRLs, PEM chains, JSON bodies as strings, hex signatures.
Result<Collateral> collateral_from_qvl(const nlohmann::json& j) {
  Collateral c;
  struct Field {
    const char* name;
    enum { kText, kHex } enc;
  };
  static const Field kFields[] = {
      {item::kPckCrlIssuerChain, Field::kText}, {item::kRootCaCrl, Field::kHex},
      {item::kPckCrl, Field::kHex},             {item::kTcbInfoIssuerChain, Field::kText},
      {item::kTcbInfo, Field::kText},           {item::kTcbInfoSignature, Field::kHex},
      {item::kQeIdentityIssuerChain, Field::kText}, {item::kQeIdentity, Field::kText},
      {item::kQeIdentitySignature, Field::kHex},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Field* f = nullptr;
    for (const auto& k : kFields)
      if (it.key() == k.name) f = &k;
    if (f == nullptr) return make_error(ErrorCode::kCorrupt, "collateral JSON (TDX QVL shape): unknown field '{}'", it.key().substr(0, 64));
    if (!it->is_string()) return make_error(ErrorCode::kCorrupt, "collateral JSON: field '{}' is not a string", it.key());
    const std::string& s = it->get_ref<const std::string&>();
    if (f->enc == Field::kHex) {
      auto b = from_hex(s);
      if (!b.ok()) return std::move(b).error().wrap(fmt::format("collateral JSON: field '{}'", it.key()));
      c.items[it.key()] = std::move(*b);
    } else {
      c.items[it.key()] = to_bytes(s);
    }
  }
  return c;
}

}  // namespace

Result<Collateral> collateral_from_json(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "collateral JSON: not a JSON object");
  if (j.contains(item::kTcbInfo) && j[item::kTcbInfo].is_string() &&
      j[item::kTcbInfo].get_ref<const std::string&>().starts_with("{"))
    return collateral_from_qvl(j);
  Collateral c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().empty() || it.key().size() > 64)
      return make_error(ErrorCode::kCorrupt, "collateral JSON: item name of {} bytes (1..64 allowed)", it.key().size());
    if (!it->is_string()) return make_error(ErrorCode::kCorrupt, "collateral JSON: item '{}' is not a base64 string", it.key());
    auto b = base64_decode(it->get_ref<const std::string&>());
    if (!b.ok()) return std::move(b).error().wrap(fmt::format("collateral JSON: item '{}'", it.key()));
    c.items[it.key()] = std::move(*b);
  }
  return c;
}

std::string collateral_to_json(const Collateral& collateral) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, bytes] : collateral.items) j[name] = base64_encode(bytes);
  return j.dump(1);
}

Result<Claims> verify_evidence(const Evidence& evidence, const Collateral& collateral, const Policy& policy,
                               const ReportData& expected_report_data, std::chrono::system_clock::time_point now) {
  // The allow-list is consulted before any parsing: a type the policy does not name is never verified.
  if (!policy.allowed_types.contains(evidence.type))
    return make_error(ErrorCode::kSecurity, "attestation refused: evidence type '{}' is not in the policy's allowed_types",
                      tee_type_name(evidence.type));
  const Verifier* verifier = verifier_for(evidence.type);
  if (verifier == nullptr)
    return make_error(ErrorCode::kUnsupported, "attestation: no verifier for evidence type '{}'", tee_type_name(evidence.type));
  auto claims = verifier->verify(evidence, collateral, now);
  if (!claims.ok()) return std::move(claims).error().wrap(fmt::format("attestation ({})", tee_type_name(evidence.type)));
  if (claims->type != evidence.type)
    return make_error(ErrorCode::kInternal, "attestation: verifier for '{}' returned claims of type '{}'",
                      tee_type_name(evidence.type), tee_type_name(claims->type));
  VEIL_TRY(check_policy(policy, *claims, expected_report_data, now));
  return claims;
}

}  // namespace veil::attest
