#pragma once
// Comparisons shared by the CUDA op tests: test_cuda_ops.cpp (the kernels on a GPU) and
// test_cuda_ops_emulated.cpp (the same kernels run on the CPU by emu_shim.hpp). "gpu" in
// the messages is the kernel's result, real or emulated; "cpu" is the CPU twin's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "gradcheck.hpp"
#include "test.hpp"

namespace lora_test {

inline constexpr double kBf16Rel = 1.0 / 256.0;  // 2^-8: half an ulp of bf16, relative

// Random values already rounded to bf16 (so CPU references see exactly the kernel's inputs).
inline std::vector<float> rand_bf16(int64_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::vector<float> v = random_vec(n, seed, lo, hi);
  round_to_bf16(v);
  return v;
}

// |gpu - cpu| <= atol + rtol |cpu| everywhere; one failure line naming the worst element.
inline void check_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                        double atol, double rtol) {
  if (gpu.size() != cpu.size()) {
    record_failure(__FILE__, __LINE__, what + ": sizes differ");
    return;
  }
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double d = std::fabs(double(gpu[i]) - double(cpu[i]));
    const double tol = atol + rtol * std::fabs(double(cpu[i]));
    if (d <= tol) continue;  // also exact matches under a zero tolerance
    const double r = std::isnan(d) ? 1e30 : tol > 0 ? d / tol : 1e30;
    if (r > worst) {
      worst = r;
      at = i;
    }
  }
  if (worst > 0) {
    std::ostringstream os;
    os.precision(9);
    os << what << ": element " << at << " gpu " << gpu[at] << " cpu " << cpu[at] << " is " << worst
       << "x the tolerance (atol " << atol << ", rtol " << rtol << ")";
    record_failure(__FILE__, __LINE__, os.str());
  }
}

// GPU bf16 bits against the CPU's fp32 values rounded to nearest even: must be identical.
inline void check_bits(const std::string& what, const std::vector<uint16_t>& gpu, const std::vector<float>& cpu) {
  if (gpu.size() != cpu.size()) {
    record_failure(__FILE__, __LINE__, what + ": sizes differ");
    return;
  }
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (gpu[i] != f32_to_bf16_bits(cpu[i])) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad) {
    std::ostringstream os;
    os.precision(9);
    os << what << ": " << bad << " of " << gpu.size() << " bf16 values differ; first at " << first << ": gpu "
       << bf16_bits_to_f32(gpu[first]) << " cpu " << cpu[first] << " (bf16 "
       << bf16_bits_to_f32(f32_to_bf16_bits(cpu[first])) << ")";
    record_failure(__FILE__, __LINE__, os.str());
  }
}

// Weights as checkpoints have them: small normal values with a few large outliers, so the
// blocks' absmax values spread (which double quantization has to code).
inline std::vector<float> checkpoint_like(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(n));
  for (auto& x : w) x = nd(rng);
  for (int64_t i = 0; i < n; i += 331) w[static_cast<size_t>(i)] *= 25.0f;
  return w;
}

// The largest |contribution| a backward adds, for an absolute tolerance that scales with it.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace lora_test
