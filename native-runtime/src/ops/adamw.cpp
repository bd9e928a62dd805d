#include "ops/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/threadpool.hpp"
#include "ops/elementwise.hpp"

namespace lora {

// As torch.optim.AdamW (foreach=False): decay first, p *= 1 - lr * wd; then
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), with bc_i = 1 - beta_i^step.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = static_cast<float>(double(lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.0f - lr * weight_decay;
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i];
      m[i] = beta1 * m[i] + (1.0f - beta1) * g;
      v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      param[i] = param[i] * decay - step_size * (m[i] / denom);
    }
  });
}

void sgd_update(float* param, const float* grad, int64_t n, float lr, float weight_decay) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) param[i] -= lr * (grad[i] + weight_decay * param[i]);
  });
}

// Fixed 4096-element blocks summed in block order: the same result for any thread count.
double sum_squares(const float* x, int64_t n) {
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i1 = std::min(n, (b + 1) * kBlock);
      double s = 0.0;
      for (int64_t i = b * kBlock; i < i1; ++i) s += double(x[i]) * double(x[i]);
      partial[b] = s;
    }
  };
  if (n < kElementwiseParallelMin) {
    body(0, blocks);
  } else {
    parallel_for(blocks, [&](int64_t begin, int64_t end, int) { body(begin, end); });
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

void scale_inplace(float* x, int64_t n, float s) {
  elementwise(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] *= s;
  });
}

}  // namespace lora
