#pragma once
// Shared by the attention tests on the GPU (test_cuda_attention.cpp) and on the CPU emulator
// (test_cuda_attention_emulated.cpp): the packed-row shapes, their inputs, the CPU twin's
// results and the comparison with tolerances derived from bf16 rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "ops/attention.hpp"
#include "test.hpp"

namespace lora_test::attention_check {

constexpr double kU = 1.0 / 256;  // bf16 unit roundoff, 2^-8

struct Shape {
  int64_t rows, T, Hq, Hkv, D;
};

inline std::string describe(const Shape& s) {
  return "rows=" + std::to_string(s.rows) + " T=" + std::to_string(s.T) + " Hq=" + std::to_string(s.Hq) +
         " Hkv=" + std::to_string(s.Hkv) + " D=" + std::to_string(s.D);
}

// Row 0 is one document (plain causal); row 2 (when present) has documents starting exactly
// at tile boundaries (64, 128, 192) and one-token documents right after them; the other rows
// are cut into documents of random lengths from 1 to max(2, T / 4), so boundaries fall
// inside query and key tiles.
inline std::vector<int32_t> make_doc_start(int64_t rows, int64_t T, std::mt19937& rng) {
  std::vector<int32_t> ds(static_cast<size_t>(rows * T));
  for (int64_t r = 0; r < rows; ++r) {
    std::uniform_int_distribution<int64_t> len(1, std::max<int64_t>(2, T / 4));
    auto next_start = [&](int64_t t) {
      if (r == 0) return T;
      if (r == 2) return t % 64 == 0 ? t + 1 : (t / 64 + 1) * 64;
      return t + len(rng);
    };
    int64_t start = 0, next = next_start(0);
    for (int64_t t = 0; t < T; ++t) {
      if (t == next) {
        start = t;
        next = next_start(t);
      }
      ds[static_cast<size_t>(r * T + t)] = static_cast<int32_t>(start);
    }
  }
  return ds;
}

inline std::vector<float> normal_bf16(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  round_to_bf16(x);
  return x;
}

inline double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

inline double rel_frobenius(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  if (std::isnan(num)) return 1e30;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline void check_close(const char* what, const Shape& s, const std::vector<float>& got, const std::vector<float>& ref,
                 double atol, double rtol, double frob_max) {
  CHECK_EQ(got.size(), ref.size());
  const double w = worst_ratio(got, ref, atol, rtol);
  const double f = rel_frobenius(got, ref);
  if (!(w <= 1.0) || !(f <= frob_max)) {
    size_t worst = 0;
    double wv = -1;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double d = std::fabs(static_cast<double>(got[i]) - ref[i]) / (atol + rtol * std::fabs(ref[i]));
      if (!(d <= wv)) {
        wv = d;
        worst = i;
      }
    }
    record_failure(__FILE__, __LINE__,
                   std::string(what) + " (" + describe(s) + "): worst ratio " + std::to_string(w) +
                       ", relative Frobenius error " + std::to_string(f) + " (max " + std::to_string(frob_max) +
                       "); element " + std::to_string(worst) + ": " + std::to_string(got[worst]) + " vs " +
                       std::to_string(ref[worst]));
  }
}

struct Inputs {
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> ds;
};

inline Inputs make_inputs(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  Inputs in;
  const size_t nq = static_cast<size_t>(s.rows * s.T * s.Hq * s.D);
  const size_t nkv = static_cast<size_t>(s.rows * s.T * s.Hkv * s.D);
  // Scores of standard deviation ~2: peaked enough that the running max changes between key
  // tiles (exercising the online rescaling), flat enough that many keys matter.
  in.q = normal_bf16(nq, 2.0f, rng);
  in.k = normal_bf16(nkv, 1.0f, rng);
  in.v = normal_bf16(nkv, 1.0f, rng);
  in.dout = normal_bf16(nq, 1.0f, rng);
  in.ds = make_doc_start(s.rows, s.T, rng);
  return in;
}

// CPU twin, one packed row at a time: out (rows*T, Hq, D), lse (rows, Hq, T).
inline void cpu_forward(const Shape& s, const Inputs& in, std::vector<float>& out, std::vector<float>& lse) {
  const int64_t sq = s.T * s.Hq * s.D, skv = s.T * s.Hkv * s.D;
  out.assign(static_cast<size_t>(s.rows * sq), 0.f);
  lse.assign(static_cast<size_t>(s.rows * s.Hq * s.T), 0.f);
  for (int64_t r = 0; r < s.rows; ++r)
    lora::attention_forward(out.data() + r * sq, lse.data() + r * s.Hq * s.T, in.q.data() + r * sq,
                            in.k.data() + r * skv, in.v.data() + r * skv, in.ds.data() + r * s.T, s.T, s.Hq, s.Hkv,
                            s.D);
}

inline void cpu_backward(const Shape& s, const Inputs& in, const std::vector<float>& out, const std::vector<float>& lse,
                  std::vector<float>& dq, std::vector<float>& dk, std::vector<float>& dv) {
  const int64_t sq = s.T * s.Hq * s.D, skv = s.T * s.Hkv * s.D;
  dq.assign(static_cast<size_t>(s.rows * sq), 0.f);
  dk.assign(static_cast<size_t>(s.rows * skv), 0.f);
  dv.assign(static_cast<size_t>(s.rows * skv), 0.f);
  for (int64_t r = 0; r < s.rows; ++r)
    lora::attention_backward(dq.data() + r * sq, dk.data() + r * skv, dv.data() + r * skv, in.dout.data() + r * sq,
                             out.data() + r * sq, lse.data() + r * s.Hq * s.T, in.q.data() + r * sq,
                             in.k.data() + r * skv, in.v.data() + r * skv, in.ds.data() + r * s.T, s.T, s.Hq,
                             s.Hkv, s.D);
}

// The GPU's forward against the CPU's: out is bf16 (2 units of rounding relative to the
// largest |v|, since out is a convex combination of v rows), lse fp32.
inline void check_forward(const Shape& s, const Inputs& in, const std::vector<float>& out, const std::vector<float>& lse,
                          const std::vector<float>& out_ref, const std::vector<float>& lse_ref) {
  check_close("forward out", s, out, out_ref, 2 * kU * max_abs(in.v), 2 * kU, 2 * kU);
  check_close("forward lse", s, lse, lse_ref, 2e-4, 1e-5, 1e-4);
}

// The GPU's backward against the CPU's: bf16 outputs of fp32 sums whose terms were rounded
// to bf16 once more on the way (P and dS), so 4 units relative to each gradient's largest value.
inline void check_backward(const Shape& s, const std::vector<float>& dq, const std::vector<float>& dk,
                           const std::vector<float>& dv, const std::vector<float>& dq_ref,
                           const std::vector<float>& dk_ref, const std::vector<float>& dv_ref) {
  const double tol = 4 * kU;
  check_close("backward dq", s, dq, dq_ref, tol * max_abs(dq_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dk", s, dk, dk_ref, tol * max_abs(dk_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dv", s, dv, dv_ref, tol * max_abs(dv_ref) + 1e-5, tol, 2 * kU);
}

}  // namespace lora_test::attention_check
