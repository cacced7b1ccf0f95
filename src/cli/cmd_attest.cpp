// veil attest show|verify|quote: inspect, verify and produce TEE evidence (docs/attestation.md).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "attest/attest.h"
#include "attest/formats.h"
#include "attest/sim.h"
#include "attest/snp.h"
#include "attest/tdx.h"
#include "cli/command.h"

namespace veil::cli {
namespace {

using attest::TeeType;
using json = nlohmann::json;

constexpr size_t kMaxEvidenceFile = 16 << 20;

struct AttestArgs {
  std::string evidence;
  std::string type;  // for raw evidence files
  bool json_out = false;
  std::string collateral;
  std::string policy;
  std::string at;
  std::string report_data;
  std::string provider = "sim";
  std::string platform_key;
  std::string config;
  bool create_key = false;
  std::string out;
  std::string collateral_out;
  std::string tsm_root = "/sys/kernel/config/tsm/report";
};

std::filesystem::path default_platform_key() {
  if (const char* d = std::getenv("VEIL_DATA_DIR"); d && *d) return std::filesystem::path(d) / "sim-platform.key";
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home && *home ? home : ".") / ".veil" / "sim-platform.key";
}

// An evidence file: the JSON form {"type", "data"}, or the raw format with --type.
Result<attest::Evidence> load_evidence(const AttestArgs& a) {
  VEIL_ASSIGN_OR_RETURN(Bytes raw, read_file(a.evidence, kMaxEvidenceFile));
  if (a.type.empty()) {
    auto ev = attest::evidence_from_json(as_chars(raw));
    if (!ev.ok()) return std::move(ev).error().wrap(fmt::format("{} (for a raw quote or report pass --type)", a.evidence));
    return ev;
  }
  auto type = attest::tee_type_from_name(a.type);
  if (!type.ok()) return Error(ErrorCode::kUsage, "--type: " + type.error().message());
  if (raw.empty()) return make_error(ErrorCode::kCorrupt, "{}: empty evidence file", a.evidence);
  return attest::Evidence{*type, std::move(raw)};
}

Result<attest::ReportData> parse_report_data(const std::string& hex) {
  auto b = from_hex(hex);
  if (!b.ok()) return Error(ErrorCode::kUsage, "--report-data: " + b.error().message());
  if (b->size() > 64) return make_error(ErrorCode::kUsage, "--report-data: {} bytes, at most 64", b->size());
  attest::ReportData rd{};
  std::copy(b->begin(), b->end(), rd.begin());  // shorter values are zero-padded on the right
  return rd;
}

json claims_json(const attest::Claims& c) {
  json j;
  j["type"] = attest::tee_type_name(c.type);
  j["simulated"] = c.simulated;
  j["debug"] = c.debug;
  j["report_data"] = to_hex(c.report_data);
  json m = json::object();
  for (const auto& [k, v] : c.measurements) m[k] = to_hex(v);
  j["measurements"] = m;
  json s = json::object();
  for (const auto& [k, v] : c.svns) s[k] = v;
  j["svns"] = s;
  if (!c.tcb_status.empty()) j["tcb_status"] = c.tcb_status;
  if (!c.platform_id.empty()) j["platform_id"] = to_hex(c.platform_id);
  if (c.issued_at) j["issued_at"] = attest::format_time(*c.issued_at);
  if (c.type == TeeType::kSevSnp) j["migration_agent"] = c.migration_agent;
  return j;
}

// Decoded fields of the evidence without verifying it.
json decode(const attest::Evidence& ev) {
  json j;
  j["type"] = attest::tee_type_name(ev.type);
  j["size"] = ev.data.size();
  j["verified"] = false;
  if (ev.type == TeeType::kTdx) {
    auto q = attest::parse_tdx_quote(ev.data);
    if (!q.ok()) {
      j["parse_error"] = q.error().message();
      return j;
    }
    j["version"] = q->version;
    j["body_type"] = q->body_type == 3 ? "TD 1.5" : "TD 1.0";
    j["tee_tcb_svn"] = to_hex(q->tee_tcb_svn);
    j["mr_seam"] = to_hex(q->mr_seam);
    j["td_attributes"] = to_hex(q->td_attributes);
    j["debug"] = q->debug();
    j["xfam"] = to_hex(q->xfam);
    j["mr_td"] = to_hex(q->mr_td);
    j["mr_config_id"] = to_hex(q->mr_config_id);
    j["mr_owner"] = to_hex(q->mr_owner);
    for (size_t i = 0; i < 4; ++i) j[fmt::format("rtmr{}", i)] = to_hex(q->rtmr[i]);
    j["report_data"] = to_hex(q->report_data);
    if (!q->mr_servicetd.empty()) j["mr_servicetd"] = to_hex(q->mr_servicetd);
    j["signed_bytes"] = q->signed_end;
    j["trailing_bytes_ignored"] = ev.data.size() - q->total_size;
  } else if (ev.type == TeeType::kSevSnp) {
    auto r = attest::parse_snp_report(ev.data);
    if (!r.ok()) {
      j["parse_error"] = r.error().message();
      return j;
    }
    j["version"] = r->version;
    j["guest_svn"] = r->guest_svn;
    j["policy"] = fmt::format("0x{:x}", r->policy);
    j["debug"] = r->debug();
    j["migration_agent"] = r->migrate_ma();
    j["vmpl"] = r->vmpl;
    j["signing_key"] = r->signing_key() == 0 ? "VCEK" : r->signing_key() == 1 ? "VLEK" : "none";
    j["measurement"] = to_hex(r->measurement);
    j["host_data"] = to_hex(r->host_data);
    j["id_key_digest"] = to_hex(r->id_key_digest);
    j["report_data"] = to_hex(r->report_data);
    j["reported_tcb"] = fmt::format("0x{:016x}", r->reported_tcb);
    j["chip_id"] = to_hex(r->chip_id);
    if (r->has_cpuid) j["cpuid"] = fmt::format("family 0x{:x} model 0x{:x} stepping 0x{:x}", r->cpuid_fam, r->cpuid_mod, r->cpuid_step);
  } else if (ev.type == TeeType::kSim) {
    auto s = attest::parse_sim_evidence(ev.data);
    if (!s.ok()) {
      j["parse_error"] = s.error().message();
      return j;
    }
    j["simulated"] = s->simulated;
    j["measurement"] = to_hex(s->measurement);
    j["report_data"] = to_hex(s->report_data);
    j["issued_at"] = attest::format_time(attest::TimePoint(std::chrono::seconds(s->issued_at)));
    j["platform_key_id"] = to_hex(s->platform_key_id);
  }
  return j;
}

void print_human(const json& j, const char* indent = "") {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      std::printf("%s%s:\n", indent, it.key().c_str());
      print_human(*it, "  ");
    } else {
      std::string v = it->is_string() ? it->get<std::string>() : it->dump();
      std::printf("%s%-24s %s\n", indent, (it.key() + ":").c_str(), v.c_str());
    }
  }
}

