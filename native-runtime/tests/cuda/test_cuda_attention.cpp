// CUDA attention (cuda/attention) against its CPU twin (ops/attention), forward and
// backward, on packed rows with several documents (boundaries inside tiles), T from 1 to
// past several tiles, GQA and plain multi-head, and every head-dim instantiation.
//
// The CPU twin runs in fp32 on the same inputs, all rounded to bf16 first, so the only
// differences are the GPU's own roundings. Tolerances, with u = 2^-8 (bf16's unit roundoff:
// 8 significant bits, so rounding changes a value by at most u relative):
//  - forward output: o = sum_j p_j v_j / l with P rounded to bf16 before the P V product
//    (|error| <= u * sum_j p_j |v_j| / l <= u * max|v|) and o rounded to bf16 on the way out
//    (<= u |o|); scores and sums are fp32 on both sides (relative ~1e-6). Checked with
//    atol = 2u * max|v|, rtol = 2u (twice the bound) and a relative Frobenius error below
//    2u (uniform rounding errors give about u / sqrt(3)).
//  - lse: fp32 on both sides, exp2/log2 of ~2 ulp: 2e-4 absolute on values of order 10.
//  - backward: dV uses bf16 P, dK and dQ use bf16 dS, and all three are stored as bf16:
//    each element carries a few independent relative errors of u on its terms. Checked per
//    element with atol = 4u * max|ref| + 1e-5, rtol = 4u, and as a whole with a relative
//    Frobenius error below 2u (the expected value is about u / 2). The 1e-5 floor is for
//    gradients that are exactly 0 on the CPU (T = 1: dS = p (dP - delta) = 0) and ~1e-7 on the
//    GPU, where dP and delta are summed in different orders. A wrong mask, index or scale
//    gives errors of the order of the values themselves.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/attention.hpp"
#include "cuda_test_util.hpp"
#include "ops/attention.hpp"

using namespace lora_test;

