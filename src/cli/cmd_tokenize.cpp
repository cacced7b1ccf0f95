// veil tokenize: text -> token ids with a model's vocabulary (docs/tokenizer.md).
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace veil::cli {
namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  bool ids_only = false;
  bool no_special = false;
  bool parse_special = false;
};

// Printable form of a piece for the table output: control bytes and non-UTF-8 escaped.
std::string escape_piece(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", c);
    else out.push_back(static_cast<char>(c));
  }
  return out;
}

Status run_tokenize(const TokenizeArgs& a) {
  VEIL_ASSIGN_OR_RETURN(auto path, resolve_model_path(a.model));
  if (path.extension() == ".vsm")
    return make_error(ErrorCode::kUnsupported,
                      "tokenize: {}: a sealed model can only be opened inside the TEE (veil serve); use its "
                      "plaintext GGUF or a vocabulary GGUF",
                      path.string());
  VEIL_ASSIGN_OR_RETURN(auto file, gguf::File::open(path));
  VEIL_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::from_gguf(file));
  tokenizer::EncodeOptions opt;
  opt.add_special = !a.no_special;
  opt.parse_special = a.parse_special;
  std::vector<tokenizer::TokenId> ids = tok.encode(a.text, opt);
  std::string out;
  if (a.ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) out += fmt::format("{}{}", i ? " " : "", ids[i]);
    out += "\n";
  } else {
    for (tokenizer::TokenId id : ids)
      out += fmt::format("{:>7} '{}'\n", id, escape_piece(tok.token_to_piece(id, /*special=*/true)));
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return ok_status();
}

void setup_tokenize(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* sub = app.add_subcommand("tokenize", "Print the token ids of TEXT under a model's vocabulary");
  add_model_option(sub, args->model);
  sub->add_flag("--ids", args->ids_only, "Print only the ids, space-separated on one line");
  sub->add_flag("--no-special", args->no_special, "Do not add BOS/EOS ([CLS]/[SEP]) as the metadata asks");
  sub->add_flag("--parse-special", args->parse_special,
                "Turn control-token text such as <|im_start|> in TEXT into the control tokens");
  sub->add_option("text", args->text, "The text to tokenize")->required();
  runner.on(sub, [args]() { return run_tokenize(*args); });
}

VEIL_COMMAND(setup_tokenize, 40);

}  // namespace
}  // namespace veil::cli
