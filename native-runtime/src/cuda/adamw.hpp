#pragma once
// The optimizer on the device, twin of ops/adamw: fp32 LoRA master weights, gradients and
// moments; plus the reductions the trainer needs for grad-norm clipping.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

// AdamW (decoupled weight decay, bias-corrected; step counts from 1), as ops/adamw_update.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int64_t step, cudaStream_t stream);
// p -= lr * (g + wd * p).
void sgd_update(float* param, const float* grad, int64_t n, float lr, float weight_decay, cudaStream_t stream);
// Sum of squares with fp64 accumulation; synchronises the stream to return it.
double sum_squares(const float* x, int64_t n, cudaStream_t stream);
void scale_inplace(float* x, int64_t n, float s, cudaStream_t stream);

}  // namespace lora::cuda