namespace {

constexpr double kU = 1.0 / 256;  // bf16 unit roundoff, 2^-8

struct Shape {
  int64_t rows, T, Hq, Hkv, D;
};

std::string describe(const Shape& s) {
  return "rows=" + std::to_string(s.rows) + " T=" + std::to_string(s.T) + " Hq=" + std::to_string(s.Hq) +
         " Hkv=" + std::to_string(s.Hkv) + " D=" + std::to_string(s.D);
}

// Row 0 is one document (plain causal); row 2 (when present) has documents starting exactly
// at tile boundaries (64, 128, 192) and one-token documents right after them; the other rows
// are cut into documents of random lengths from 1 to max(2, T / 4), so boundaries fall
// inside query and key tiles.
std::vector<int32_t> make_doc_start(int64_t rows, int64_t T, std::mt19937& rng) {
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

std::vector<float> normal_bf16(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  round_to_bf16(x);
  return x;
}

double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

double rel_frobenius(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  if (std::isnan(num)) return 1e30;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void check_close(const char* what, const Shape& s, const std::vector<float>& got, const std::vector<float>& ref,
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

Inputs make_inputs(const Shape& s, uint32_t seed) {
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
void cpu_forward(const Shape& s, const Inputs& in, std::vector<float>& out, std::vector<float>& lse) {
  const int64_t sq = s.T * s.Hq * s.D, skv = s.T * s.Hkv * s.D;
  out.assign(static_cast<size_t>(s.rows * sq), 0.f);
  lse.assign(static_cast<size_t>(s.rows * s.Hq * s.T), 0.f);
  for (int64_t r = 0; r < s.rows; ++r)
    lora::attention_forward(out.data() + r * sq, lse.data() + r * s.Hq * s.T, in.q.data() + r * sq,
                            in.k.data() + r * skv, in.v.data() + r * skv, in.ds.data() + r * s.T, s.T, s.Hq, s.Hkv,
                            s.D);
}

void cpu_backward(const Shape& s, const Inputs& in, const std::vector<float>& out, const std::vector<float>& lse,
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

// Forward and backward of one shape on the GPU against the CPU twin.
void check_shape(const Shape& s, uint32_t seed) {
  const Inputs in = make_inputs(s, seed);
  std::vector<float> out_ref, lse_ref;
  cpu_forward(s, in, out_ref, lse_ref);

  auto q = to_device_bf16(in.q), k = to_device_bf16(in.k), v = to_device_bf16(in.v);
  auto ds = to_device(in.ds);
  lora::cuda::DeviceArray<lora::cuda::bf16> out(in.q.size());
  lora::cuda::DeviceArray<float> lse(lse_ref.size());
  lora::cuda::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq,
                                s.Hkv, s.D, nullptr);
  const std::vector<float> out_gpu = to_host_f32(out), lse_gpu = to_host(lse);
  const double vmax = max_abs(in.v);
  check_close("forward out", s, out_gpu, out_ref, 2 * kU * vmax, 2 * kU, 2 * kU);
  check_close("forward lse", s, lse_gpu, lse_ref, 2e-4, 1e-5, 1e-4);

  // Backward from the CPU's forward results (out rounded to bf16, as the GPU stores it), so
  // both sides differentiate exactly the same inputs.
  std::vector<float> out_b = out_ref;
  round_to_bf16(out_b);
  std::vector<float> dq_ref, dk_ref, dv_ref;
  cpu_backward(s, in, out_b, lse_ref, dq_ref, dk_ref, dv_ref);

  auto dout = to_device_bf16(in.dout), out_d = to_device_bf16(out_b);
  auto lse_d = to_device(lse_ref);
  lora::cuda::DeviceArray<lora::cuda::bf16> dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
  lora::cuda::DeviceArray<unsigned char> ws(lora::cuda::attention_backward_workspace(s.rows, s.T, s.Hq, s.Hkv, s.D));
  lora::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_d.data(), lse_d.data(), q.data(),
                                 k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq, s.Hkv, s.D, ws.data(), nullptr);
  const double tol = 4 * kU;
  check_close("backward dq", s, to_host_f32(dq), dq_ref, tol * max_abs(dq_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dk", s, to_host_f32(dk), dk_ref, tol * max_abs(dk_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dv", s, to_host_f32(dv), dv_ref, tol * max_abs(dv_ref) + 1e-5, tol, 2 * kU);
}

}  // namespace

TEST(cuda_attention_gqa_and_mha_across_lengths) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 1;
  for (int64_t T : {1, 5, 64, 130, 300}) {
    check_shape({3, T, 4, 1, 64}, seed++);   // GQA 4:1
    check_shape({3, T, 2, 2, 128}, seed++);  // one KV head per query head
  }
  for (int64_t T : {130, 300}) check_shape({3, T, 4, 2, 80}, seed++);  // GQA 2:1, D = 80
}

// Every instantiation (padded dims 32 ... 256) and head dims that are multiples of 8 but
// not of 16, which run zero-padded.
TEST(cuda_attention_every_head_dim) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 100;
  for (int64_t D : {8, 24, 40, 96, 112, 160, 192, 256}) check_shape({2, 130, 2, 1, D}, seed++);
  check_shape({1, 67, 3, 3, 256}, seed++);
}

// Repeated calls give the same forward (no state carried between launches), and the
// backward fully overwrites its outputs (garbage-filled beforehand) and its workspace.
TEST(cuda_attention_overwrites_outputs) {
  LORA_REQUIRE_GPU();
  const Shape s{2, 100, 4, 2, 64};
  const Inputs in = make_inputs(s, 7);
  auto q = to_device_bf16(in.q), k = to_device_bf16(in.k), v = to_device_bf16(in.v), dout = to_device_bf16(in.dout);
  auto ds = to_device(in.ds);
  std::vector<float> junk_q(in.q.size(), 1e4f), junk_kv(in.k.size(), -3e3f);
  auto out = to_device_bf16(junk_q), dq = to_device_bf16(junk_q), dk = to_device_bf16(junk_kv),
       dv = to_device_bf16(junk_kv);
  lora::cuda::DeviceArray<float> lse(static_cast<size_t>(s.rows * s.Hq * s.T));
  const size_t ws_bytes = lora::cuda::attention_backward_workspace(s.rows, s.T, s.Hq, s.Hkv, s.D);
  std::vector<unsigned char> junk_ws(ws_bytes, 0x7f);
  auto ws = to_device(junk_ws);
  lora::cuda::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq,
                                s.Hkv, s.D, nullptr);
  const auto out1 = to_host_f32(out), lse1 = to_host(lse);
  std::vector<std::vector<float>> grads[2];
  for (int pass = 0; pass < 2; ++pass) {
    lora::cuda::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), ds.data(), s.rows, s.T,
                                  s.Hq, s.Hkv, s.D, nullptr);
    CHECK(to_host_f32(out) == out1);
    CHECK(to_host(lse) == lse1);
    lora::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(),
                                   k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq, s.Hkv, s.D, ws.data(), nullptr);
    grads[pass] = {to_host_f32(dq), to_host_f32(dk), to_host_f32(dv)};
  }
  // dQ and the GQA dK/dV are sums of fp32 atomics whose order varies between runs: equal to
  // within one bf16 step (2u relative), not bit for bit.
  for (int i = 0; i < 3; ++i) {
    const double m = max_abs(grads[0][i]);
    CHECK(m < 100);  // nothing left of the 1e4 / -3e3 fill
    CHECK(worst_ratio(grads[1][i], grads[0][i], 2 * kU * m, 2 * kU) <= 1.0);
  }
}

