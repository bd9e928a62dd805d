#pragma once
#include <cstdint>
namespace lora {
// y = x * rsqrt(mean(x^2) + eps) * w, per row (as HF LlamaRMSNorm, computed in fp32).
// x, y: (T, C); w: (C); rstd_out: (T) saved for backward.
void rmsnorm_forward(float* y, float* rstd_out, const float* x, const float* w, int64_t T,
                     int64_t C, float eps);
// dx += d/dx (no gradient for the frozen w). dy, x: (T, C); rstd: (T).
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t T, int64_t C);
}  // namespace lora
