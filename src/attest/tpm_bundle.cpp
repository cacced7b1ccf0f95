#include "attest/tpm_bundle.h"

#include <nlohmann/json.hpp>

namespace veil::attest::tpm {
namespace {

using json = nlohmann::json;

Result<Bytes> hex_field(const json& obj, const char* key, size_t max_bytes, std::string_view where) {
  auto it = obj.find(key);
  if (it == obj.end()) return make_error(ErrorCode::kCorrupt, "tpm evidence: {}{} is missing", where, key);
  if (!it->is_string()) return make_error(ErrorCode::kCorrupt, "tpm evidence: {}{} is not a string", where, key);
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > 2 * max_bytes) {
    return make_error(ErrorCode::kCorrupt, "tpm evidence: {}{} exceeds {} bytes", where, key, max_bytes);
  }
  auto b = from_hex(s);
  if (!b.ok()) return make_error(ErrorCode::kCorrupt, "tpm evidence: {}{}: {}", where, key, b.error().message());
  return std::move(*b);
}

}  // namespace

Bytes qualifying_data(const ReportData& report_data) {
  auto h = crypto::sha256(report_data);
  return Bytes(h.begin(), h.end());
}

Result<uint16_t> bank_from_name(std::string_view name) {
  if (name == "sha1") return kAlgSha1;
  if (name == "sha256") return kAlgSha256;
  if (name == "sha384") return kAlgSha384;
  if (name == "sha512") return kAlgSha512;
  return make_error(ErrorCode::kCorrupt, "tpm evidence: unknown PCR bank '{}'", name.substr(0, 16));
}

std::string bundle_to_json(const Bundle& b) {
  json j;
  j["format"] = kBundleFormat;
  j["report_data"] = to_hex(b.report_data);
  j["ak_public"] = to_hex(b.ak_public);
  if (b.ak_cert) j["ak_cert"] = to_hex(*b.ak_cert);
  j["quotes"] = json::array();
  for (const auto& q : b.quotes) j["quotes"].push_back({{"attest", to_hex(q.attest)}, {"signature", to_hex(q.signature)}});
  j["pcrs"] = json::object();
  for (const auto& [alg, bank] : b.pcrs) {
    json jb = json::object();
    for (const auto& [idx, v] : bank) jb[std::to_string(idx)] = to_hex(v);
    j["pcrs"][bank_name(alg)] = jb;
  }
  if (b.event_log) j["event_log"] = to_hex(*b.event_log);
  return j.dump();
}

Result<Bundle> bundle_from_json(std::string_view text) {
  if (text.size() > kMaxBundleSize) {
    return make_error(ErrorCode::kCorrupt, "tpm evidence: {} bytes exceeds the limit of {}", text.size(), kMaxBundleSize);
  }
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(ErrorCode::kCorrupt, "tpm evidence: not a JSON object");
  for (const auto& [key, _] : j.items()) {
    if (key != "format" && key != "report_data" && key != "ak_public" && key != "ak_cert" && key != "quotes" &&
        key != "pcrs" && key != "event_log") {
      return make_error(ErrorCode::kCorrupt, "tpm evidence: unknown field '{}'", key.substr(0, 32));
    }
  }
  auto fmt_it = j.find("format");
  if (fmt_it == j.end() || !fmt_it->is_string() || fmt_it->get<std::string>() != kBundleFormat) {
    return make_error(ErrorCode::kUnsupported, "tpm evidence: format is not \"{}\"", kBundleFormat);
  }
  Bundle b;
  VEIL_ASSIGN_OR_RETURN(Bytes rd, hex_field(j, "report_data", 64, ""));
  if (rd.size() != 64) return make_error(ErrorCode::kCorrupt, "tpm evidence: report_data has {} bytes, not 64", rd.size());
  std::copy(rd.begin(), rd.end(), b.report_data.begin());
  VEIL_ASSIGN_OR_RETURN(b.ak_public, hex_field(j, "ak_public", 2048, ""));
  if (j.contains("ak_cert")) {
    VEIL_ASSIGN_OR_RETURN(Bytes c, hex_field(j, "ak_cert", 16384, ""));
    b.ak_cert = std::move(c);
  }
  if (j.contains("event_log")) {
    VEIL_ASSIGN_OR_RETURN(Bytes l, hex_field(j, "event_log", kMaxEventLogSize, ""));
    b.event_log = std::move(l);
  }
  auto qs = j.find("quotes");
  if (qs == j.end() || !qs->is_array() || qs->empty() || qs->size() > 4) {
    return make_error(ErrorCode::kCorrupt, "tpm evidence: quotes must be an array of 1..4 quotes");
  }
  for (size_t i = 0; i < qs->size(); ++i) {
    const json& q = (*qs)[i];
    std::string where = fmt::format("quotes[{}].", i);
    if (!q.is_object() || q.size() != 2) {
      return make_error(ErrorCode::kCorrupt, "tpm evidence: {} must hold exactly attest and signature", where);
    }
    BundleQuote bq;
    VEIL_ASSIGN_OR_RETURN(bq.attest, hex_field(q, "attest", 4096, where));
    VEIL_ASSIGN_OR_RETURN(bq.signature, hex_field(q, "signature", 2048, where));
    b.quotes.push_back(std::move(bq));
  }
  auto ps = j.find("pcrs");
  if (ps == j.end() || !ps->is_object() || ps->empty() || ps->size() > 4) {
    return make_error(ErrorCode::kCorrupt, "tpm evidence: pcrs must be an object of 1..4 banks");
  }
  for (const auto& [name, bank] : ps->items()) {
    VEIL_ASSIGN_OR_RETURN(uint16_t alg, bank_from_name(name));
    if (!bank.is_object() || bank.size() > 32) {
      return make_error(ErrorCode::kCorrupt, "tpm evidence: pcrs.{} must be an object of at most 32 PCRs", name);
    }
    for (const auto& [idx_text, value] : bank.items()) {
      if (idx_text.empty() || idx_text.size() > 2 || idx_text.find_first_not_of("0123456789") != std::string::npos ||
          (idx_text.size() == 2 && idx_text[0] == '0') || std::stoul(idx_text) > 31) {
        return make_error(ErrorCode::kCorrupt, "tpm evidence: pcrs.{}: '{}' is not a PCR index 0..31", name,
                          idx_text.substr(0, 8));
      }
      json holder = {{"v", value}};
      VEIL_ASSIGN_OR_RETURN(Bytes v, hex_field(holder, "v", 64, fmt::format("pcrs.{}.{} ", name, idx_text)));
      b.pcrs[alg][static_cast<uint32_t>(std::stoul(idx_text))] = std::move(v);
    }
  }
  return b;
}

}  // namespace veil::attest::tpm