// The 8B model's attention shape (T = 2048, 32 query heads over 8 KV heads, D = 128) with
// four documents: checked against the CPU twin, and timed (printed for the GPU session:
// attention should stay a small share of the training step, whose linear layers do ~25x
// the FLOPs at this shape).
TEST(cuda_attention_llama8b_shape) {
  LORA_REQUIRE_GPU();
  const Shape s{1, 2048, 32, 8, 128};
  Inputs in = make_inputs(s, 2048);
  const int64_t cuts[] = {0, 700, 701, 1600};
  for (int64_t t = 0; t < s.T; ++t) {
    int64_t start = 0;
    for (int64_t c : cuts)
      if (t >= c) start = c;
    in.ds[static_cast<size_t>(t)] = static_cast<int32_t>(start);
  }
  std::vector<float> out_ref, lse_ref;
  cpu_forward(s, in, out_ref, lse_ref);
  std::vector<float> out_b = out_ref;
  round_to_bf16(out_b);
  std::vector<float> dq_ref, dk_ref, dv_ref;
  cpu_backward(s, in, out_b, lse_ref, dq_ref, dk_ref, dv_ref);

  auto q = to_device_bf16(in.q), k = to_device_bf16(in.k), v = to_device_bf16(in.v), dout = to_device_bf16(in.dout);
  auto ds = to_device(in.ds);
  lora::cuda::DeviceArray<lora::cuda::bf16> out(in.q.size()), dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
  lora::cuda::DeviceArray<float> lse(lse_ref.size());
  lora::cuda::DeviceArray<unsigned char> ws(lora::cuda::attention_backward_workspace(s.rows, s.T, s.Hq, s.Hkv, s.D));
  auto fwd = [&] {
    lora::cuda::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), ds.data(), s.rows, s.T,
                                  s.Hq, s.Hkv, s.D, nullptr);
  };
  auto bwd = [&] {
    lora::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(),
                                   k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq, s.Hkv, s.D, ws.data(), nullptr);
  };
  fwd();
  check_close("forward out", s, to_host_f32(out), out_ref, 2 * kU * max_abs(in.v), 2 * kU, 2 * kU);
  check_close("forward lse", s, to_host(lse), lse_ref, 2e-4, 1e-5, 1e-4);
  // The checked backward reads the CPU's out and lse, as in check_shape; the timed one the
  // GPU's own, as training does.
  {
    auto out_d = to_device_bf16(out_b);
    auto lse_d = to_device(lse_ref);
    lora::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_d.data(), lse_d.data(),
                                   q.data(), k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq, s.Hkv, s.D, ws.data(),
                                   nullptr);
  }
  const double tol = 4 * kU;
  check_close("backward dq", s, to_host_f32(dq), dq_ref, tol * max_abs(dq_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dk", s, to_host_f32(dk), dk_ref, tol * max_abs(dk_ref) + 1e-5, tol, 2 * kU);
  check_close("backward dv", s, to_host_f32(dv), dv_ref, tol * max_abs(dv_ref) + 1e-5, tol, 2 * kU);

  auto time_ms = [&](auto&& fn) {
    constexpr int kReps = 10;
    fn();
    lora::cuda::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kReps; ++i) fn();
    lora::cuda::synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kReps;
  };
  // Useful FLOPs: the allowed (query, key) pairs times 4D (forward: QK^T and PV) or 10D
  // (backward: recomputed QK^T, dO V^T, dV, dK, dQ).
  double pairs = 0;
  for (int64_t t = 0; t < s.T; ++t) pairs += static_cast<double>(t - in.ds[static_cast<size_t>(t)] + 1);
  pairs *= static_cast<double>(s.Hq);
  const double f_ms = time_ms(fwd), b_ms = time_ms(bwd);
  std::printf("    attention T=2048 Hq=32 Hkv=8 D=128 (4 documents): forward %.3f ms (%.1f TFLOP/s), backward %.3f ms "
              "(%.1f TFLOP/s)\n",
              f_ms, pairs * 4 * s.D / (f_ms * 1e9), b_ms, pairs * 10 * s.D / (b_ms * 1e9));
}

