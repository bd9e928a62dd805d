// The tensor-core attention kernels (attention_kernels.cuh) and the cross-entropy kernels
// (cross_entropy_kernels.cuh) run on the CPU: tests/cuda/emu_shim.hpp makes every CUDA
// thread a fiber, emu_mma.hpp rebuilds ldmatrix and mma.m16n8k16 from their PTX fragment
// layouts and lets cp.async copies land only at the wait that retires them, in shared memory
// that starts as NaNs. So on every machine, GPU or not, these tests check the fragment
// indexing, the masks at tile and document edges, the online softmax, the cp.async
// pipelining, the GQA atomics and the launch geometry (the plan functions attention.cu and
// cross_entropy.cu launch with), against the CPU twins ops/attention and ops/cross_entropy.
//
// What they cannot see: the timing of real hardware (a race that the cooperative schedule
// happens to order), bank conflicts, register limits and speed. test_cuda_attention.cpp and
// test_cuda_cross_entropy.cpp check the real kernels on a GPU.
//
// Tolerances are those of the GPU tests (their headers justify them): forward output
// atol 2u max|v|, rtol 2u, relative Frobenius error 2u; lse 2e-4 + 1e-5 relative; dQ, dK, dV
// atol 4u max|ref| + 1e-5, rtol 4u, Frobenius 2u, with u = 2^-8; cross-entropy loss 2e-4 +
// 1e-5 relative per row, dlogits rtol 2^-7 with a floor of 1e-6 |scale|.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cuda/common.hpp"
#include "attention_check.hpp"
#include "cuda_test_util.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "test.hpp"

#include "emu_mma.hpp"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "cuda/attention_kernels.cuh"
#include "cuda/cross_entropy_kernels.cuh"
#pragma GCC diagnostic pop

// The emulated instructions themselves, on one warp: ldmatrix (plain and transposed) and
// mma of known matrices, and a read of shared memory that no copy filled (NaN) or whose copy
// was not yet waited for.
namespace emu_mma_selftest {
// a_g: A (16 x 16, row-major), b_g: B^T (8 x 16, n x k), in global memory.
void tile_product(float* out, const uint16_t* a_g, const uint16_t* b_g, bool wait) {
  LORA_DYNAMIC_SMEM(smem);
  auto* a_s = reinterpret_cast<lora::cuda::bf16*>(smem);  // A: 16 x 16, row stride 24
  auto* b_s = a_s + 16 * 24;                  // B^T: 8 x 16 (n x k), row stride 24
  const int lane = int(threadIdx.x);
  for (int c = lane; c < 16 * 2 + 8 * 2; c += 32) {
    if (c < 32)
      emu::cp_async_16(a_s + (c / 2) * 24 + (c % 2) * 8, a_g + (c / 2) * 16 + (c % 2) * 8, true);
    else
      emu::cp_async_16(b_s + ((c - 32) / 2) * 24 + (c % 2) * 8, b_g + ((c - 32) / 2) * 16 + (c % 2) * 8, true);
  }
  emu::cp_async_commit();
  if (wait) emu::cp_async_wait_group(0);
  uint32_t a[4], b[4];
  emu::ldmatrix_x4(a, a_s + (lane & 15) * 24 + (lane >> 4) * 8, false);
  // B^T is (n x k): the cols_then_rows pattern of attention_kernels.cuh; rows 8..15 repeat
  // rows 0..7 (n only has 8) and give the second n-tile.
  emu::ldmatrix_x4(b, b_s + (lane & 7) * 24 + ((lane >> 3) & 1) * 8, false);
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  emu::mma_m16n8k16(d, a, b[0], b[1]);
  const int g = lane >> 2, c = lane & 3;
  out[g * 8 + 2 * c] = d[0];
  out[g * 8 + 2 * c + 1] = d[1];
  out[(g + 8) * 8 + 2 * c] = d[2];
  out[(g + 8) * 8 + 2 * c + 1] = d[3];
  if (!wait) emu::cp_async_wait_group(0);
}
}  // namespace emu_mma_selftest

#undef __syncthreads
#undef gridDim
#undef blockDim
#undef blockIdx
#undef threadIdx

