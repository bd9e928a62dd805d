#pragma once
// Flash-style causal self-attention with per-document masking over packed rows, twin of
// ops/attention: query t of a row attends to keys j of the same row with
// doc_start[t] <= j <= t; grouped-query (query head h reads KV head h / (Hq / Hkv));
// softmax scale 1/sqrt(D). Tiles of queries and keys stream through shared memory with an
// online softmax, so no (T x T) matrix exists; backward recomputes the probabilities from
// the saved log-sum-exp. bf16 inputs and outputs, fp32 softmax and accumulation.
// Head dims up to 256 (multiples of 8) are supported; others throw std::invalid_argument.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

// rows packed rows of T tokens each. q: (rows*T, Hq, D), k, v: (rows*T, Hkv, D) ->
// out: (rows*T, Hq, D); lse: (rows, Hq, T) fp32. doc_start: (rows*T), index within its row.
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* doc_start, int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                       cudaStream_t stream);
// Writes (overwrites) dq: (rows*T, Hq, D), dk, dv: (rows*T, Hkv, D). `workspace` must hold
// attention_backward_workspace() bytes (fp32 accumulators).
// Whether the kernels serve head dim D (a multiple of 8 up to 256); the launchers throw
// std::invalid_argument for any other.
bool attention_supports_head_dim(int64_t D);
size_t attention_backward_workspace(int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D);
void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, int64_t rows,
                        int64_t T, int64_t Hq, int64_t Hkv, int64_t D, void* workspace, cudaStream_t stream);

}  // namespace lora::cuda
