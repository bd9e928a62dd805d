#pragma once
// LayerNorm with an affine weight and bias, as torch.nn.LayerNorm (GPT-2's ln_1, ln_2, ln_f),
// computed in fp32 with double accumulation of the statistics.
#include <cstdint>
namespace lora {
// y = (x - mean(x)) * rstd * w + b per row, rstd = 1 / sqrt(var(x) + eps) (biased variance).
// x, y: (T, C); w, b: (C); mean_out, rstd_out: (T) saved for backward.
void layernorm_forward(float* y, float* mean_out, float* rstd_out, const float* x, const float* w, const float* b,
                       int64_t T, int64_t C, float eps);
// dx += d/dx (w and b are frozen: no gradient for them). dy, x: (T, C); mean, rstd: (T).
void layernorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t T, int64_t C);
}  // namespace lora