// Argument checks run before any CUDA call, so they are tested on every machine.
TEST(cuda_attention_rejects_bad_arguments) {
  using lora::cuda::attention_backward;
  using lora::cuda::attention_backward_workspace;
  using lora::cuda::attention_forward;
  // A forward with null tensors and the given shape (the checks run before any pointer use).
  auto fwd = [](int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    return [=] {
      attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, rows, T, Hq, Hkv, D, nullptr);
    };
  };
  for (int64_t D : {0, 4, 60, 100, 264, 512}) CHECK_INVALID_ARGUMENT(fwd(1, 8, 2, 1, D), "D = " + std::to_string(D));
  CHECK_INVALID_ARGUMENT(fwd(1, 8, 6, 4, 64), "Hkv = 4");
  CHECK_INVALID_ARGUMENT(fwd(1, 8, 2, 0, 64), "Hkv = 0");
  CHECK_INVALID_ARGUMENT(fwd(-1, 8, 2, 1, 64), "rows");
  CHECK_INVALID_ARGUMENT(fwd(1, -3, 2, 1, 64), "T = -3");
  CHECK_INVALID_ARGUMENT(fwd(1, 8, 2, 1, 64), "out is null");
  CHECK_INVALID_ARGUMENT(
      [] {
        attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1,
                           8, 2, 1, 72, nullptr, nullptr);
      },
      "dq is null");
  CHECK_INVALID_ARGUMENT([] { attention_backward_workspace(1, 8, 2, 1, 12); }, "D = 12");
  // Empty batches are no-ops (nothing is launched, nothing dereferenced).
  attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 8, 2, 1, 64, nullptr);
  attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 3, 0, 2, 1, 64, nullptr);
  attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 8, 2,
                     1, 64, nullptr, nullptr);
}

TEST(cuda_attention_workspace_size) {
  using lora::cuda::attention_backward_workspace;
  // fp32 dQ accumulators and the per-(row, head, token) delta at least; under GQA also the
  // shared dK and dV accumulators.
  const size_t mha = attention_backward_workspace(2, 300, 8, 8, 128);
  CHECK(mha >= size_t(2 * 300 * 8 * 128) * 4 + size_t(2 * 8 * 300) * 4);
  const size_t gqa = attention_backward_workspace(2, 300, 8, 2, 128);
  CHECK(gqa >= size_t(2 * 300 * 8 * 128) * 4 + size_t(2 * 8 * 300) * 4 + 2 * size_t(2 * 300 * 2 * 128) * 4);
  CHECK_EQ(attention_backward_workspace(0, 300, 8, 2, 128), size_t(0));
}
