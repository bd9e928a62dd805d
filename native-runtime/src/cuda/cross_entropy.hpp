#pragma once
// The LM head fused with cross-entropy, twin of the CPU's chunked head (model/forward.cpp +
// ops/cross_entropy): only the n target positions are scored, `chunk` of them at a time,
// so at most (chunk x V) fp32 logits exist. For each chunk: logits = x W^T (GEMM), then one
// kernel per row computes the loss and overwrites the logits with
// dlogits = scale * (softmax - onehot) in bf16, then dx = dlogits W (GEMM).
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

struct LmHeadWorkspace;  // opaque; grows to the largest chunk seen

struct LmHeadArgs {
  const bf16* x = nullptr;        // (n, C): the final-norm outputs of the target positions
  const int32_t* targets = nullptr;  // (n) target ids, all valid (0 <= id < V)
  const bf16* W = nullptr;        // (V, C) LM head (or the tied embedding)
  int64_t n = 0, C = 0, V = 0;
  float grad_scale = 1.f;         // d(loss)/d(summed loss) the caller wants in dx
  float* dx = nullptr;            // (n, C) fp32, overwritten; nullptr = loss only
  int64_t chunk = 1024;           // target rows per chunk
};

LmHeadWorkspace* lm_head_workspace_create();
void lm_head_workspace_destroy(LmHeadWorkspace* ws);

// Returns the summed -log p(target) over the n rows (fp64; synchronises the stream once).
double lm_head_cross_entropy(const LmHeadArgs& args, LmHeadWorkspace* ws, cudaStream_t stream);

// The per-row kernel alone (for the CPU-twin test): logits (n, V) fp32 -> loss per row (n)
// fp32 and dlogits (n, V) bf16 = scale * (softmax - onehot). dlogits may be nullptr.
void cross_entropy_rows(float* loss, bf16* dlogits, const float* logits, const int32_t* targets, int64_t n, int64_t V,
                        float scale, cudaStream_t stream);

}  // namespace lora::cuda
