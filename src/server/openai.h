// OpenAI-compatible request parsing and response rendering (docs/api.md). Transport-free, so the fuzz
// target (fuzz/openai_request_fuzz.cpp) exercises exactly what the server runs on untrusted bodies.
//
// Every field of a request body is validated before use; an invalid request yields kInvalidArgument whose
// message names the parameter and never echoes its value.
//
// Thread-safety: free functions, safe from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/backend.h"

namespace veil::server {

enum class Endpoint { kCompletions, kChatCompletions };

inline constexpr uint32_t kMaxStopStrings = 4;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr uint32_t kMaxTokensCap = 1u << 20;

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::string prompt;                 // completions
  std::vector<ChatMessage> messages;  // chat
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  std::optional<uint32_t> max_tokens; // absent: 16 for completions, the rest of the context for chat
  GenerationRequest generation;       // max_tokens filled in by the caller once the prompt is known
};

struct RequestError {
  std::string message;
  std::string param;  // the offending parameter, or empty
};

// Parses and validates a body. On failure returns the parameter at fault.
std::optional<ParsedRequest> parse_request(Endpoint endpoint, std::string_view body, RequestError& error);

// {"error": {"message", "type", "param", "code"}} with OpenAI's type names.
std::string error_body(int status, std::string_view message, std::string_view param = {},
                       std::string_view code = {});
const char* error_type_for_status(int status);

struct CompletionText {
  std::string id;
  std::string model;
  int64_t created = 0;
  std::string text;
  FinishReason finish = FinishReason::kStop;
  Usage usage;
};

// Non-streaming bodies.
std::string completion_body(Endpoint endpoint, const CompletionText& c);
// One SSE event "data: <json>\n\n" carrying a text delta (chat: the first carries role "assistant"), the
// finish reason (with empty text), or the usage (choices empty).
std::string stream_delta_event(Endpoint endpoint, const CompletionText& c, std::string_view delta, bool first);
std::string stream_finish_event(Endpoint endpoint, const CompletionText& c);
std::string stream_usage_event(Endpoint endpoint, const CompletionText& c);
std::string stream_error_event(std::string_view message);

// OpenAI finish_reason: "stop" or "length".
const char* openai_finish_reason(FinishReason reason);

}  // namespace veil::server