Status run_show(const AttestArgs& a) {
  VEIL_ASSIGN_OR_RETURN(attest::Evidence ev, load_evidence(a));
  json j = decode(ev);
  if (a.json_out) std::printf("%s\n", j.dump(2).c_str());
  else print_human(j);
  return ok_status();
}

// The checks behind `verify`'s verdict. Without `expected` the binding to a session is not checked.
Result<attest::Claims> verify_claims(const attest::Evidence& ev, const attest::Collateral& collateral,
                                     const attest::Policy& policy, const std::optional<attest::ReportData>& expected,
                                     attest::TimePoint now) {
  if (expected) return attest::verify_evidence(ev, collateral, policy, *expected, now);
  if (!policy.allowed_types.contains(ev.type)) {
    return make_error(ErrorCode::kSecurity, "attestation refused: evidence type '{}' is not in the policy's allowed_types",
                      attest::tee_type_name(ev.type));
  }
  const attest::Verifier* v = attest::verifier_for(ev.type);
  if (v == nullptr) {
    return make_error(ErrorCode::kUnsupported, "no verifier for evidence type '{}'", attest::tee_type_name(ev.type));
  }
  VEIL_ASSIGN_OR_RETURN(attest::Claims claims, v->verify(ev, collateral, now));
  VEIL_TRY(attest::check_policy(policy, claims, claims.report_data, now));
  return claims;
}

// Prints the refused verdict. Evidence that cannot be parsed or checked is refused like evidence that fails its
// checks: fail closed, exit 3 (docs/cli.md). Only inputs that cannot be read are runtime failures (exit 1).
Status refuse(const AttestArgs& a, const Error& why, attest::TimePoint now) {
  if (a.json_out) {
    json j{{"verdict", "refused"}, {"reason", why.message()}, {"at", attest::format_time(now)}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("verdict: refused\n");
  }
  std::fflush(stdout);
  return Error(ErrorCode::kSecurity, why.message());
}

Status run_verify(const AttestArgs& a) {
  VEIL_ASSIGN_OR_RETURN(attest::Policy policy, attest::load_policy(a.policy));
  attest::Collateral collateral;
  if (!a.collateral.empty()) {
    VEIL_ASSIGN_OR_RETURN(std::string text, read_text_file(a.collateral, kMaxEvidenceFile));
    auto c = attest::collateral_from_json(text);
    if (!c.ok()) return std::move(c).error().wrap(a.collateral);
    collateral = std::move(*c);
  }
  attest::TimePoint now = std::chrono::system_clock::now();
  if (!a.at.empty()) {
    auto t = attest::parse_time(a.at);
    if (!t.ok()) return Error(ErrorCode::kUsage, "--at: " + t.error().message());
    now = *t;
  }
  std::optional<attest::ReportData> expected;
  if (!a.report_data.empty()) {
    VEIL_ASSIGN_OR_RETURN(expected, parse_report_data(a.report_data));
  }
  auto ev = load_evidence(a);
  if (!ev.ok()) {
    ErrorCode code = ev.error().code();
    bool unreadable = code == ErrorCode::kNotFound || code == ErrorCode::kIo || code == ErrorCode::kUsage;
    if (unreadable) return std::move(ev).error();
    return refuse(a, ev.error(), now);
  }
  auto claims = verify_claims(*ev, collateral, policy, expected, now);
  if (!claims.ok()) return refuse(a, claims.error(), now);
  bool bound = expected.has_value();
  json j{{"verdict", "accepted"}, {"at", attest::format_time(now)}, {"report_data_bound", bound}, {"claims", claims_json(*claims)}};
  if (a.json_out) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("verdict: accepted\n");
    if (!bound) std::printf("note: report_data not checked (pass --report-data to bind the evidence to a session)\n");
    print_human(j["claims"]);
  }
  return ok_status();
}

