#include "ops/rmsnorm.hpp"

#include <cmath>

#include "common/threadpool.hpp"

namespace lora {

void rmsnorm_forward(float* y, float* rstd_out, const float* x, const float* w, int64_t T,
                     int64_t C, float eps) {
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * C;
      float* yr = y + t * C;
      // Double accumulation: the mean of squares over thousands of channels is where fp32
      // would lose digits, and it costs nothing next to the GEMMs around it.
      double ss = 0.0;
      for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
      const float rstd = static_cast<float>(1.0 / std::sqrt(ss / double(C) + double(eps)));
      if (rstd_out) rstd_out[t] = rstd;
      for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * rstd);
    }
  });
}

// With n = x * rstd and y = w * n, rstd = (mean(x^2) + eps)^-1/2:
//   dx_j = rstd * (w_j dy_j - n_j * mean_i(w_i dy_i n_i)).
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t T, int64_t C) {
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * C;
      const float* dyr = dy + t * C;
      float* dxr = dx + t * C;
      const float rs = rstd[t];
      double dot = 0.0;
      for (int64_t c = 0; c < C; ++c) dot += double(w[c]) * dyr[c] * (double(xr[c]) * rs);
      const float mean_dot = static_cast<float>(dot / double(C));
      for (int64_t c = 0; c < C; ++c) {
        const float n = xr[c] * rs;
        dxr[c] += rs * (w[c] * dyr[c] - n * mean_dot);
      }
    }
  });
}

}  // namespace lora
