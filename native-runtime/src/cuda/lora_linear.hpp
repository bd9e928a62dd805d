#pragma once
// A frozen base linear with a LoRA adapter on the device, twin of ops/linear:
//   y = x W0^T + b + scale * (drop(x) A^T) B^T
// W0 is the bf16 weight view (dequantized just before, see dequant.hpp). A, B are bf16
// copies of the fp32 master weights, refreshed after every optimizer step; their gradients
// accumulate in fp32.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

struct DeviceLora {
  const bf16* A = nullptr;   // (r, in), nullptr = no adapter on this module
  const bf16* B = nullptr;   // (out, r)
  float* dA = nullptr;       // (r, in) fp32 gradient, accumulated (+=)
  float* dB = nullptr;       // (out, r)
  int64_t r = 0;
  float scale = 0.f;
  float dropout = 0.f;
  uint64_t dropout_key = 0;  // rng stream of this (step, micro, layer, module), as the CPU's
};

struct LinearForward {
  const bf16* x = nullptr;   // (T, in)
  const bf16* W = nullptr;   // (out, in)
  const float* bias = nullptr;  // (out) or nullptr
  int64_t T = 0, in = 0, out = 0;
  // Output: exactly one of y_bf16 (overwritten) or y_f32 (accumulated: y += x W^T ...,
  // used to add o_proj / down_proj straight into the fp32 residual stream).
  bf16* y_bf16 = nullptr;
  float* y_f32 = nullptr;
  // Saved for backward when the adapter is present: h = drop(x) (T, in) bf16 (only when
  // dropout > 0; else x is used), u = h A^T (T, r) bf16.
  bf16* h = nullptr;
  bf16* u = nullptr;
};
void lora_linear_forward(const LinearForward& f, const DeviceLora& lora, cudaStream_t stream);

struct LinearBackward {
  const bf16* dy = nullptr;  // (T, out)
  const bf16* W = nullptr;   // (out, in); read only when dx is requested
  const bf16* x = nullptr;   // (T, in) the forward input (used as h when dropout == 0)
  const bf16* h = nullptr;   // (T, in) saved drop(x) when dropout > 0
  const bf16* u = nullptr;   // (T, r)
  int64_t T = 0, in = 0, out = 0;
  float* dx = nullptr;       // (T, in) fp32, accumulated (+=); nullptr = not needed
  // Scratch: du (T, r) bf16; dh (T, in) fp32 only when dropout > 0.
  bf16* du = nullptr;
  float* dh = nullptr;
};
void lora_linear_backward(const LinearBackward& b, const DeviceLora& lora, cudaStream_t stream);

}  // namespace lora::cuda
