#include "ops/layernorm.hpp"

#include <cmath>

#include "common/threadpool.hpp"

namespace lora {

void layernorm_forward(float* y, float* mean_out, float* rstd_out, const float* x, const float* w, const float* b,
                       int64_t T, int64_t C, float eps) {
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * C;
      float* yr = y + t * C;
      double sum = 0.0;
      for (int64_t c = 0; c < C; ++c) sum += xr[c];
      const double mean = sum / double(C);
      // Two passes: the one-pass E[x^2] - E[x]^2 cancels badly when |mean| >> std, which
      // residual streams of trained models do show.
      double ss = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double d = double(xr[c]) - mean;
        ss += d * d;
      }
      const float rstd = static_cast<float>(1.0 / std::sqrt(ss / double(C) + double(eps)));
      const float m = static_cast<float>(mean);
      if (mean_out) mean_out[t] = m;
      if (rstd_out) rstd_out[t] = rstd;
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * rstd * w[c] + b[c];
    }
  });
}

// With n = (x - mean) * rstd, y = w * n + b and g = w * dy:
//   dx_j = rstd * (g_j - mean_i(g_i) - n_j * mean_i(g_i n_i)).
void layernorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t T, int64_t C) {
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * C;
      const float* dyr = dy + t * C;
      float* dxr = dx + t * C;
      const float rs = rstd[t], m = mean[t];
      double sum_g = 0.0, sum_gn = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double g = double(w[c]) * dyr[c];
        sum_g += g;
        sum_gn += g * (double(xr[c] - m) * rs);
      }
      const float mean_g = static_cast<float>(sum_g / double(C));
      const float mean_gn = static_cast<float>(sum_gn / double(C));
      for (int64_t c = 0; c < C; ++c) {
        const float n = (xr[c] - m) * rs;
        dxr[c] += rs * (w[c] * dyr[c] - mean_g - n * mean_gn);
      }
    }
  });
}

}  // namespace lora
