#pragma once
// Elementwise MLP activations, twins of ops/swiglu and ops/gelu; bf16 in and out, fp32 math.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

// h = silu(g) * u over n values.
void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream);
// Writes dg, du from dh (may not alias g/u).
void swiglu_backward(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u, int64_t n,
                     cudaStream_t stream);

// h = gelu_tanh(x) (HF gelu_new); h may alias x.
void gelu_forward(bf16* h, const bf16* x, int64_t n, cudaStream_t stream);
// dx = dh * gelu'(x); dx may alias dh.
void gelu_backward(bf16* dx, const bf16* dh, const bf16* x, int64_t n, cudaStream_t stream);

}  // namespace lora::cuda
