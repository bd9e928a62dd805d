#include "ops/rope.hpp"

#include <cmath>
#include <vector>

#include "common/threadpool.hpp"

namespace lora {

// As transformers' _compute_default_rope_parameters, plus the "linear" and "llama3" entries
// of ROPE_INIT_FUNCTIONS. HF evaluates base ** (2i / D) in fp32; computing it in double and
// rounding once gives the correctly rounded value, within 1 ulp of HF's.
void rope_inv_freq(float* inv_freq, int64_t D, double theta, const RopeScaling& scaling) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(theta, double(2 * i) / double(D));
    if (scaling.type == "linear") {
      f /= scaling.factor;
    } else if (scaling.type == "llama3") {
      // _compute_llama3_parameters: keep high frequencies, divide low ones by `factor`, and
      // interpolate smoothly between the two wavelength thresholds.
      const double old_context = double(scaling.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / scaling.low_freq_factor;
      const double high_freq_wavelen = old_context / scaling.high_freq_factor;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_freq_wavelen) {
        f = f / scaling.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (old_context / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
    inv_freq[i] = static_cast<float>(f);
  }
}

namespace {

// Rotates each (i, i + D/2) pair of every head of every token by sign * pos * inv_freq[i].
// The angle is formed in fp32 as HF does (position_ids.float() @ inv_freq.float()), then
// its cos/sin are taken in double so the CPU reference is as exact as fp32 allows.
void rotate(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
            float sign) {
  const int64_t half = D / 2;
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (int64_t t = begin; t < end; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq[i];
        cos_t[i] = static_cast<float>(std::cos(double(angle)));
        sin_t[i] = sign * static_cast<float>(std::sin(double(angle)));
      }
      for (int64_t h = 0; h < H; ++h) {
        float* v = x + (t * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cos_t[i] - b * sin_t[i];
          v[i + half] = b * cos_t[i] + a * sin_t[i];
        }
      }
    }
  });
}

}  // namespace

// out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]).
void rope_forward(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D) {
  rotate(x, pos, inv_freq, T, H, D, 1.0f);
}

// A rotation's transpose is the rotation by the opposite angle.
void rope_backward(float* dx, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D) {
  rotate(dx, pos, inv_freq, T, H, D, -1.0f);
}

}  // namespace lora
