// Chat templates, recognised by distinctive substrings of tokenizer.chat_template (not a Jinja engine).
#include <string>

#include "tokenizer/tokenizer.h"

namespace veil::tokenizer {

namespace {

bool has(std::string_view s, std::string_view needle) { return s.find(needle) != std::string_view::npos; }

std::string_view trim(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return s;
}

// Builds the prompt while recording which byte ranges come from the template.
struct Builder {
  std::string out;
  std::vector<TextRange>* ranges;
  void tmpl(std::string_view s) {
    if (s.empty()) return;
    if (ranges) {
      if (!ranges->empty() && ranges->back().offset + ranges->back().length == out.size())
        ranges->back().length += s.size();
      else
        ranges->push_back({out.size(), s.size()});
    }
    out += s;
  }
  void content(std::string_view s) { out += s; }
};

}  // namespace

Result<ChatFormat> detect_chat_format(std::string_view t) {
  if (t.empty()) return ChatFormat::kChatml;  // documented fallback: no template in the metadata
  if (has(t, "<|im_start|>")) return ChatFormat::kChatml;
  if (has(t, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (has(t, "<start_of_turn>")) return ChatFormat::kGemma;
  if (has(t, "<|user|>") && has(t, "<|end|>")) return ChatFormat::kPhi3;
  if (has(t, "<|user|>") && (has(t, "eos_token") || has(t, "</s>"))) return ChatFormat::kZephyr;
  if (has(t, "[INST]")) return ChatFormat::kLlama2;
  return make_error(ErrorCode::kUnsupported,
                    "chat template: tokenizer.chat_template ({} bytes) matches no known format (chatml, llama2, "
                    "llama3, phi3, zephyr, gemma); pass a format explicitly",
                    t.size());
}

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatml: return "chatml";
    case ChatFormat::kLlama2: return "llama2";
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kPhi3: return "phi3";
    case ChatFormat::kZephyr: return "zephyr";
    case ChatFormat::kGemma: return "gemma";
  }
  return "unknown";
}

Result<ChatFormat> parse_chat_format(std::string_view name) {
  for (ChatFormat f : {ChatFormat::kChatml, ChatFormat::kLlama2, ChatFormat::kLlama3, ChatFormat::kPhi3,
                       ChatFormat::kZephyr, ChatFormat::kGemma}) {
    if (name == chat_format_name(f)) return f;
  }
  if (name == "llama-2") return ChatFormat::kLlama2;
  if (name == "llama-3") return ChatFormat::kLlama3;
  if (name == "phi-3") return ChatFormat::kPhi3;
  return make_error(ErrorCode::kInvalidArgument,
                    "chat format '{}' is unknown (chatml, llama2, llama3, phi3, zephyr, gemma)", name.substr(0, 32));
}

Result<std::string> format_chat(ChatFormat format, std::span<const ChatMessage> messages, bool add_generation_prompt,
                                std::string_view bos, std::string_view eos, std::vector<TextRange>* template_ranges) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant")
      return make_error(ErrorCode::kInvalidArgument,
                        "chat: messages[{}].role must be system, user or assistant ({} bytes given)", i, r.size());
  }
  if (template_ranges) template_ranges->clear();
  Builder b{{}, template_ranges};
  switch (format) {
    case ChatFormat::kChatml:
      for (const ChatMessage& m : messages) {
        b.tmpl("<|im_start|>" + m.role + "\n");
        b.content(m.content);
        b.tmpl("<|im_end|>\n");
      }
      if (add_generation_prompt) b.tmpl("<|im_start|>assistant\n");
      break;
    case ChatFormat::kLlama3:
      b.tmpl(bos);
      for (const ChatMessage& m : messages) {
        b.tmpl("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        b.content(trim(m.content));
        b.tmpl("<|eot_id|>");
      }
      if (add_generation_prompt) b.tmpl("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    case ChatFormat::kLlama2: {
      // <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
      std::string_view system;
      size_t i = 0;
      if (!messages.empty() && messages[0].role == "system") {
        system = trim(messages[0].content);
        i = 1;
      }
      bool first_user = true;
      for (; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          b.tmpl(bos);
          b.tmpl("[INST] ");
          if (first_user && !system.empty()) {
            b.tmpl("<<SYS>>\n");
            b.content(system);
            b.tmpl("\n<</SYS>>\n\n");
          }
          first_user = false;
          b.content(trim(m.content));
          b.tmpl(" [/INST]");
        } else if (m.role == "assistant") {
          b.tmpl(" ");
          b.content(trim(m.content));
          b.tmpl(" ");
          b.tmpl(eos);
        } else {
          return make_error(ErrorCode::kInvalidArgument, "chat: llama2 format: messages[{}]: a system message is only "
                            "allowed first", i);
        }
      }
      break;
    }
    case ChatFormat::kPhi3:
      b.tmpl(bos);
      for (const ChatMessage& m : messages) {
        b.tmpl("<|" + m.role + "|>\n");
        b.content(m.content);
        b.tmpl("<|end|>\n");
      }
      if (add_generation_prompt) b.tmpl("<|assistant|>\n");
      break;
    case ChatFormat::kZephyr:
      for (const ChatMessage& m : messages) {
        b.tmpl("<|" + m.role + "|>\n");
        b.content(m.content);
        b.tmpl(eos);
        b.tmpl("\n");
      }
      if (add_generation_prompt) b.tmpl("<|assistant|>\n");
      break;
    case ChatFormat::kGemma: {
      b.tmpl(bos);
      std::string_view system;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {  // Gemma has no system role: prefix the next user turn
          system = m.content;
          continue;
        }
        b.tmpl(m.role == "assistant" ? "<start_of_turn>model\n" : "<start_of_turn>user\n");
        if (!system.empty() && m.role == "user") {
          b.content(trim(system));
          b.tmpl("\n\n");
          system = {};
        }
        b.content(trim(m.content));
        b.tmpl("<end_of_turn>\n");
      }
      if (add_generation_prompt) b.tmpl("<start_of_turn>model\n");
      break;
    }
  }
  return std::move(b.out);
}

