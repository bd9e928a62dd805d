#pragma once
#include <cstdint>
namespace lora {
// AdamW (decoupled weight decay), fp32 states, bias-corrected; `step` counts from 1.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t step);
// Plain SGD with decoupled weight decay: p -= lr * (g + wd * p).
void sgd_update(float* param, const float* grad, int64_t n, float lr, float weight_decay);
// Sum of squares (double accumulation) for global grad-norm clipping.
double sum_squares(const float* x, int64_t n);
void scale_inplace(float* x, int64_t n, float s);
}  // namespace lora
