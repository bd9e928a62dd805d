#include "model/logits.hpp"

#include <cerrno>
#include <cstdlib>

#include "common/errors.hpp"
#include "model/forward.hpp"
#include "ops/matmul.hpp"

namespace lora {

std::vector<int32_t> parse_token_list(const std::string& text, int64_t vocab) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (true) {
    const size_t comma = text.find(',', i);
    const std::string item = text.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
    const std::string where = "entry " + std::to_string(out.size() + 1) + " (\"" + item + "\")";
    char* end = nullptr;
    errno = 0;
    const long long v = item.empty() ? -1 : std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end || errno == ERANGE || item[0] == '+' || item[0] == ' ')
      throw InputError("usage", "--tokens " + where + " is not a token id", "", "--tokens", 0,
                       "give comma-separated integer token ids, e.g. --tokens 1,15043,29892.");
    if (v < 0 || v >= vocab)
      throw InputError("token_range", "--tokens " + where + " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")",
                       "", "--tokens", 0, "token ids must come from this model's tokenizer.");
    out.push_back(static_cast<int32_t>(v));
    if (comma == std::string::npos) break;
    i = comma + 1;
  }
  return out;
}

std::vector<float> compute_logits(const Model& model, const LoraState* lora, const std::vector<int32_t>& tokens,
                                  bool only_last) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  Batch b;
  b.rows = 1;
  b.seq_len = n;
  b.tokens = tokens;
  b.targets.assign(n, -1);
  b.pos.resize(n);
  for (int64_t t = 0; t < n; ++t) b.pos[t] = static_cast<int32_t>(t);
  b.doc_start.assign(n, 0);
  Workspace ws;
  std::vector<float> hidden;  // (n, C)
  forward_hidden(model, lora, b, ws, hidden);
  const int64_t C = model.cfg.hidden_size, V = model.cfg.vocab_size;
  const int64_t first = only_last ? n - 1 : 0, rows = n - first;
  std::vector<float> logits(static_cast<size_t>(rows * V));
  // logits: (rows, V) = hidden[first:] (rows, C) . lm_head (V, C)^T
  matmul_nt(logits.data(), hidden.data() + first * C, model.lm_head_weight(), rows, V, C);
  return logits;
}

}  // namespace lora
