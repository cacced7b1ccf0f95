#include "server/openai.h"

#include <cmath>
#include <nlohmann/json.hpp>

namespace veil::server {

using json = nlohmann::json;

namespace {

bool fail(RequestError& e, std::string message, std::string param) {
  e.message = std::move(message);
  e.param = std::move(param);
  return false;
}

bool is_valid_utf8(std::string_view s) {
  // nlohmann's parser already rejects invalid UTF-8 in strings; this guards values built otherwise.
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < s.size()) {
    uint8_t b = p[i];
    size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

bool get_number(const json& j, const char* name, double lo, double hi, std::optional<double>& out, RequestError& e) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return true;
  if (!it->is_number()) return fail(e, fmt::format("'{}' must be a number", name), name);
  double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    return fail(e, fmt::format("'{}' must be between {} and {}", name, lo, hi), name);
  }
  out = v;
  return true;
}

// Parameters that change the output and that Veil does not implement: refused unless at their default.
bool refuse_unsupported(const json& j, Endpoint endpoint, RequestError& e) {
  auto present = [&](const char* k) {
    auto it = j.find(k);
    return it != j.end() && !it->is_null();
  };
  if (present("logprobs")) {
    const json& v = j["logprobs"];
    bool off = (v.is_boolean() && !v.get<bool>()) || (v.is_number_integer() && v.get<int64_t>() == 0);
    if (!off) return fail(e, "logprobs are not supported", "logprobs");
  }
  if (present("top_logprobs")) return fail(e, "top_logprobs is not supported", "top_logprobs");
  if (present("n")) {
    const json& v = j["n"];
    if (!v.is_number_integer() || v.get<int64_t>() != 1) return fail(e, "only n = 1 is supported", "n");
  }
  if (present("best_of")) {
    const json& v = j["best_of"];
    if (!v.is_number_integer() || v.get<int64_t>() != 1) return fail(e, "only best_of = 1 is supported", "best_of");
  }
  if (present("echo")) {
    const json& v = j["echo"];
    if (!v.is_boolean() || v.get<bool>()) return fail(e, "echo is not supported", "echo");
  }
  if (present("suffix")) return fail(e, "suffix is not supported", "suffix");
  for (const char* k : {"tools", "functions", "tool_choice", "function_call", "response_format"}) {
    if (present(k)) return fail(e, fmt::format("'{}' is not supported", k), k);
  }
  if (present("logit_bias")) {
    const json& v = j["logit_bias"];
    if (!v.is_object() || !v.empty()) return fail(e, "logit_bias is not supported", "logit_bias");
  }
  for (const char* k : {"frequency_penalty", "presence_penalty"}) {
    if (present(k)) {
      const json& v = j[k];
      if (!v.is_number() || v.get<double>() != 0.0) return fail(e, fmt::format("'{}' is not supported", k), k);
    }
  }
  (void)endpoint;
  return true;
}

bool parse_content(const json& c, std::string& out, RequestError& e) {
  if (c.is_string()) {
    out = c.get<std::string>();
    return true;
  }
  if (c.is_array()) {  // [{"type": "text", "text": "..."}]
    for (const auto& part : c) {
      if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        return fail(e, "only text content parts are supported", "messages");
      }
      out += part["text"].get<std::string>();
    }
    return true;
  }
  return fail(e, "message content must be a string or an array of text parts", "messages");
}

}  // namespace

