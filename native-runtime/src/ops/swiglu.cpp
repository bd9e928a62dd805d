#include "ops/swiglu.hpp"

#include <cmath>

#include "common/threadpool.hpp"

namespace lora {

namespace {
constexpr int64_t kParallelMinElements = 1 << 15;

template <typename Fn>
void elementwise(int64_t n, Fn fn) {
  if (n < kParallelMinElements) {
    fn(0, n);
    return;
  }
  parallel_for(n, [&](int64_t begin, int64_t end, int) { fn(begin, end); });
}

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }
}  // namespace

void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) h[i] = g[i] * sigmoid(g[i]) * u[i];
  });
}

// silu'(g) = s + g s (1 - s) with s = sigmoid(g).
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float s = sigmoid(g[i]);
      const float silu = g[i] * s;
      const float d = dh[i];
      dg[i] = d * u[i] * (s + silu * (1.0f - s));
      du[i] = d * silu;
    }
  });
}

}  // namespace lora
