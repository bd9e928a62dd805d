#pragma once
#include <cstdint>
namespace lora {
// h = silu(g) * u, elementwise over n values.
void swiglu_forward(float* h, const float* g, const float* u, int64_t n);
// Writes (overwrites) dg, du from dh.
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);
}  // namespace lora
