#pragma once
// A linear layer with an optional LoRA adapter, on a frozen base weight:
//   y = x W0^T + b + scale * (drop(x) A^T) B^T          scale = alpha / r (rsLoRA: alpha / sqrt(r))
// W0 is given dequantized (fp32, [out, in]); no gradient flows to W0 or b.
#include <cstdint>

namespace lora {

struct LoraParams {
  const float* A = nullptr;   // [r, in]
  const float* B = nullptr;   // [out, r]
  int64_t r = 0;
  float scale = 0.f;
  float dropout = 0.f;        // probability of zeroing an input element of the LoRA path
};

// x: (T, in) -> y: (T, out).
// When lora.A != nullptr:
//   keep_mask: (T, in) bytes, 1 = kept (scaled by 1/(1-p)), 0 = dropped; nullptr = no dropout.
//   h_out: (T, in) the dropped-out input drop(x) (may alias nothing; required for backward
//          when dropout > 0, else may be nullptr and x is used instead).
//   u_out: (T, r) = drop(x) A^T, kept for backward.
void linear_forward(float* y, const float* x, const float* W0, const float* bias,
                    const LoraParams& lora, const uint8_t* keep_mask, float* h_out, float* u_out,
                    int64_t T, int64_t in, int64_t out);

// dy: (T, out). Accumulates into dx (T, in) (dx += ...), and writes (accumulates into) the
// LoRA gradients dA: (r, in), dB: (out, r) when lora.A != nullptr. Any of dx, dA, dB may be
// nullptr when that gradient is not needed (e.g. dx of the first layer).
// h: the dropped-out input saved by forward (or x when there is no dropout); u: (T, r).
void linear_backward(float* dx, float* dA, float* dB, const float* dy, const float* W0,
                     const LoraParams& lora, const uint8_t* keep_mask, const float* h,
                     const float* u, int64_t T, int64_t in, int64_t out);

// Dropout keep mask for the LoRA input, from a counter-based RNG so it can be regenerated
// exactly (recomputation under activation checkpointing, resume): depends only on `key`.
void dropout_mask(uint8_t* keep_mask, int64_t n, float p, uint64_t key);

}  // namespace lora
