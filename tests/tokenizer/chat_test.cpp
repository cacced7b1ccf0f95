#include <gtest/gtest.h>

#include <filesystem>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace veil::tokenizer {
namespace {

const std::vector<ChatMessage> kChat = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Who are you?"}};

TEST(ChatFormat, DetectedFromDistinctiveSubstrings) {
  EXPECT_EQ(*detect_chat_format(""), ChatFormat::kChatml);  // no template at all: documented fallback
  EXPECT_EQ(*detect_chat_format("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n'}}"), ChatFormat::kChatml);
  EXPECT_EQ(*detect_chat_format("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"),
            ChatFormat::kLlama3);
  EXPECT_EQ(*detect_chat_format("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"), ChatFormat::kLlama2);
  EXPECT_EQ(*detect_chat_format("{{'<|user|>' + '\\n' + message['content'] + '<|end|>'}}"), ChatFormat::kPhi3);
  EXPECT_EQ(*detect_chat_format("{{ '<|user|>\\n' + message['content'] + eos_token }}"), ChatFormat::kZephyr);
  EXPECT_EQ(*detect_chat_format("{{ '<start_of_turn>' + role + '\\n' }}"), ChatFormat::kGemma);
  auto unknown = detect_chat_format("{% for m in messages %}{{ m.content }}{% endfor %}");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(unknown.error().message().find("tokenizer.chat_template"), std::string::npos);
  EXPECT_EQ(*parse_chat_format("llama3"), ChatFormat::kLlama3);
  EXPECT_FALSE(parse_chat_format("jinja").ok());
}

TEST(ChatFormat, RendersEachFormat) {
  EXPECT_EQ(*format_chat(ChatFormat::kChatml, kChat, true, "", ""),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(*format_chat(ChatFormat::kLlama3, kChat, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
            "\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(*format_chat(ChatFormat::kLlama2, kChat, true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Who are you? [/INST]");
  EXPECT_EQ(*format_chat(ChatFormat::kPhi3, kChat, true, "<s>", "<|endoftext|>"),
            "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\n"
            "Who are you?<|end|>\n<|assistant|>\n");
  EXPECT_EQ(*format_chat(ChatFormat::kZephyr, kChat, false, "<s>", "</s>"),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n<|user|>\nWho are you?</s>\n");
  EXPECT_EQ(*format_chat(ChatFormat::kGemma, kChat, true, "<bos>", "<eos>"),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\n");
  std::vector<ChatMessage> bad = {{"tool", "x"}};
  auto r = format_chat(ChatFormat::kChatml, bad, true, "", "");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
}

TEST(ChatTemplate, Phi3VocabularyTemplateAndInjectionSafety) {
  auto file =
      gguf::File::open(std::filesystem::path(VEIL_SHARED_DIR) / "testdata/tokenizer/ggml-vocab-phi-3.gguf");
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(*detect_chat_format(tok->chat_template()), ChatFormat::kPhi3);
  std::vector<ChatMessage> msgs = {{"user", "Say <|end|> please"}};
  auto text = apply_chat_template(*tok, msgs, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s><|user|>\nSay <|end|> please<|end|>\n<|assistant|>\n");
  auto ids = encode_chat(*tok, msgs, true);
  ASSERT_TRUE(ids.ok()) << ids.error().message();
  const TokenId user = tok->find("<|user|>"), end = tok->find("<|end|>"), assistant = tok->find("<|assistant|>");
  ASSERT_EQ(user, 32010);
  ASSERT_EQ(end, 32007);
  EXPECT_EQ(ids->front(), tok->bos());
  EXPECT_EQ((*ids)[1], user);
  // Exactly one <|end|> control token: the one the template wrote, not the one the user typed.
  EXPECT_EQ(std::count(ids->begin(), ids->end(), end), 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), assistant), 1);
  // The whole-string path (trusted text only) does turn the typed one into a control token.
  auto unsafe = tok->encode(*text, {.add_special = false, .parse_special = true});
  EXPECT_EQ(std::count(unsafe.begin(), unsafe.end(), end), 2);
  EXPECT_TRUE(tok->is_eog(end));
  EXPECT_TRUE(tok->is_eog(tok->eos()));
}

TEST(ChatTemplate, ChatmlFallbackWhenNoTemplateKeepsBos) {
  auto file = gguf::File::open(std::filesystem::path(VEIL_SHARED_DIR) / "models/stories260K/stories260K.gguf");
  ASSERT_TRUE(file.ok());
  auto tok = Tokenizer::from_gguf(*file);
  ASSERT_TRUE(tok.ok());
  EXPECT_TRUE(tok->chat_template().empty());
  std::vector<ChatMessage> msgs = {{"user", "Hi"}};
  auto text = apply_chat_template(*tok, msgs, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto ids = encode_chat(*tok, msgs, true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), 1);
}

}  // namespace
}  // namespace veil::tokenizer
