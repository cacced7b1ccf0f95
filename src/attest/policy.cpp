// The attestation policy: a strict JSON parser and check_policy (docs/attestation.md, "Policy").
#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "attest/formats.h"

namespace veil::attest {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxPolicySize = 1 << 20;

Error perr(std::string_view field, std::string_view why) {
  return Error(ErrorCode::kInvalidArgument, fmt::format("policy: field '{}': {}", field, why));
}

Result<TeeType> type_key(const std::string& field, const std::string& key) {
  auto t = tee_type_from_name(key);
  if (!t.ok()) return perr(field, t.error().message());
  return *t;
}

Status check_name(const std::string& field, const std::string& name) {
  if (name.empty() || name.size() > 64) return perr(field, "measurement or SVN name must be 1..64 characters");
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return perr(field, "names are lower-case letters, digits and '_'");
  return ok_status();
}

}  // namespace

Result<Policy> parse_policy(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return Error(ErrorCode::kInvalidArgument, "policy: not valid JSON");
  if (!j.is_object()) return Error(ErrorCode::kInvalidArgument, "policy: top level must be a JSON object");
  Policy p;
  static const char* kKnown[] = {"allowed_types", "allow_simulated", "allow_debug", "expected_measurements",
                                 "min_svns", "accepted_tcb_status", "max_evidence_age_seconds",
                                 "allow_migration_agent", "max_svns"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKnown) known = known || it.key() == k;
    if (!known) return perr(it.key().substr(0, 64), "unknown field");
  }
  // allowed_types: required, non-empty.
  if (!j.contains("allowed_types")) return perr("allowed_types", "missing (an empty or absent allow-list is never 'allow all')");
  const json& at = j["allowed_types"];
  if (!at.is_array()) return perr("allowed_types", "must be an array of TEE type names");
  if (at.empty()) return perr("allowed_types", "empty allow-list");
  for (size_t i = 0; i < at.size(); ++i) {
    std::string f = fmt::format("allowed_types[{}]", i);
    if (!at[i].is_string()) return perr(f, "must be a string");
    VEIL_ASSIGN_OR_RETURN(TeeType t, type_key(f, at[i].get<std::string>()));
    if (!p.allowed_types.insert(t).second) return perr(f, "duplicate type");
  }
  for (const char* flag : {"allow_simulated", "allow_debug", "allow_migration_agent"}) {
    if (!j.contains(flag)) continue;
    if (!j[flag].is_boolean()) return perr(flag, "must be true or false");
    std::string_view f = flag;
    (f == "allow_simulated" ? p.allow_simulated : f == "allow_debug" ? p.allow_debug : p.allow_migration_agent) =
        j[flag].get<bool>();
  }
  if (p.allowed_types.contains(TeeType::kSim) && !p.allow_simulated)
    return perr("allowed_types", "lists 'sim' but allow_simulated is not true");

  auto require_allowed = [&](const std::string& field, TeeType t) -> Status {
    if (!p.allowed_types.contains(t)) return perr(field, fmt::format("type '{}' is not in allowed_types", tee_type_name(t)));
    return ok_status();
  };

  if (j.contains("expected_measurements")) {
    const json& em = j["expected_measurements"];
    if (!em.is_object()) return perr("expected_measurements", "must be an object of type -> {name: [hex, ...]}");
    for (auto it = em.begin(); it != em.end(); ++it) {
      std::string f = "expected_measurements." + it.key().substr(0, 32);
      VEIL_ASSIGN_OR_RETURN(TeeType t, type_key(f, it.key()));
      VEIL_TRY(require_allowed(f, t));
      if (!it->is_object() || it->empty()) return perr(f, "must be a non-empty object of name -> [hex, ...]");
      auto& dst = p.expected_measurements[t];
      for (auto m = it->begin(); m != it->end(); ++m) {
        std::string mf = f + "." + m.key().substr(0, 64);
        VEIL_TRY(check_name(mf, m.key()));
        if (!m->is_array() || m->empty()) return perr(mf, "must be a non-empty array of hex strings");
        auto& values = dst[m.key()];
        for (size_t i = 0; i < m->size(); ++i) {
          std::string vf = fmt::format("{}[{}]", mf, i);
          if (!(*m)[i].is_string()) return perr(vf, "must be a hex string");
          auto b = from_hex((*m)[i].get<std::string>());
          if (!b.ok()) return perr(vf, b.error().message());
          if (b->empty()) return perr(vf, "empty value");
          values.push_back(std::move(*b));
        }
      }
    }
  }
  for (const char* key : {"min_svns", "max_svns"}) {
    if (!j.contains(key)) continue;
    const json& ms = j[key];
    if (!ms.is_object()) return perr(key, "must be an object of type -> {name: integer}");
    auto& dst_all = std::string_view(key) == "min_svns" ? p.min_svns : p.max_svns;
    for (auto it = ms.begin(); it != ms.end(); ++it) {
      std::string f = std::string(key) + "." + it.key().substr(0, 32);
      VEIL_ASSIGN_OR_RETURN(TeeType t, type_key(f, it.key()));
      VEIL_TRY(require_allowed(f, t));
      if (!it->is_object() || it->empty()) return perr(f, "must be a non-empty object of name -> integer");
      for (auto m = it->begin(); m != it->end(); ++m) {
        std::string mf = f + "." + m.key().substr(0, 64);
        VEIL_TRY(check_name(mf, m.key()));
        if (!m->is_number_unsigned()) return perr(mf, "must be a non-negative integer");
        dst_all[t][m.key()] = m->get<uint64_t>();
      }
    }
  }
  if (j.contains("accepted_tcb_status")) {
    const json& ts = j["accepted_tcb_status"];
    if (!ts.is_object()) return perr("accepted_tcb_status", "must be an object of type -> [status, ...]");
    for (auto it = ts.begin(); it != ts.end(); ++it) {
      std::string f = "accepted_tcb_status." + it.key().substr(0, 32);
      VEIL_ASSIGN_OR_RETURN(TeeType t, type_key(f, it.key()));
      VEIL_TRY(require_allowed(f, t));
      if (!it->is_array() || it->empty()) return perr(f, "must be a non-empty array of status strings");
      for (size_t i = 0; i < it->size(); ++i) {
        std::string vf = fmt::format("{}[{}]", f, i);
        if (!(*it)[i].is_string() || (*it)[i].get_ref<const std::string&>().empty() ||
            (*it)[i].get_ref<const std::string&>().size() > 64)
          return perr(vf, "must be a status name such as \"UpToDate\"");
        p.accepted_tcb_status[t].insert((*it)[i].get<std::string>());
      }
    }
  }
  if (j.contains("max_evidence_age_seconds")) {
    const json& a = j["max_evidence_age_seconds"];
    if (!a.is_number_unsigned() || a.get<uint64_t>() == 0 || a.get<uint64_t>() > 10ull * 365 * 86400)
      return perr("max_evidence_age_seconds", "must be an integer from 1 to 315360000");
    p.max_evidence_age = std::chrono::seconds(a.get<uint64_t>());
  }
  return p;
}

