#pragma once
// RMSNorm (Llama) and LayerNorm (GPT-2), twins of ops/rmsnorm and ops/layernorm: statistics
// in fp32 over the fp32 residual stream, output in bf16 for the next GEMM.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

// y = x * rsqrt(mean(x^2) + eps) * w per row. x: (T, C) fp32; w: (C) fp32; y: (T, C) bf16;
// rstd: (T) fp32, saved for backward.
void rmsnorm_forward(bf16* y, float* rstd, const float* x, const float* w, int64_t T, int64_t C, float eps,
                     cudaStream_t stream);
// dx (T, C) fp32 += d/dx given dy (T, C) fp32. No gradient for the frozen w.
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* rstd, int64_t T,
                      int64_t C, cudaStream_t stream);

// y = (x - mean) * rstd * w + b per row (biased variance). mean, rstd: (T) fp32.
void layernorm_forward(bf16* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t T,
                       int64_t C, float eps, cudaStream_t stream);
// dx += d/dx (w and b frozen).
void layernorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t T, int64_t C, cudaStream_t stream);

}  // namespace lora::cuda
