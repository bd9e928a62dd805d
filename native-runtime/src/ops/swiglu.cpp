#include "ops/swiglu.hpp"

#include <algorithm>

#include "common/threadpool.hpp"
#include "ops/elementwise.hpp"
#include "ops/vexp.hpp"

namespace lora {

namespace {
// Elements per batch of exponentials (a stack buffer).
constexpr int64_t kBatch = 256;

// s[i] = sigmoid(g[i]) = 1 / (1 + exp(-g[i])) for i < n (n <= kBatch), with the
// exponentials vectorised.
void sigmoid_batch(float* s, const float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = -g[i];
  exp_inplace(s, n);
  for (int64_t i = 0; i < n; ++i) s[i] = 1.0f / (1.0f + s[i]);
}
}  // namespace

void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    float s[kBatch];
    for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
      const int64_t m = std::min(kBatch, end - i0);
      sigmoid_batch(s, g + i0, m);
      for (int64_t i = 0; i < m; ++i) h[i0 + i] = g[i0 + i] * s[i] * u[i0 + i];
    }
  });
}

// silu'(g) = s + g s (1 - s) with s = sigmoid(g). Element i is read before it is written, so
// dg may alias g and du may alias u.
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    float s[kBatch];
    for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
      const int64_t m = std::min(kBatch, end - i0);
      sigmoid_batch(s, g + i0, m);
      for (int64_t i = 0; i < m; ++i) {
        const float gi = g[i0 + i], ui = u[i0 + i], d = dh[i0 + i], si = s[i];
        const float silu = gi * si;
        dg[i0 + i] = d * ui * (si + silu * (1.0f - si));
        du[i0 + i] = d * silu;
      }
    }
  });
}

}  // namespace lora
