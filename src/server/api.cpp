#include "server/api.h"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "server/ratls.h"

namespace veil::server {

using json = nlohmann::json;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string new_completion_id(Endpoint ep) {
  return std::string(ep == Endpoint::kCompletions ? "cmpl-" : "chatcmpl-") + to_hex(crypto::random_bytes(12));
}

HttpResponseData json_response(int status, const json& j) {
  HttpResponseData r;
  r.status = status;
  r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

std::string_view bearer_token(std::string_view header) {
  constexpr std::string_view kPrefix = "Bearer ";
  if (header.size() <= kPrefix.size()) return {};
  for (size_t i = 0; i < kPrefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != std::tolower(static_cast<unsigned char>(kPrefix[i])))
      return {};
  }
  header.remove_prefix(kPrefix.size());
  while (!header.empty() && header.front() == ' ') header.remove_prefix(1);
  while (!header.empty() && header.back() == ' ') header.remove_suffix(1);
  return header;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

HttpResponseData Api::error(int status, std::string_view message, std::string_view param, std::string_view code) {
  HttpResponseData r;
  r.status = status;
  r.body = error_body(status, message, param, code);
  if (status == 429 || status == 503) r.headers.emplace_back("Retry-After", "1");
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

Api::Api(GenerationBackend& backend, Store& store, const SigningKeys& keys, attest::Provider& provider,
         crypto::Sha256Digest tls_spki_sha256, Metrics& metrics, ApiOptions options)
    : backend_(backend),
      store_(store),
      keys_(keys),
      provider_(provider),
      tls_spki_sha256_(tls_spki_sha256),
      metrics_(metrics),
      options_(options) {}

bool Api::take_rate_token(const ApiKeyInfo& key) {
  auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(buckets_mu_);
  auto [it, inserted] = buckets_.try_emplace(key.id);
  Bucket& b = it->second;
  if (inserted) {
    b.tokens = key.burst;
    b.last = now;
  }
  double elapsed = std::chrono::duration<double>(now - b.last).count();
  b.tokens = std::min<double>(key.burst, b.tokens + elapsed * key.requests_per_minute / 60.0);
  b.last = now;
  if (b.tokens < 1.0) return false;
  b.tokens -= 1.0;
  return true;
}

Api::Outcome Api::handle(HttpRequestData&& req) {
  Outcome out;
  std::string_view target = req.target;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query = path.size() < target.size() ? target.substr(path.size() + 1) : std::string_view{};
  auto respond = [&](std::string route, HttpResponseData r) {
    out.route = std::move(route);
    out.response = std::move(r);
    return std::move(out);
  };
  auto method_is = [&](const char* m) { return req.method == m; };

  // Public endpoints: no key, no content.
  if (path == "/health") {
    if (!method_is("GET")) return respond("health", error(405, "use GET"));
    if (draining()) return respond("health", json_response(503, {{"status", "draining"}}));
    return respond("health", json_response(200, {{"status", "ok"}}));
  }
  if (path == "/metrics") {
    if (!method_is("GET")) return respond("metrics", error(405, "use GET"));
    return respond("metrics", metrics_page());
  }
  if (path == "/v1/attestation") {
    if (!method_is("GET")) return respond("attestation", error(405, "use GET"));
    return respond("attestation", attestation(query));
  }
  constexpr std::string_view kSigPrefix = "/v1/signature/";
  if (path.substr(0, kSigPrefix.size()) == kSigPrefix) {
    if (!method_is("GET")) return respond("signature", error(405, "use GET"));
    return respond("signature", signature(path.substr(kSigPrefix.size())));
  }

  std::string route;
  std::optional<Endpoint> endpoint;
  if (path == "/v1/models") {
    route = "models";
  } else if (path == "/v1/completions") {
    route = "completions";
    endpoint = Endpoint::kCompletions;
  } else if (path == "/v1/chat/completions") {
    route = "chat_completions";
    endpoint = Endpoint::kChatCompletions;
  } else {
    return respond("unknown", error(404, "unknown endpoint", {}, "unknown_url"));
  }

  std::optional<ApiKeyInfo> key;
  if (options_.require_auth) {
    std::string_view presented = bearer_token(req.authorization);
    if (presented.empty()) {
      return respond(route, error(401, "missing API key: send 'Authorization: Bearer <key>'", {}, "invalid_api_key"));
    }
    auto k = store_.authenticate(presented);
    if (!k.ok()) {
      if (k.error().code() != ErrorCode::kSecurity) {
        spdlog::error("api: key lookup failed: {}", k.error().message());
        return respond(route, error(500, "the key store is unavailable"));
      }
      return respond(route, error(401, "invalid API key", {}, "invalid_api_key"));
    }
    key = std::move(k).value();
  }

  if (route == "models") {
    if (!method_is("GET")) return respond(route, error(405, "use GET"));
    return respond(route, models(key));
  }
  if (!method_is("POST")) return respond(route, error(405, "use POST"));
  if (key && !take_rate_token(*key)) {
    metrics_.rate_limited();
    return respond(route, error(429, "rate limit reached for this API key", {}, "rate_limit_exceeded"));
  }
  if (draining()) return respond(route, error(503, "the server is shutting down", {}, "shutting_down"));

  RequestError perr;
  auto parsed = parse_request(*endpoint, req.body, perr);
  if (!parsed) return respond(route, error(400, perr.message, perr.param, "invalid_request"));
  if (parsed->model != backend_.model_id() || (key && !key->allows_model(parsed->model))) {
    return respond(route, error(404, "the model does not exist or this key may not use it", "model", "model_not_found"));
  }
  auto ids = *endpoint == Endpoint::kCompletions ? backend_.tokenize_prompt(parsed->prompt)
                                                 : backend_.tokenize_chat(parsed->messages);
  if (!ids.ok()) return respond(route, error(400, ids.error().message(), "", "invalid_request"));
  uint32_t ctx = backend_.context_length();
  size_t n_prompt = ids->size();
  if (n_prompt >= ctx) {
    return respond(route, error(413, fmt::format("the prompt has {} tokens; the model's context holds {}", n_prompt, ctx),
                                *endpoint == Endpoint::kCompletions ? "prompt" : "messages",
                                "context_length_exceeded"));
  }
  uint32_t max_tokens;
  if (parsed->max_tokens) {
    max_tokens = *parsed->max_tokens;
    if (n_prompt + max_tokens > ctx) {
      return respond(route, error(413, fmt::format("prompt ({} tokens) plus max_tokens ({}) exceeds the context ({})",
                                                   n_prompt, max_tokens, ctx),
                                  "max_tokens", "context_length_exceeded"));
    }
  } else {
    max_tokens = *endpoint == Endpoint::kCompletions ? std::min<uint32_t>(16, ctx - static_cast<uint32_t>(n_prompt))
                                                     : ctx - static_cast<uint32_t>(n_prompt);
  }
  parsed->generation.max_tokens = max_tokens;
  parsed->generation.client_id = key ? key->id : "anonymous";
  auto digest = crypto::sha256(as_bytes(req.body));
  out.route = route;
  out.generation = std::make_unique<Generation>(*this, *endpoint, std::move(parsed).value(), std::move(ids).value(),
                                                digest, route);
  return out;
}

HttpResponseData Api::models(const std::optional<ApiKeyInfo>& key) {
  json data = json::array();
  if (!key || key->allows_model(backend_.model_id())) {
    data.push_back({{"id", backend_.model_id()}, {"object", "model"}, {"created", 0}, {"owned_by", "veil"}});
  }
  return json_response(200, {{"object", "list"}, {"data", data}});
}

HttpResponseData Api::attestation(std::string_view query) {
  std::string_view nonce_hex;
  while (!query.empty()) {
    std::string_view part = query.substr(0, query.find('&'));
    query.remove_prefix(std::min(query.size(), part.size() + 1));
    if (part.substr(0, 6) == "nonce=") nonce_hex = part.substr(6);
  }
  auto nonce = from_hex(nonce_hex);
  if (nonce_hex.empty() || !nonce.ok() || nonce->empty() || nonce->size() > 64) {
    return error(400, "'nonce' must be 1 to 64 bytes of hex", "nonce", "invalid_nonce");
  }
  attest::ReportData rd = report_data_binding(*nonce, tls_spki_sha256_, keys_);
  Result<attest::Evidence> ev = [&] {
    std::lock_guard<std::mutex> lock(provider_mu_);
    return provider_.quote(rd);
  }();
  if (!ev.ok()) {
    spdlog::error("api: attestation quote failed: {}", ev.error().message());
    return error(503, "the TEE could not produce evidence", {}, "attestation_unavailable");
  }
  HttpResponseData r;
  r.body = attestation_json(*ev, keys_, *nonce, tls_spki_sha256_);
  return r;
}

HttpResponseData Api::signature(std::string_view id) {
  bool ok = !id.empty() && id.size() <= 64;
  for (char c : id) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-');
  if (!ok) return error(404, "no signature for that completion id", {}, "signature_not_found");
  auto s = store_.get_signature(std::string(id));
  if (!s.ok()) {
    if (s.error().code() == ErrorCode::kNotFound) return error(404, "no signature for that completion id", {}, "signature_not_found");
    spdlog::error("api: signature lookup failed: {}", s.error().message());
    return error(500, "the signature store is unavailable");
  }
  json sigs = json::parse(s->signatures_json, nullptr, false);
  if (!sigs.is_array()) return error(500, "a stored signature is malformed");
  json j = {{"id", s->id}, {"text", s->text}, {"created", s->created}, {"signatures", sigs}};
  return json_response(200, j);
}

HttpResponseData Api::metrics_page() {
  auto st = backend_.stats();
  HttpResponseData r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = metrics_.render(st);
  return r;
}

// ---- Generation ----------------------------------------------------------------------------------

Generation::Generation(Api& api, Endpoint endpoint, ParsedRequest request, std::vector<int32_t> prompt,
                       crypto::Sha256Digest request_sha256, std::string route)
    : api_(api),
      endpoint_(endpoint),
      request_(std::move(request)),
      prompt_(std::move(prompt)),
      request_sha256_(request_sha256),
      route_(std::move(route)),
      started_(std::chrono::steady_clock::now()) {
  text_.id = new_completion_id(endpoint);
  text_.model = request_.model;
  text_.created = unix_now();
}

Generation::~Generation() {
  if (handle_ && !recorded_) handle_->cancel();
}

std::optional<HttpResponseData> Generation::start(EventSink sink) {
  size_t n_prompt = prompt_.size();
  auto h = api_.backend().submit(request_.generation, std::move(prompt_), std::move(sink));
  if (!h.ok()) {
    int status = h.error().code() == ErrorCode::kResourceExhausted ? 503
                 : h.error().code() == ErrorCode::kUnavailable     ? 503
                                                                   : 400;
    auto r = status == 503 ? Api::error(503, "the server is overloaded; retry later", {}, "overloaded")
                           : Api::error(400, h.error().message(), {}, "invalid_request");
    record(status);
    spdlog::info("request {} route={} status={} prompt_tokens={}", text_.id, route_, status, n_prompt);
    return r;
  }
  handle_ = std::move(h).value();
  return std::nullopt;
}

void Generation::cancel() {
  if (handle_) handle_->cancel();
}

void Generation::pause(bool paused) {
  if (handle_) handle_->set_paused(paused);
}

void Generation::record(int status) {
  if (recorded_) return;
  recorded_ = true;
  api_.metrics().request_done(route_, status, seconds_since(started_));
}

Status Generation::sign_and_store(const crypto::Sha256Digest& response_sha256, const char* kind) {
  CompletionRecord rec;
  rec.id = text_.id;
  rec.model = text_.model;
  rec.created = text_.created;
  rec.response_kind = kind;
  rec.request_sha256 = request_sha256_;
  rec.response_sha256 = response_sha256;
  std::string text = signed_text(rec);
  VEIL_ASSIGN_OR_RETURN(auto sigs, sign_text(api_.keys(), text));
  json arr = json::array();
  for (const auto& s : sigs) arr.push_back({{"algorithm", s.algorithm}, {"public_key", s.public_key}, {"signature", s.signature}});
  StoredSignature stored{text_.id, text, arr.dump(), text_.created};
  return api_.store().put_signature(stored);
}

Generation::Output Generation::on_event(GenerationEvent&& ev) {
  Output out;
  if (!ev.text.empty()) {
    if (!first_token_seen_) {
      first_token_seen_ = true;
      api_.metrics().time_to_first_token(seconds_since(started_));
    }
    if (request_.stream) {
      std::string e = stream_delta_event(endpoint_, text_, ev.text, first_delta_);
      first_delta_ = false;
      chain_.update(e);
      out.bytes += e;
    } else {
      text_.text += ev.text;
    }
  }
  if (ev.finish == FinishReason::kNone) return out;
  out.done = true;
  text_.usage = ev.usage;
  text_.finish = ev.finish;
  api_.metrics().tokens(ev.usage.prompt_tokens, ev.usage.completion_tokens);
  int status = 200;
  if (ev.finish == FinishReason::kStop || ev.finish == FinishReason::kLength) {
    if (request_.stream) {
      std::string fin = stream_finish_event(endpoint_, text_);
      chain_.update(fin);
      out.bytes += fin;
      if (request_.include_usage) {
        std::string u = stream_usage_event(endpoint_, text_);
        chain_.update(u);
        out.bytes += u;
      }
      Status st = sign_and_store(chain_.value(), "sse-chain");
      if (!st.ok()) {
        spdlog::error("request {}: signing failed: {}", text_.id, st.error().message());
        out.bytes += stream_error_event("the response could not be signed");
        status = 500;
      } else {
        out.bytes += "data: [DONE]\n\n";
      }
    } else {
      std::string body = completion_body(endpoint_, text_);
      Status st = sign_and_store(crypto::sha256(as_bytes(body)), "json");
      if (!st.ok()) {
        spdlog::error("request {}: signing failed: {}", text_.id, st.error().message());
        body = error_body(500, "the response could not be signed");
        status = 500;
      }
      out.bytes = std::move(body);
    }
  } else {
    bool cancelled = ev.finish == FinishReason::kCancelled;
    status = cancelled ? 503 : 500;
    std::string msg = cancelled          ? "the request was cancelled (client gone or server shutting down)"
                      : ev.error.empty() ? "inference failed"
                                         : ev.error;  // content-free (backend.h), e.g. the failed pipeline stage
    out.bytes = request_.stream ? stream_error_event(msg) : error_body(status, msg);
    if (cancelled) status = request_.stream ? 499 : 503;
  }
  out.status = status;
  record(status);
  spdlog::info("request {} route={} status={} prompt_tokens={} completion_tokens={} ms={:.1f}", text_.id, route_,
               status, ev.usage.prompt_tokens, ev.usage.completion_tokens, seconds_since(started_) * 1000);
  return out;
}

}  // namespace veil::server
