#pragma once
// Rotary position embedding in HF's rotate_half layout: dimension i pairs with i + D/2.
#include <cstdint>
#include <string>
#include "formats/model_config.hpp"
namespace lora {
// inv_freq: (D/2), including llama3 / linear rope_scaling as HF computes it.
void rope_inv_freq(float* inv_freq, int64_t D, double theta, const RopeScaling& scaling);
// In place on x: (T, H, D) with per-token positions pos: (T).
void rope_forward(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D);
// In place on dx: (T, H, D): the inverse rotation (the transpose of forward).
void rope_backward(float* dx, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D);
}  // namespace lora