using namespace lora_test;
using namespace lora_test::attention_check;
using lora::cuda::bf16;
namespace ak = lora::cuda::attention_kernels;
namespace ck = lora::cuda::cross_entropy_kernels;

namespace {

// Runs kernel body `fn` over the grid with `smem` bytes of dynamic shared memory; every rule
// the emulator saw broken is a failure.
void run(const std::string& what, dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  emu::faults().clear();
  emu::launch_smem(grid, block, smem, fn, what);
  for (const std::string& f : emu::faults()) record_failure(__FILE__, __LINE__, what + ": " + f);
}

// bf16 on the host: 16-byte aligned storage (the kernels read 16-byte vectors).
struct Bf16Buf {
  explicit Bf16Buf(size_t n, uint16_t fill = 0) : bits(n, fill) {}
  explicit Bf16Buf(const std::vector<float>& v) : bits(v.size()) {
    for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16_bits(v[i]);
  }
  bf16* data() { return reinterpret_cast<bf16*>(bits.data()); }
  std::vector<float> get() const {
    std::vector<float> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) out[i] = bf16_bits_to_f32(bits[i]);
    return out;
  }
  std::vector<uint16_t> bits;
};

// Forward and backward of one shape, launched as attention.cu launches them (same grids,
// block size, shared memory, workspace zeroing and conversions), against the CPU twin.
template <int DP>
void check_attention(const Shape& s, uint32_t seed) {
  using Cfg = ak::Tiles<DP>;
  const Inputs in = make_inputs(s, seed);
  const std::vector<float>&q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  const std::vector<int32_t>& ds = in.ds;
  const size_t nq = q.size(), nkv = k.size();
  std::vector<float> out_ref, lse_ref;
  cpu_forward(s, in, out_ref, lse_ref);

  Bf16Buf qb(q), kb(k), vb(v), dob(dout), out(nq, 0x7fc0);  // out starts as NaN: every element is written
  std::vector<float> lse(lse_ref.size(), NAN);
  const int T = int(s.T), Hq = int(s.Hq), Hkv = int(s.Hkv), D = int(s.D);
  const float scale_log2 = ak::kLog2e / std::sqrt(float(D));
  run("attention_forward_kernel " + describe(s), ak::forward_grid<DP>(s.rows, s.T, s.Hq), dim3(ak::kThreads),
      Cfg::kFwdSmem, [&] {
        ak::attention_forward_kernel<DP>(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), ds.data(), T, Hq,
                                         Hkv, D, scale_log2);
      });
  check_forward(s, in, out.get(), lse, out_ref, lse_ref);

  // Backward from the CPU forward's output rounded to bf16 (what the GPU path stores) and
  // its lse, so the comparison sees the backward alone.
  std::vector<float> out_b = out_ref;
  round_to_bf16(out_b);
  std::vector<float> dq_ref, dk_ref, dv_ref;
  cpu_backward(s, in, out_b, lse_ref, dq_ref, dk_ref, dv_ref);

  Bf16Buf outbb(out_b), dq(nq, 0x7fc0), dk(nkv, 0x7fc0), dv(nkv, 0x7fc0);
  const bool gqa = s.Hq != s.Hkv;
  std::vector<float> delta(lse_ref.size(), NAN), dq_acc(nq, 0.f), dk_acc(gqa ? nkv : 0, 0.f),
      dv_acc(gqa ? nkv : 0, 0.f);
  const int64_t items = s.rows * s.T * s.Hq;
  run("attention_delta_kernel", dim3(ak::delta_grid(items)), dim3(ak::kDeltaThreads), 0,
      [&] { ak::attention_delta_kernel(delta.data(), dob.data(), outbb.data(), items, T, Hq, D); });
  const float scale = 1.0f / std::sqrt(float(D));
  run("attention_backward_kernel " + describe(s), ak::backward_grid<DP>(s.rows, s.T, s.Hq), dim3(ak::kThreads),
      Cfg::kBwdSmem, [&] {
        ak::attention_backward_kernel<DP>(dq_acc.data(), dk.data(), dv.data(), gqa ? dk_acc.data() : nullptr,
                                          gqa ? dv_acc.data() : nullptr, gqa, dob.data(), lse.data(), delta.data(),
                                          qb.data(), kb.data(), vb.data(), ds.data(), T, Hq, Hkv, D, scale,
                                          scale * ak::kLog2e);
      });
  auto convert = [&](bf16* dst, const std::vector<float>& src) {
    const int64_t n = int64_t(src.size());
    run("f32_to_bf16_kernel", dim3(ak::convert_grid(n)), dim3(ak::kConvertThreads), 0,
        [&] { ak::f32_to_bf16_kernel(dst, src.data(), n); });
  };
  convert(dq.data(), dq_acc);
  if (gqa) {
    convert(dk.data(), dk_acc);
    convert(dv.data(), dv_acc);
  }
  check_backward(s, dq.get(), dk.get(), dv.get(), dq_ref, dk_ref, dv_ref);
}

