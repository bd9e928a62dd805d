#pragma once
// One GEMM test case on the host, shared by the device GEMM tests (test_cuda_gemm.cpp) and
// the CPU emulation of the built-in kernel (test_cuda_gemm_emulated.cpp): the stored
// operands with their stride padding, C before the call, and the check of C after it
// against a double-precision product of the same bf16-rounded inputs.
//
// The padding of A and B holds NaN and that of C (and the elements in front of each
// matrix) a sentinel, so a kernel that reads or writes outside the matrices fails. With
// beta == 0 the inside of C holds NaN too, which must not be read.
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cuda/gemm.hpp"
#include "cuda_test_util.hpp"
#include "gradcheck.hpp"
#include "test.hpp"

namespace lora_test {

struct GemmCase {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra elements per stored row
  int64_t offset = 0;                      // elements before each matrix's first element
  float alpha = 1.f, beta = 0.f;
  lora::cuda::GemmType c_type = lora::cuda::GemmType::BF16;
};

inline std::string describe(const GemmCase& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "M=%lld N=%lld K=%lld%s%s pads=%lld/%lld/%lld offset=%lld alpha=%g beta=%g C=%s",
                static_cast<long long>(c.M), static_cast<long long>(c.N), static_cast<long long>(c.K),
                c.ta ? " A^T" : "", c.tb ? " B^T" : "", static_cast<long long>(c.pad_a),
                static_cast<long long>(c.pad_b), static_cast<long long>(c.pad_c), static_cast<long long>(c.offset),
                c.alpha, c.beta, c.c_type == lora::cuda::GemmType::F32 ? "f32" : "bf16");
  return buf;
}

struct GemmProblem {
  GemmCase c;
  int64_t lda = 0, ldb = 0, ldc = 0;
  std::vector<uint16_t> a_bits, b_bits;  // stored A and B (bf16 bits), offset and padding included
  std::vector<float> c_f32;              // C when c_type is F32: before the call, then the result
  std::vector<uint16_t> c_bf16;          // C when c_type is BF16
  std::vector<float> a, b, c0;           // the logical values (op(A), op(B) before transposing; C's start)

  bool f32() const { return c.c_type == lora::cuda::GemmType::F32; }
  size_t c_elems() const { return static_cast<size_t>(c.offset + c.M * ldc); }
  // Element i of the C buffer: inside the matrix (with its row and column) or not.
  bool inside(size_t i, int64_t* m, int64_t* n) const {
    if (i < static_cast<size_t>(c.offset)) return false;
    const int64_t j = static_cast<int64_t>(i) - c.offset;
    *m = j / ldc;
    *n = j % ldc;
    return *n < c.N;
  }
};

constexpr uint16_t kGemmNaNBits = 0x7fc0;
constexpr float kGemmSentinel = 768.0f;  // exact in bf16

// rows x cols values uniform in [-1, 1] rounded to bf16, stored with row stride cols + pad
// after `offset` elements; padding is NaN.
inline std::vector<uint16_t> make_gemm_operand(int64_t rows, int64_t cols, int64_t pad, int64_t offset, uint32_t seed,
                                               std::vector<float>* logical) {
  const int64_t ld = cols + pad;
  std::vector<uint16_t> bits(static_cast<size_t>(offset + rows * ld), kGemmNaNBits);
  *logical = random_vec(rows * cols, seed);
  round_to_bf16(*logical);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) bits[offset + r * ld + c] = f32_to_bf16_bits((*logical)[r * cols + c]);
  return bits;
}

inline GemmProblem make_gemm_problem(const GemmCase& c) {
  GemmProblem p;
  p.c = c;
  const int64_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int64_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  p.lda = a_cols + c.pad_a;
  p.ldb = b_cols + c.pad_b;
  p.ldc = c.N + c.pad_c;
  const uint32_t seed = static_cast<uint32_t>(c.M * 7919 + c.N * 104729 + c.K * 31 + c.ta * 2 + c.tb);
  p.a_bits = make_gemm_operand(a_rows, a_cols, c.pad_a, c.offset, seed, &p.a);
  p.b_bits = make_gemm_operand(b_rows, b_cols, c.pad_b, c.offset, seed + 1, &p.b);
  p.c0 = random_vec(c.M * c.N, seed + 2);
  round_to_bf16(p.c0);
  const size_t n = p.c_elems();
  auto value = [&](size_t i) {
    int64_t m, col;
    if (!p.inside(i, &m, &col)) return kGemmSentinel;
    return c.beta != 0.f ? p.c0[m * c.N + col] : std::numeric_limits<float>::quiet_NaN();
  };
  if (p.f32()) {
    p.c_f32.resize(n);
    for (size_t i = 0; i < n; ++i) p.c_f32[i] = value(i);
  } else {
    p.c_bf16.resize(n);
    for (size_t i = 0; i < n; ++i) p.c_bf16[i] = f32_to_bf16_bits(value(i));
  }
  return p;
}

// The arguments for the problem's buffers at these base addresses (each buffer's first
// element; the offset is added here).
inline lora::cuda::GemmArgs gemm_args_for(const GemmProblem& p, const lora::cuda::bf16* a_base,
                                          const lora::cuda::bf16* b_base, void* c_base) {
  lora::cuda::GemmArgs args;
  args.trans_a = p.c.ta;
  args.trans_b = p.c.tb;
  args.M = p.c.M;
  args.N = p.c.N;
  args.K = p.c.K;
  args.alpha = p.c.alpha;
  args.beta = p.c.beta;
  args.A = a_base + p.c.offset;
  args.lda = p.lda;
  args.B = b_base + p.c.offset;
  args.ldb = p.ldb;
  args.C = p.f32() ? static_cast<void*>(static_cast<float*>(c_base) + p.c.offset)
                   : static_cast<void*>(static_cast<lora::cuda::bf16*>(c_base) + p.c.offset);
  args.ldc = p.ldc;
  args.c_type = p.c.c_type;
  return args;
}

