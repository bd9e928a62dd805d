#pragma once
// GELU, tanh approximation: HF's "gelu_new" / "gelu_pytorch_tanh" (GPT-2's MLP activation):
//   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#include <cstdint>
namespace lora {
// h = gelu(x), elementwise over n values. h may alias x.
void gelu_forward(float* h, const float* x, int64_t n);
// Writes (overwrites) dx = dh * gelu'(x). dx may alias dh.
void gelu_backward(float* dx, const float* dh, const float* x, int64_t n);
}  // namespace lora