Status run_quote(const AttestArgs& a) {
  VEIL_ASSIGN_OR_RETURN(attest::ReportData rd, parse_report_data(a.report_data));
  attest::ProviderOptions opts;
  opts.sim_platform_key = a.platform_key.empty() ? default_platform_key() : std::filesystem::path(a.platform_key);
  opts.sim_config = a.config;
  opts.sim_create_key = a.create_key;
  opts.tsm_root = a.tsm_root;
  if (a.create_key && a.provider == "sim") {
    std::error_code ec;
    std::filesystem::create_directories(opts.sim_platform_key.parent_path(), ec);
  }
  VEIL_ASSIGN_OR_RETURN(auto provider, attest::make_provider(a.provider, opts));
  VEIL_ASSIGN_OR_RETURN(attest::Evidence ev, provider->quote(rd));
  std::string text = attest::evidence_to_json(ev) + "\n";
  if (a.out.empty()) {
    std::fputs(text.c_str(), stdout);
  } else {
    VEIL_TRY(write_file_atomic(a.out, as_bytes(text), 0644));
  }
  if (!a.collateral_out.empty()) {
    if (a.provider != "sim") return Error(ErrorCode::kUsage, "--collateral-out is only for --provider sim");
    VEIL_ASSIGN_OR_RETURN(Bytes pub, attest::sim_platform_public_key(opts.sim_platform_key, false));
    attest::Collateral c;
    c.items[attest::item::kSimPlatformPublicKey] = pub;
    VEIL_TRY(write_file_atomic(a.collateral_out, as_bytes(attest::collateral_to_json(c) + "\n"), 0644));
  }
  return ok_status();
}

void setup_attest(CLI::App& app, Runner& runner) {
  auto a = std::make_shared<AttestArgs>();
  CLI::App* attest = subcommand_group(app, "attest", "Show, verify and produce TEE attestation evidence");
  attest->require_subcommand(1);

  CLI::App* show = attest->add_subcommand("show", "Decode evidence (not verified) and print its fields");
  show->add_option("EVIDENCE", a->evidence, "Evidence file (JSON {\"type\",\"data\"}, or raw with --type)")->required();
  show->add_option("--type", a->type, "Raw evidence type: tdx, sev-snp, sim, nitro, tpm, ...");
  show->add_flag("--json", a->json_out, "Print JSON");
  runner.on(show, [a] { return run_show(*a); });

  CLI::App* verify = attest->add_subcommand("verify", "Verify evidence against collateral and a policy (exit 3 on refusal)");
  verify->add_option("EVIDENCE", a->evidence, "Evidence file (JSON {\"type\",\"data\"}, or raw with --type)")->required();
  verify->add_option("--type", a->type, "Raw evidence type: tdx, sev-snp, sim, nitro, tpm, ...");
  verify->add_option("--collateral", a->collateral, "Collateral JSON file (named base64 items; docs/attestation.md)");
  verify->add_option("--policy", a->policy, "Policy JSON file")->required();
  verify->add_option("--at", a->at, "Verification time, RFC 3339 UTC or unix seconds (default: now)");
  verify->add_option("--report-data", a->report_data, "Expected report_data (hex, up to 64 bytes, zero-padded)");
  verify->add_flag("--json", a->json_out, "Print JSON");
  runner.on(verify, [a] { return run_verify(*a); });

  CLI::App* quote = attest->add_subcommand("quote", "Produce evidence binding the given report_data");
  quote->add_option("--provider", a->provider, "sim, tdx or sev-snp (configfs-tsm)")->capture_default_str();
  quote->add_option("--report-data", a->report_data, "report_data (hex, up to 64 bytes, zero-padded)")->required();
  quote->add_option("--platform-key", a->platform_key, "sim: platform key file (default $VEIL_DATA_DIR/sim-platform.key or ~/.veil/sim-platform.key)");
  quote->add_option("--config", a->config, "sim: configuration file folded into the measurement");
  quote->add_flag("--create-key", a->create_key, "sim: create the platform key file (0600) if it does not exist");
  quote->add_option("--tsm-root", a->tsm_root, "tdx/sev-snp: configfs-tsm report folder")->capture_default_str();
  quote->add_option("--out", a->out, "Write the evidence JSON here instead of stdout");
  quote->add_option("--collateral-out", a->collateral_out, "sim: write the collateral (platform public key) JSON here");
  runner.on(quote, [a] { return run_quote(*a); });
}

VEIL_COMMAND(setup_attest, 40);

}  // namespace
}  // namespace veil::cli
