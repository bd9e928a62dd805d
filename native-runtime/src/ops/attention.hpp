#pragma once
// Causal self-attention with per-document masking over one packed row of T tokens:
// query t attends to keys j with doc_start[t] <= j <= t. Grouped-query: query head h uses
// key/value head h / (Hq / Hkv). Softmax scale 1/sqrt(D). The backward recomputes the
// probabilities from the saved log-sum-exp, so no (T x T) matrix per head is ever stored.
#include <cstdint>
namespace lora {
// q: (T, Hq, D), k, v: (T, Hkv, D) -> out: (T, Hq, D); lse: (Hq, T) saved for backward.
// doc_start: (T), the index in the row of the first token of token t's document: documents
// are contiguous, so doc_start is non-decreasing with doc_start[t] <= t (anything else, or
// Hq not a multiple of Hkv, throws std::invalid_argument).
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D);
// Writes (overwrites) dq: (T, Hq, D), dk, dv: (T, Hkv, D).
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, const float* q, const float* k, const float* v,
                        const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D);
}  // namespace lora
