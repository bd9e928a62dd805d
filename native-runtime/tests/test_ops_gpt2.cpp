// GPT-2's ops (LayerNorm with bias, GELU tanh approximation) against double-precision
// formulas for the forwards and central finite differences for the backwards. Same method
// and error budget as test_ops.cpp: loss L = sum_i y_i w_i with fixed random w, so dL/dy = w;
// h = 1e-2 balances truncation (h^2 L''') and fp32 rounding to ~1e-4 on O(1) gradients,
// while a wrong formula is off by the order of the gradient itself.
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <vector>

#include "ops/gelu.hpp"
#include "ops/layernorm.hpp"
#include "gradcheck.hpp"
#include "test.hpp"

using namespace lora;
using lora_test::check_gradient;
using lora_test::random_vec;
using lora_test::weighted_sum;

TEST(layernorm_forward_matches_formula_and_backward_matches_finite_differences) {
  const int64_t T = 5, C = 37;
  const float eps = 1e-5f;
  // An offset mean, as residual streams have, exercises the centring.
  auto x = random_vec(T * C, 301, -1.f, 3.f);
  const auto w = random_vec(C, 302, 0.5f, 1.5f);
  const auto b = random_vec(C, 303, -0.5f, 0.5f);
  const auto wl = random_vec(T * C, 304, -1.f, 1.f);
  std::vector<float> y(T * C), mean(T), rstd(T);
  layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), T, C, eps);
  for (int64_t t = 0; t < T; ++t) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[t * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[t * C + c] - m) * (x[t * C + c] - m);
    const double r = 1.0 / std::sqrt(v / C + eps);
    CHECK_NEAR(mean[t], m, 1e-6, 1e-6);
    CHECK_NEAR(rstd[t], r, 1e-6, 1e-6);
    for (int64_t c = 0; c < C; ++c) CHECK_NEAR(y[t * C + c], (x[t * C + c] - m) * r * w[c] + b[c], 1e-5, 1e-5);
  }
  // The backward accumulates: start from a known non-zero dx and subtract it afterwards.
  std::vector<float> dx(T * C, 0.25f);
  layernorm_backward(dx.data(), wl.data(), x.data(), w.data(), mean.data(), rstd.data(), T, C);
  for (auto& d : dx) d -= 0.25f;
  auto loss = [&] {
    std::vector<float> yy(T * C), mm(T), rr(T);
    layernorm_forward(yy.data(), mm.data(), rr.data(), x.data(), w.data(), b.data(), T, C, eps);
    return weighted_sum(yy.data(), wl);
  };
  CHECK(check_gradient("layernorm dx", x.data(), dx.data(), T * C, loss, 1e-2, 3e-4, 3e-3) == 0);
  // The gradient of a normalisation is orthogonal to a constant shift of its input row.
  for (int64_t t = 0; t < T; ++t) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += dx[t * C + c];
    CHECK_NEAR(s, 0.0, 1e-4, 0);
  }
}

TEST(layernorm_is_invariant_to_row_shift_and_scale) {
  const int64_t T = 2, C = 16;
  const auto x = random_vec(T * C, 311, -1.f, 1.f);
  std::vector<float> x2(x);
  for (auto& v : x2) v = 3.f * v + 5.f;
  const std::vector<float> w(C, 1.f), b(C, 0.f);
  std::vector<float> y(T * C), y2(T * C), m(T), r(T);
  layernorm_forward(y.data(), m.data(), r.data(), x.data(), w.data(), b.data(), T, C, 0.f);
  layernorm_forward(y2.data(), m.data(), r.data(), x2.data(), w.data(), b.data(), T, C, 0.f);
  for (int64_t i = 0; i < T * C; ++i) CHECK_NEAR(y[i], y2[i], 1e-5, 1e-5);
}

TEST(gelu_forward_matches_gelu_new_and_backward_matches_finite_differences) {
  const int64_t n = 301;
  auto x = random_vec(n, 321, -5.f, 5.f);
  const auto wl = random_vec(n, 322, -1.f, 1.f);
  std::vector<float> h(n);
  gelu_forward(h.data(), x.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    const double ref = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    CHECK_NEAR(h[i], ref, 1e-6, 1e-5);
  }
  // Known values of gelu_new (HF NewGELUActivation): gelu(1) = 0.8411920, gelu(-1) = -0.1588080.
  const float probe[2] = {1.f, -1.f};
  float out[2];
  gelu_forward(out, probe, 2);
  CHECK_NEAR(out[0], 0.841192, 1e-6, 0);
  CHECK_NEAR(out[1], -0.158808, 1e-6, 0);

  std::vector<float> dx(n);
  gelu_backward(dx.data(), wl.data(), x.data(), n);
  auto loss = [&] {
    std::vector<float> hh(n);
    gelu_forward(hh.data(), x.data(), n);
    return weighted_sum(hh.data(), wl);
  };
  CHECK(check_gradient("gelu dx", x.data(), dx.data(), n, loss, 1e-2, 3e-4, 3e-3) == 0);
}

TEST(gelu_handles_large_inputs_and_in_place_use) {
  // tanh saturates: gelu(x) -> x for large x and -> 0 for very negative x, with no NaN.
  std::vector<float> x = {-60.f, -20.f, 0.f, 20.f, 60.f};
  std::vector<float> h(x);
  gelu_forward(h.data(), h.data(), 5);
  CHECK_NEAR(h[0], 0.0, 1e-6, 0);
  CHECK_NEAR(h[2], 0.0, 0, 0);
  CHECK_NEAR(h[3], 20.0, 1e-5, 0);
  CHECK_NEAR(h[4], 60.0, 1e-5, 0);
  std::vector<float> d(5, 1.f);
  gelu_backward(d.data(), d.data(), x.data(), 5);
  CHECK_NEAR(d[0], 0.0, 1e-6, 0);
  CHECK_NEAR(d[2], 0.5, 1e-7, 0);
  CHECK_NEAR(d[4], 1.0, 1e-6, 0);
  for (float v : d) CHECK(std::isfinite(v));
}
