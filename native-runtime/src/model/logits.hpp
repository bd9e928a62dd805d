#pragma once
// `lora-runtime logits`: the model's next-token logits for one token sequence, through the
// training forward (forward_hidden) and the LM head, so exporters and merged folders can be
// checked against the runtime itself rather than against a second implementation.
#include <cstdint>
#include <string>
#include <vector>

#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora {

// Parses "1,2,3" into token ids, each in [0, vocab). Throws InputError (field "--tokens")
// naming the offending entry.
std::vector<int32_t> parse_token_list(const std::string& text, int64_t vocab);

// Logits (positions x vocab, row-major, fp32) of `tokens` as one document (positions
// 0..n-1, causal). With only_last, just the last position's row. `lora` may be null.
std::vector<float> compute_logits(const Model& model, const LoraState* lora, const std::vector<int32_t>& tokens,
                                  bool only_last);

}  // namespace lora