namespace {

Result<std::string> render(const Tokenizer& tok, std::span<const ChatMessage> messages, bool add_generation_prompt,
                           const ChatFormat* format, std::vector<TextRange>* ranges) {
  ChatFormat f;
  if (format) {
    f = *format;
  } else {
    VEIL_ASSIGN_OR_RETURN(f, detect_chat_format(tok.chat_template()));
  }
  std::string bos(tok.bos() >= 0 ? tok.token_text(tok.bos()) : std::string_view());
  std::string eos(tok.eos() >= 0 ? tok.token_text(tok.eos()) : std::string_view());
  if (f == ChatFormat::kChatml) bos.clear();
  return format_chat(f, messages, add_generation_prompt, bos, eos, ranges);
}

}  // namespace

Result<std::string> apply_chat_template(const Tokenizer& tok, std::span<const ChatMessage> messages,
                                        bool add_generation_prompt) {
  return render(tok, messages, add_generation_prompt, nullptr, nullptr);
}

Result<std::vector<TokenId>> encode_chat(const Tokenizer& tok, std::span<const ChatMessage> messages,
                                         bool add_generation_prompt, const ChatFormat* format) {
  std::vector<TextRange> ranges;
  VEIL_ASSIGN_OR_RETURN(std::string text, render(tok, messages, add_generation_prompt, format, &ranges));
  EncodeOptions opt;
  opt.add_special = false;
  opt.parse_special = true;
  opt.special_ranges = ranges;
  if (ranges.empty()) opt.parse_special = false;  // no template text at all: nothing may become a control token
  std::vector<TokenId> ids = tok.encode(text, opt);
  // ChatML writes no BOS; a vocabulary that wants one (e.g. a llama model without a template) still gets it.
  ChatFormat f = ChatFormat::kChatml;
  if (format) f = *format;
  else if (auto d = detect_chat_format(tok.chat_template()); d.ok()) f = *d;
  if (f == ChatFormat::kChatml && tok.add_bos() && tok.bos() >= 0) ids.insert(ids.begin(), tok.bos());
  return ids;
}

}  // namespace veil::tokenizer
