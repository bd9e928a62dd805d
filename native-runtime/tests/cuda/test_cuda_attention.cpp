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
#include "attention_check.hpp"
#include "cuda_test_util.hpp"
#include "ops/attention.hpp"

using namespace lora_test;
using namespace lora_test::attention_check;

namespace {

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
  check_forward(s, in, to_host_f32(out), to_host(lse), out_ref, lse_ref);

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
  check_backward(s, to_host_f32(dq), to_host_f32(dk), to_host_f32(dv), dq_ref, dk_ref, dv_ref);
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
  check_forward(s, in, to_host_f32(out), to_host(lse), out_ref, lse_ref);
  // The checked backward reads the CPU's out and lse, as in check_shape; the timed one the
  // GPU's own, as training does.
  {
    auto out_d = to_device_bf16(out_b);
    auto lse_d = to_device(lse_ref);
    lora::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_d.data(), lse_d.data(),
                                   q.data(), k.data(), v.data(), ds.data(), s.rows, s.T, s.Hq, s.Hkv, s.D, ws.data(),
                                   nullptr);
  }
  check_backward(s, to_host_f32(dq), to_host_f32(dk), to_host_f32(dv), dq_ref, dk_ref, dv_ref);

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
