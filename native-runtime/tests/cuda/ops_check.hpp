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
#include "ops/rope.hpp"
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

// RoPE inputs of a test case: inv_freq for head size D (theta 500000, the named scaling:
// "", "llama3" factor 8 or "linear" factor 4) and T positions cycling through packed-document
// restarts and large values that exercise sincosf's range reduction.
struct RopeInputs {
  std::vector<float> inv_freq;
  std::vector<int32_t> pos;
};
inline RopeInputs rope_inputs(int64_t T, int64_t D, const std::string& scaling_type) {
  lora::RopeScaling scaling;
  scaling.type = scaling_type;
  if (scaling.type == "llama3") scaling.factor = 8.0;
  if (scaling.type == "linear") scaling.factor = 4.0;
  RopeInputs in;
  in.inv_freq.resize(static_cast<size_t>(D / 2));
  lora::rope_inv_freq(in.inv_freq.data(), D, 500000.0, scaling);
  in.pos.resize(static_cast<size_t>(T));
  const int32_t sample[] = {0, 1, 2, 0, 131071, 77777, 5};
  for (int64_t t = 0; t < T; ++t) in.pos[static_cast<size_t>(t)] = sample[t % 7];
  return in;
}

}  // namespace lora_test