std::vector<float> normal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

// The rows kernel on (n, V) logits with row stride ld, against ops/cross_entropy. In place
// (as the LM head runs it), ld is V rounded up to 8 and the bf16 gradient overwrites the
// fp32 row (bf16 stride 2 ld); then the fp64 sum of the row losses.
void check_ce_rows(int64_t n, int64_t V, float scale, bool in_place, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<float> ref_logits = [&] {
    std::vector<float> x = normal(static_cast<size_t>(n * V), 3.0f, rng);
    x[static_cast<size_t>(V / 2)] = 40.f;  // row 0: a confident prediction away from the target
    return x;
  }();
  std::vector<int32_t> targets(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> tid(0, static_cast<int32_t>(V - 1));
  for (auto& t : targets) t = tid(rng);
  if (n > 1) targets[1] = static_cast<int32_t>(V - 1);

  const int64_t ld = in_place ? (V + 7) / 8 * 8 : V;
  std::vector<float> logits(static_cast<size_t>(n * ld), NAN);
  for (int64_t r = 0; r < n; ++r)
    std::copy(ref_logits.begin() + r * V, ref_logits.begin() + (r + 1) * V, logits.begin() + r * ld);
  Bf16Buf separate(in_place ? 0 : static_cast<size_t>(n * V), 0x7fc0);
  bf16* dl = in_place ? reinterpret_cast<bf16*>(logits.data()) : separate.data();
  const int64_t dl_ld = in_place ? 2 * ld : V;
  std::vector<float> loss(static_cast<size_t>(n), NAN);
  const std::string what = "cross_entropy_rows_kernel V=" + std::to_string(V) + (in_place ? " in place" : "");
  run(what, dim3(ck::rows_grid(n)), dim3(ck::kRowThreads), 0, [&] {
    ck::cross_entropy_rows_kernel(loss.data(), dl, dl_ld, logits.data(), ld, targets.data(), int(V), scale);
  });
  std::vector<double> total(1, 0.5);  // the kernel adds to what is there
  run("sum_losses_kernel", dim3(1), dim3(ck::kSumThreads), 0,
      [&] { ck::sum_losses_kernel(total.data(), loss.data(), int(n)); });

  std::vector<float> dl_ref(ref_logits.size()), dl_got(ref_logits.size());
  lora::cross_entropy_backward(dl_ref.data(), ref_logits.data(), targets.data(), n, V, scale);
  double sum = 0;
  for (int64_t r = 0; r < n; ++r) {
    const double ref = lora::cross_entropy_forward(ref_logits.data() + r * V, targets.data() + r, 1, V);
    const float got = loss[static_cast<size_t>(r)];
    sum += got;
    if (!(std::fabs(got - ref) <= 2e-4 + 1e-5 * std::fabs(ref)))
      record_failure(__FILE__, __LINE__,
                     what + ": loss row " + std::to_string(r) + ": " + std::to_string(got) + " vs " +
                         std::to_string(ref));
    for (int64_t i = 0; i < V; ++i) {
      uint16_t b;
      std::memcpy(&b, dl + r * dl_ld + i, 2);
      dl_got[static_cast<size_t>(r * V + i)] = bf16_bits_to_f32(b);
    }
  }
  const double w = worst_ratio(dl_got, dl_ref, 1e-6 * std::fabs(scale), 2.0 / 256);
  if (!(w <= 1.0)) record_failure(__FILE__, __LINE__, what + ": dlogits worst ratio " + std::to_string(w));
  // One block sums in a fixed order in fp64: the float row losses add up almost exactly.
  CHECK_NEAR(total[0] - 0.5, sum, 1e-9, 1e-9);
}

}  // namespace