// Compares the problem's C (after the call) with the double-precision product; records a
// failure naming `backend` and the case.
//
// Tolerance, per element: the inputs are exact bf16 values, so every product a*b is exact
// in fp32 and the only error before the output is the fp32 accumulation. K additions (plus
// the alpha and beta terms) each add at most one rounding of the running sum, bounded by
// (K + 2) u sum_k |a_k b_k| with u = 2^-24 for round-to-nearest; tensor cores may truncate
// rather than round inside the accumulation, and cuBLASLt may split K, so u is taken as
// 2^-22 (4x). A bf16 C adds one final rounding, at most 2^-9 of the value (taken as 2^-8).
// A wrong index, a lost or doubled K slice, or a stale shared tile moves an element by
// about one product |a_k b_k|, which is ~sum/K: well above the 2^-22 K term for any K here.
inline void verify_gemm(const GemmProblem& p, const std::string& backend) {
  const GemmCase& c = p.c;
  // op(A) by rows and op(B) by columns, so each reference element is a contiguous dot.
  std::vector<double> a_rows_k(static_cast<size_t>(c.M * c.K)), b_cols_k(static_cast<size_t>(c.N * c.K));
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t k = 0; k < c.K; ++k) a_rows_k[m * c.K + k] = c.ta ? p.a[k * c.M + m] : p.a[m * c.K + k];
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k) b_cols_k[n * c.K + k] = c.tb ? p.b[n * c.K + k] : p.b[k * c.N + n];

  const double u = std::ldexp(1.0, -22);
  const double out_round = p.f32() ? 0.0 : std::ldexp(1.0, -8);
  double worst = 0;
  std::string worst_at;
  int64_t outside_changed = 0;
  const size_t n_elems = p.c_elems();
  for (size_t i = 0; i < n_elems; ++i) {
    const float out = p.f32() ? p.c_f32[i] : bf16_bits_to_f32(p.c_bf16[i]);
    int64_t m, n;
    if (!p.inside(i, &m, &n)) {
      if (out != kGemmSentinel) ++outside_changed;
      continue;
    }
    double sum = 0, abs_sum = 0;
    const double* ar = a_rows_k.data() + m * c.K;
    const double* bc = b_cols_k.data() + n * c.K;
    for (int64_t k = 0; k < c.K; ++k) {
      const double prod = ar[k] * bc[k];
      sum += prod;
      abs_sum += std::fabs(prod);
    }
    const double cterm = c.beta != 0.f ? double(c.beta) * p.c0[m * c.N + n] : 0.0;
    const double ref = double(c.alpha) * sum + cterm;
    const double tol =
        u * double(c.K + 2) * (std::fabs(double(c.alpha)) * abs_sum + std::fabs(cterm)) + out_round * std::fabs(ref) +
        1e-30;
    const double ratio = std::fabs(out - ref) / tol;
    if (!(ratio <= worst)) {
      worst = std::isnan(ratio) ? 1e30 : ratio;
      worst_at = "C[" + std::to_string(m) + "][" + std::to_string(n) + "] = " + std::to_string(out) +
                 ", reference " + std::to_string(ref);
      if (std::isnan(ratio)) break;
    }
  }
  if (worst > 1.0)
    record_failure(__FILE__, __LINE__,
                   backend + " " + describe(c) + ": worst error " + std::to_string(worst) + "x the tolerance at " +
                       worst_at);
  if (outside_changed)
    record_failure(__FILE__, __LINE__,
                   backend + " " + describe(c) + ": " + std::to_string(outside_changed) +
                       " element(s) outside C were written");
}

// Cases over the sizes 1, 7, 33, 129 and 1000 (and tile multiples), each in all four
// transpose combinations and both C types, with alpha, beta, strides and a misaligned
// base pointer varied from case to case.
inline std::vector<GemmCase> gemm_cases(const std::vector<std::array<int64_t, 3>>& shapes) {
  std::vector<GemmCase> cases;
  int index = 0;
  for (const auto& s : shapes) {
    for (int t = 0; t < 4; ++t) {
      for (int ct = 0; ct < 2; ++ct, ++index) {
        GemmCase c;
        c.M = s[0];
        c.N = s[1];
        c.K = s[2];
        c.ta = t & 1;
        c.tb = (t >> 1) & 1;
        c.c_type = ct ? lora::cuda::GemmType::F32 : lora::cuda::GemmType::BF16;
        c.alpha = index % 3 == 0 ? 1.f : index % 3 == 1 ? 0.5f : -2.f;
        c.beta = index % 2 ? 1.f : 0.f;
        // Strides: dense, wider by 3 (odd: no 16-byte copies), or wider by 8 (16-byte copies
        // still allowed when the row is a multiple of 8).
        const int64_t pads[] = {0, 3, 8};
        c.pad_a = pads[index % 3];
        c.pad_b = pads[(index / 3) % 3];
        c.pad_c = pads[(index + 1) % 3];
        c.offset = index % 5 == 4 ? 1 : 0;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

}  // namespace lora_test
