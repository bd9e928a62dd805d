#pragma once
// Rotary position embedding (HF rotate_half layout: dimension i pairs with i + D/2), the twin
// of ops/rope. Angles in fp32: pos[t] * inv_freq[i], sin/cos computed per element.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

// In place on x: (T, H, D) bf16; pos: (T) int32; inv_freq: (D/2) fp32 (device).
void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
                  cudaStream_t stream);
// In place on dx: (T, H, D) bf16: the inverse rotation.
void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
                   cudaStream_t stream);

}  // namespace lora::cuda