TEST(cuda_emulator_mma_ldmatrix_cp_async) {
  // A(r, k) = k - r, B(k, n) = n if k == n else 0 (n < 8): (A B)(r, n) = n (n - r).
  alignas(16) uint16_t a_g[16 * 16], b_g[8 * 16];
  for (int i = 0; i < 256; ++i) a_g[i] = f32_to_bf16_bits(float(i % 16 - i / 16));
  for (int i = 0; i < 128; ++i) b_g[i] = f32_to_bf16_bits(i % 16 == i / 16 ? float(i / 16) : 0.f);
  std::vector<float> out(16 * 8, -1.f);
  run("tile_product", dim3(1), dim3(32), 2 * 16 * 24 * 2, [&] { emu_mma_selftest::tile_product(out.data(), a_g, b_g, true); });
  bool exact = true;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) exact = exact && out[size_t(r * 8 + n)] == float(n * (n - r));
  CHECK(exact);
  // Without the wait, ldmatrix reads the NaNs shared memory starts with.
  run("tile_product", dim3(1), dim3(32), 2 * 16 * 24 * 2, [&] { emu_mma_selftest::tile_product(out.data(), a_g, b_g, false); });
  CHECK(std::isnan(out[9]));
  // Too little shared memory: the copies and row addresses fall outside it.
  emu::faults().clear();
  emu::launch_smem(dim3(1), dim3(32), 256, [&] { emu_mma_selftest::tile_product(out.data(), a_g, b_g, true); });
  CHECK(!emu::faults().empty());
}

TEST(cuda_attention_emulated_vs_cpu) {
  // Each shape twice: warps in step and copies landing at their waits (a missing wait reads
  // NaNs); then warp 0 running ahead to each barrier with copies landing at issue (a tile
  // reloaded without the barrier that waits for the other warps' reads is overwritten under
  // them).
  for (bool ahead : {false, true}) {
    emu::mma_unit().set_land_at_issue(ahead);
    emu::runner().set_lowest_first(ahead);
    check_attention<32>({1, 1, 1, 1, 8}, 1);      // a single token
    check_attention<32>({2, 5, 2, 1, 8}, 2);      // GQA 2:1, T below one tile
    check_attention<64>({2, 70, 4, 2, 64}, 3);    // GQA 2:1, two query and key tiles, documents
    check_attention<64>({2, 70, 2, 2, 64}, 4);    // plain multi-head
    check_attention<64>({3, 130, 2, 1, 64}, 8);   // three query tiles; documents starting at tile edges
    check_attention<80>({2, 70, 2, 1, 80}, 5);    // a head dim that is not a power of two
    check_attention<80>({1, 5, 1, 1, 80}, 6);
    check_attention<160>({2, 45, 2, 1, 152}, 7);  // padded columns, key tiles of 32, dK/dV split over 2 warps
    // The remaining instantiations.
    check_attention<96>({1, 70, 2, 2, 96}, 9);
    check_attention<128>({2, 70, 2, 1, 128}, 10);
    check_attention<192>({1, 45, 2, 2, 184}, 11);
    check_attention<256>({2, 70, 2, 1, 256}, 12);
  }
  emu::mma_unit().set_land_at_issue(false);
  emu::runner().set_lowest_first(false);
}

TEST(cuda_cross_entropy_emulated_vs_cpu) {
  // Warps in step, then warp 0 running ahead to every barrier (a missing barrier in the
  // in-place pass lets early threads overwrite logits later threads still read).
  for (bool ahead : {false, true}) {
    emu::runner().set_lowest_first(ahead);
    for (bool in_place : {false, true}) {
      check_ce_rows(3, 1, 1.0f, in_place, 1);
      check_ce_rows(3, 5, 0.5f, in_place, 2);
      check_ce_rows(5, 1001, 1.0f / 37, in_place, 3);  // strides of 512 with a partial last one
      check_ce_rows(2, 262147, 2.0f, in_place, 4);     // past 256k: 512 values per thread
    }
  }
  emu::runner().set_lowest_first(false);
}
