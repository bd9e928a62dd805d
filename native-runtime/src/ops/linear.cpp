#include "ops/linear.hpp"

#include <cstring>
#include <vector>

#include "common/rng.hpp"
#include "common/threadpool.hpp"
#include "ops/elementwise.hpp"
#include "ops/matmul.hpp"

namespace lora {

namespace {

// Scratch for callers that pass no buffer for an intermediate (inference, evaluation).
// Per calling thread, so concurrent layers on different threads never share it.
float* scratch(std::vector<float>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}
thread_local std::vector<float> t_h;
thread_local std::vector<float> t_u;
thread_local std::vector<float> t_du;
thread_local std::vector<float> t_dh;

float keep_scale(float p) { return p > 0.f ? 1.0f / (1.0f - p) : 1.0f; }

}  // namespace

void dropout_mask(uint8_t* keep_mask, int64_t n, float p, uint64_t key) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      keep_mask[i] = rng_uniform(key, static_cast<uint64_t>(i)) >= p ? 1 : 0;
  });
}

void linear_forward(float* y, const float* x, const float* W0, const float* bias,
                    const LoraParams& lora, const uint8_t* keep_mask, float* h_out, float* u_out,
                    int64_t T, int64_t in, int64_t out) {
  // y: (T, out) = x (T, in) . W0 (out, in)^T
  matmul_nt(y, x, W0, T, out, in);
  if (bias) {
    auto add_bias = [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        float* row = y + t * out;
        for (int64_t j = 0; j < out; ++j) row[j] += bias[j];
      }
    };
    if (T * out < kElementwiseParallelMin) {
      add_bias(0, T);
    } else {
      parallel_for(T, [&](int64_t begin, int64_t end, int) { add_bias(begin, end); });
    }
  }
  if (!lora.A) return;

  const float* h = x;
  if (keep_mask) {
    float* hd = h_out ? h_out : scratch(t_h, T * in);
    const float s = keep_scale(lora.dropout);
    elementwise(T * in, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hd[i] = keep_mask[i] ? x[i] * s : 0.f;
    });
    h = hd;
  } else if (h_out) {
    std::memcpy(h_out, x, sizeof(float) * T * in);
  }
  // u: (T, r) = h . A^T;  y += scale * u . B^T
  float* u = u_out ? u_out : scratch(t_u, T * lora.r);
  matmul_nt(u, h, lora.A, T, lora.r, in);
  matmul_nt(y, u, lora.B, T, out, lora.r, lora.scale, /*accumulate=*/true);
}

void linear_backward(float* dx, float* dA, float* dB, const float* dy, const float* W0,
                     const LoraParams& lora, const uint8_t* keep_mask, const float* h,
                     const float* u, int64_t T, int64_t in, int64_t out) {
  // dx += dy (T, out) . W0 (out, in)
  if (dx) matmul_nn(dx, dy, W0, T, in, out, 1.0f, /*accumulate=*/true);
  if (!lora.A) return;
  const int64_t r = lora.r;

  // dB (out, r) += scale * dy^T . u
  if (dB) matmul_tn(dB, dy, u, out, r, T, lora.scale, /*accumulate=*/true);
  // du (T, r) = scale * dy . B
  float* du = scratch(t_du, T * r);
  matmul_nn(du, dy, lora.B, T, r, out, lora.scale);
  // dA (r, in) += du^T . h
  if (dA) matmul_tn(dA, du, h, r, in, T, 1.0f, /*accumulate=*/true);
  if (!dx) return;
  // dh (T, in) = du . A; through dropout: dx += mask * dh / (1 - p)
  if (!keep_mask) {
    matmul_nn(dx, du, lora.A, T, in, r, 1.0f, /*accumulate=*/true);
    return;
  }
  float* dh = scratch(t_dh, T * in);
  matmul_nn(dh, du, lora.A, T, in, r);
  const float s = keep_scale(lora.dropout);
  elementwise(T * in, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      if (keep_mask[i]) dx[i] += dh[i] * s;
  });
}

}  // namespace lora