Result<Policy> load_policy(const std::filesystem::path& path) {
  auto text = read_text_file(path, kMaxPolicySize);
  if (!text.ok()) return std::move(text).error().wrap(fmt::format("policy file {}", path.string()));
  auto p = parse_policy(*text);
  if (!p.ok()) return std::move(p).error().wrap(path.string());
  return p;
}

Status check_policy(const Policy& policy, const Claims& claims, const ReportData& expected_report_data,
                    std::chrono::system_clock::time_point now) {
  auto refuse = [](std::string why) { return Error(ErrorCode::kSecurity, "policy refused: " + why); };
  const char* tname = tee_type_name(claims.type);
  if (policy.allowed_types.empty()) return refuse("the policy allows no TEE type");
  if (!policy.allowed_types.contains(claims.type))
    return refuse(fmt::format("type '{}' is not in allowed_types", tname));
  if ((claims.simulated || claims.type == TeeType::kSim) && !policy.allow_simulated)
    return refuse("evidence is simulated and allow_simulated is false");
  if (claims.debug && !policy.allow_debug)
    return refuse(fmt::format("{} evidence comes from a debug-enabled TEE and allow_debug is false", tname));

  if (auto it = policy.expected_measurements.find(claims.type); it != policy.expected_measurements.end()) {
    for (const auto& [name, values] : it->second) {
      auto m = claims.measurements.find(name);
      if (m == claims.measurements.end())
        return refuse(fmt::format("measurement '{}' required by the policy is absent from the {} claims", name, tname));
      bool match = false;
      for (const auto& v : values) match = ct_equal(v, m->second) || match;
      if (!match)
        return refuse(fmt::format("measurement '{}' = {} matches none of the {} expected value(s)", name,
                                  to_hex(m->second), values.size()));
    }
  }
  if (auto it = policy.min_svns.find(claims.type); it != policy.min_svns.end()) {
    for (const auto& [name, min] : it->second) {
      auto s = claims.svns.find(name);
      if (s == claims.svns.end())
        return refuse(fmt::format("SVN '{}' required by the policy is absent from the {} claims", name, tname));
      if (s->second < min) return refuse(fmt::format("SVN '{}' = {} is below the minimum {}", name, s->second, min));
    }
  }
  if (auto it = policy.max_svns.find(claims.type); it != policy.max_svns.end()) {
    for (const auto& [name, max] : it->second) {
      auto s = claims.svns.find(name);
      if (s == claims.svns.end())
        return refuse(fmt::format("value '{}' limited by the policy is absent from the {} claims", name, tname));
      if (s->second > max) return refuse(fmt::format("'{}' = {} is above the maximum {}", name, s->second, max));
    }
  }
  if (claims.migration_agent && !policy.allow_migration_agent)
    return refuse(fmt::format("{} guest policy allows a migration agent and allow_migration_agent is false", tname));
  if (!claims.tcb_status.empty()) {
    auto it = policy.accepted_tcb_status.find(claims.type);
    bool ok = it == policy.accepted_tcb_status.end() ? claims.tcb_status == "UpToDate" : it->second.contains(claims.tcb_status);
    if (!ok) return refuse(fmt::format("TCB status '{}' is not accepted", claims.tcb_status.substr(0, 64)));
  }
  if (policy.max_evidence_age && claims.issued_at) {
    if (*claims.issued_at > now + std::chrono::minutes(5))
      return refuse(fmt::format("evidence is dated {} which is in the future (now {})", format_time(*claims.issued_at), format_time(now)));
    if (now - *claims.issued_at > *policy.max_evidence_age)
      return refuse(fmt::format("evidence dated {} is older than max_evidence_age_seconds {}", format_time(*claims.issued_at),
                                policy.max_evidence_age->count()));
  }
  if (!ct_equal(claims.report_data, expected_report_data))
    return refuse("report_data does not match the expected value (evidence not bound to this session)");
  return ok_status();
}

}  // namespace veil::attest