std::optional<ParsedRequest> parse_request(Endpoint endpoint, std::string_view body, RequestError& e) {
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    fail(e, "the request body is not valid JSON", "");
    return std::nullopt;
  }
  if (!j.is_object()) {
    fail(e, "the request body must be a JSON object", "");
    return std::nullopt;
  }
  ParsedRequest r;
  r.endpoint = endpoint;
  auto model = j.find("model");
  if (model == j.end() || !model->is_string() || model->get_ref<const std::string&>().empty() ||
      model->get_ref<const std::string&>().size() > 256) {
    fail(e, "'model' is required and must be a non-empty string", "model");
    return std::nullopt;
  }
  r.model = model->get<std::string>();
  if (!refuse_unsupported(j, endpoint, e)) return std::nullopt;

  if (endpoint == Endpoint::kCompletions) {
    auto p = j.find("prompt");
    if (p == j.end() || p->is_null()) {
      fail(e, "'prompt' is required", "prompt");
      return std::nullopt;
    }
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
      r.prompt = (*p)[0].get<std::string>();
    } else {
      fail(e, "'prompt' must be a string (batched or token-id prompts are not supported)", "prompt");
      return std::nullopt;
    }
  } else {
    auto m = j.find("messages");
    if (m == j.end() || !m->is_array() || m->empty()) {
      fail(e, "'messages' must be a non-empty array", "messages");
      return std::nullopt;
    }
    for (const auto& msg : *m) {
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string()) {
        fail(e, "each message needs a string 'role'", "messages");
        return std::nullopt;
      }
      ChatMessage cm;
      cm.role = msg["role"].get<std::string>();
      if (cm.role == "developer") cm.role = "system";
      if (cm.role != "system" && cm.role != "user" && cm.role != "assistant") {
        fail(e, "message roles must be system, developer, user or assistant", "messages");
        return std::nullopt;
      }
      auto c = msg.find("content");
      if (c == msg.end() || c->is_null()) {
        fail(e, "each message needs 'content'", "messages");
        return std::nullopt;
      }
      if (!parse_content(*c, cm.content, e)) return std::nullopt;
      r.messages.push_back(std::move(cm));
    }
  }

  if (auto s = j.find("stream"); s != j.end() && !s->is_null()) {
    if (!s->is_boolean()) {
      fail(e, "'stream' must be a boolean", "stream");
      return std::nullopt;
    }
    r.stream = s->get<bool>();
  }
  if (auto so = j.find("stream_options"); so != j.end() && !so->is_null()) {
    if (!so->is_object()) {
      fail(e, "'stream_options' must be an object", "stream_options");
      return std::nullopt;
    }
    if (auto iu = so->find("include_usage"); iu != so->end() && !iu->is_null()) {
      if (!iu->is_boolean()) {
        fail(e, "'stream_options.include_usage' must be a boolean", "stream_options");
        return std::nullopt;
      }
      r.include_usage = iu->get<bool>();
    }
  }
  for (const char* k : {"max_tokens", "max_completion_tokens"}) {
    auto it = j.find(k);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > kMaxTokensCap) {
      fail(e, fmt::format("'{}' must be an integer between 1 and {}", k, kMaxTokensCap), k);
      return std::nullopt;
    }
    r.max_tokens = static_cast<uint32_t>(it->get<int64_t>());
  }
  std::optional<double> temperature, top_p;
  if (!get_number(j, "temperature", 0.0, 2.0, temperature, e)) return std::nullopt;
  if (!get_number(j, "top_p", 0.0, 1.0, top_p, e)) return std::nullopt;
  if (top_p && *top_p <= 0.0) {
    fail(e, "'top_p' must be greater than 0", "top_p");
    return std::nullopt;
  }
  r.generation.sampling.temperature = temperature ? static_cast<float>(*temperature) : 1.0f;
  r.generation.sampling.top_p = top_p ? static_cast<float>(*top_p) : 1.0f;
  if (auto s = j.find("seed"); s != j.end() && !s->is_null()) {
    if (!s->is_number_integer()) {
      fail(e, "'seed' must be an integer", "seed");
      return std::nullopt;
    }
    r.generation.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>()
                                                         : static_cast<uint64_t>(s->get<int64_t>());
  }
  if (auto s = j.find("stop"); s != j.end() && !s->is_null()) {
    std::vector<std::string> stops;
    if (s->is_string()) {
      stops.push_back(s->get<std::string>());
    } else if (s->is_array() && s->size() <= kMaxStopStrings) {
      for (const auto& v : *s) {
        if (!v.is_string()) {
          fail(e, "'stop' must be a string or an array of strings", "stop");
          return std::nullopt;
        }
        stops.push_back(v.get<std::string>());
      }
    } else {
      fail(e, fmt::format("'stop' must be a string or an array of at most {} strings", kMaxStopStrings), "stop");
      return std::nullopt;
    }
    for (const auto& st : stops) {
      if (st.empty() || st.size() > kMaxStopBytes || !is_valid_utf8(st)) {
        fail(e, fmt::format("each stop string must be 1 to {} bytes of UTF-8", kMaxStopBytes), "stop");
        return std::nullopt;
      }
    }
    r.generation.stop = std::move(stops);
  }
  if (auto u = j.find("user"); u != j.end() && !u->is_null() && !u->is_string()) {
    fail(e, "'user' must be a string", "user");
    return std::nullopt;
  }
  return r;
}

const char* error_type_for_status(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "server_overloaded";
    default: return "server_error";
  }
}

std::string error_body(int status, std::string_view message, std::string_view param, std::string_view code) {
  json err = {{"message", message}, {"type", error_type_for_status(status)}};
  err["param"] = param.empty() ? json(nullptr) : json(param);
  err["code"] = code.empty() ? json(nullptr) : json(code);
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

const char* openai_finish_reason(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

namespace {
json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }
std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }
json base(Endpoint ep, const CompletionText& c, bool chunk) {
  const char* object = ep == Endpoint::kCompletions ? "text_completion"
                       : chunk                      ? "chat.completion.chunk"
                                                    : "chat.completion";
  return {{"id", c.id}, {"object", object}, {"created", c.created}, {"model", c.model},
          {"system_fingerprint", "veil"}};
}
}  // namespace

std::string completion_body(Endpoint ep, const CompletionText& c) {
  json j = base(ep, c, false);
  json choice = {{"index", 0}, {"finish_reason", openai_finish_reason(c.finish)}, {"logprobs", nullptr}};
  if (ep == Endpoint::kCompletions) {
    choice["text"] = c.text;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", c.text}};
  }
  j["choices"] = json::array({choice});
  j["usage"] = usage_json(c.usage);
  return dump(j);
}

std::string stream_delta_event(Endpoint ep, const CompletionText& c, std::string_view delta, bool first) {
  json j = base(ep, c, true);
  json choice = {{"index", 0}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
  if (ep == Endpoint::kCompletions) {
    choice["text"] = delta;
  } else {
    json d = {{"content", delta}};
    if (first) d["role"] = "assistant";
    choice["delta"] = d;
  }
  j["choices"] = json::array({choice});
  return sse(j);
}

std::string stream_finish_event(Endpoint ep, const CompletionText& c) {
  json j = base(ep, c, true);
  json choice = {{"index", 0}, {"finish_reason", openai_finish_reason(c.finish)}, {"logprobs", nullptr}};
  if (ep == Endpoint::kCompletions) {
    choice["text"] = "";
  } else {
    choice["delta"] = json::object();
  }
  j["choices"] = json::array({choice});
  return sse(j);
}

std::string stream_usage_event(Endpoint ep, const CompletionText& c) {
  json j = base(ep, c, true);
  j["choices"] = json::array();
  j["usage"] = usage_json(c.usage);
  return sse(j);
}

std::string stream_error_event(std::string_view message) {
  return "data: " + error_body(500, message) + "\n\n";
}

}  // namespace veil::server
