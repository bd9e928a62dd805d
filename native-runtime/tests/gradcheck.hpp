#pragma once
// Shared by the op tests: seeded random inputs, the scalar test loss L = sum_i y_i w_i
// (so dL/dy = w), and a central finite-difference check of an analytic gradient.
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <vector>

#include "test.hpp"

namespace lora_test {

inline std::vector<float> random_vec(int64_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

inline double weighted_sum(const float* y, const std::vector<float>& w) {
  double s = 0.0;
  for (size_t i = 0; i < w.size(); ++i) s += double(y[i]) * double(w[i]);
  return s;
}

// Compares grad[i] with the central difference of loss() in x[i] for every i (or `stride`
// apart). Reports the worst element once instead of one line per element; returns the
// number of mismatching entries.
inline int64_t check_gradient(const char* what, float* x, const float* grad, int64_t n,
                              const std::function<double()>& loss, double h, double atol, double rtol,
                              int64_t stride = 1) {
  int64_t bad = 0, worst_i = -1;
  double worst_excess = 0.0, worst_num = 0.0, worst_ana = 0.0;
  for (int64_t i = 0; i < n; i += stride) {
    const float saved = x[i];
    const float up = static_cast<float>(saved + h), down = static_cast<float>(saved - h);
    x[i] = up;
    const double lp = loss();
    x[i] = down;
    const double lm = loss();
    x[i] = saved;
    const double numeric = (lp - lm) / (double(up) - double(down));
    const double excess = std::fabs(numeric - grad[i]) - (atol + rtol * std::fabs(numeric));
    if (excess > 0) {
      ++bad;
      if (excess > worst_excess || worst_i < 0) {
        worst_excess = excess;
        worst_i = i;
        worst_num = numeric;
        worst_ana = grad[i];
      }
    }
  }
  if (bad) {
    std::ostringstream os;
    os.precision(9);
    os << what << ": " << bad << " gradient entries off; worst at " << worst_i << ": analytic "
       << worst_ana << " vs numeric " << worst_num;
    record_failure(__FILE__, __LINE__, os.str());
  }
  return bad;
}

}  // namespace lora_test
