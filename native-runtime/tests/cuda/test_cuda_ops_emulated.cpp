// The kernels of dequant.cu, norms.cu, rope.cu, activations.cu, elementwise.cu and adamw.cu
// run on the CPU (tests/cuda/emu_shim.hpp: every CUDA thread a fiber, barriers and warp
// shuffles as rendezvous) and compared with their CPU twins, so their indexing, bounds,
// vector/scalar splits and reductions are checked on every machine, GPU or not. The grids
// come from the launch plans the launchers use (plan_dequant, plan_map, map4_grid, ...).
// Host floating point is not the GPU's (no FMA contraction, glibc's expf/tanhf/sincosf), so
// the tolerances are those of test_cuda_ops.cpp, which compares the real kernels on a GPU;
// dequantization and data movements are compared bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "cuda/common.hpp"
#include "cuda_test_util.hpp"
#include "gradcheck.hpp"
#include "ops_check.hpp"
#include "ops/adamw.hpp"
#include "ops/gelu.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"
#include "quant/quant.hpp"
#include "test.hpp"

#include "emu_shim.hpp"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "cuda/activations_kernels.cuh"
#include "cuda/adamw_kernels.cuh"
#include "cuda/dequant_kernels.cuh"
#include "cuda/elementwise_kernels.cuh"
#include "cuda/norms_kernels.cuh"
#include "cuda/rope_kernels.cuh"
#pragma GCC diagnostic pop

// Kernels for the emulator's own test.
namespace emu_selftest {
__global__ void lone_barrier(int* hits) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  ++*hits;
}
__global__ void shuffle_after_return(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
__global__ void split_warp(float* out) {
  if (threadIdx.x == 0)
    __syncthreads();  // lanes 1..31 wait for lane 0 in the shuffle below: neither side can go on
  else
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}
__global__ void reduce(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float warp_sums[4];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) *out = warp_sums[0] + warp_sums[1] + warp_sums[2] + warp_sums[3] + blockIdx.x;
}
}  // namespace emu_selftest

#undef __syncthreads
#undef gridDim
#undef blockDim
#undef blockIdx
#undef threadIdx

using namespace lora_test;
using lora::cuda::bf16;

namespace {

// Runs kernel body `fn` over the grid; every rule the emulator saw broken is a failure.
void run(const std::string& what, dim3 grid, dim3 block, const std::function<void()>& fn) {
  emu::faults().clear();
  emu::launch(grid, block, fn);
  for (const std::string& f : emu::faults()) record_failure(__FILE__, __LINE__, what + ": " + f);
}

// bf16 storage on the host: 16-byte aligned from the allocator, plus one spare element so
// that p + 1 is a misaligned view of the same size.
struct Bf16Buf {
  explicit Bf16Buf(size_t n) : bits(n + 1, 0) {}
  bf16* at(int offset) { return reinterpret_cast<bf16*>(bits.data() + offset); }
  void set(int offset, const std::vector<float>& v) {
    for (size_t i = 0; i < v.size(); ++i) bits[i + static_cast<size_t>(offset)] = f32_to_bf16_bits(v[i]);
  }
  std::vector<float> get(int offset, size_t n) const {
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_f32(bits[i + static_cast<size_t>(offset)]);
    return out;
  }
  std::vector<uint16_t> raw(int offset, size_t n) const {
    return std::vector<uint16_t>(bits.begin() + offset, bits.begin() + offset + static_cast<std::ptrdiff_t>(n));
  }
  std::vector<uint16_t> bits;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// The emulator itself: a barrier nobody else reaches, and a shuffle after lanes returned,
// are reported (a kernel with either bug would hang or read garbage on a GPU).


TEST(cuda_emulator_checks_barriers_and_shuffles) {
  // Returned threads no longer count at a barrier (sm_70+): the 127 others pass it.
  int hits = 0;
  emu::faults().clear();
  emu::launch(dim3(1), dim3(128), [&] { emu_selftest::lone_barrier(&hits); });
  CHECK(emu::faults().empty());
  CHECK_EQ(hits, 127);
  std::vector<float> out(128, 0.f);
  emu::faults().clear();
  emu::launch(dim3(1), dim3(128), [&] { emu_selftest::shuffle_after_return(out.data()); });
  CHECK(!emu::faults().empty());
  emu::faults().clear();
  emu::launch(dim3(2), dim3(64), [&] { emu_selftest::split_warp(out.data()); });
  CHECK(!emu::faults().empty());
  // A shuffle tree and a shared-memory combine: 0 + 1 + ... + 127 plus the block index.
  float sum = 0.f;
  for (unsigned b : {0u, 2u}) {
    run("reduce", dim3(3), dim3(128), [&] {
      if (emu::block_idx.x == b) emu_selftest::reduce(&sum);
    });
    CHECK_EQ(sum, 8128.0f + static_cast<float>(b));
  }
}

// ---------------------------------------------------------------------------------------
// Dequantization: bit for bit the bf16 rounding of dequantize_rows.

namespace {

// What dequantize_to_bf16 launches, for a matrix whose codes and scales are host arrays.
void emulate_dequant(const std::string& what, bf16* out, const lora::QuantizedMatrix& m) {
  namespace k = lora::cuda::dequant_kernels;
  const int64_t n = m.rows * m.cols;
  const bool four_bit = m.type == lora::QuantType::NF4 || m.type == lora::QuantType::FP4;
  const k::Scales s{m.absmax.data(), m.absmax_q.data(), m.absmax_scale.data(), m.absmax_mean, m.double_quant};
  const k::CodeBook book = k::code_book(four_bit ? m.type : lora::QuantType::NF4);
  const uint8_t* codes = m.raw.data();
  const k::DequantPlan plan = k::plan_dequant(n, m.block_size, four_bit, out, codes);
  const k::ChunkBlocks blocks = k::chunk_blocks(m.block_size);
  if (plan.chunks > 0) {
    run(what + " vector", dim3(plan.vector_grid), dim3(k::kThreads), [&] {
      if (four_bit)
        k::dequant_4bit_bf16(out, codes, s, book, plan.chunks, blocks);
      else
        k::dequant_int8_bf16(out, codes, s, plan.chunks, blocks);
    });
  }
  if (plan.tail_grid > 0) {
    run(what + " scalar", dim3(plan.tail_grid), dim3(k::kThreads), [&] {
      k::dequant_bf16_scalar(out, codes, s, book, four_bit, plan.tail_begin, n, m.block_size);
    });
  }
}

}  // namespace

TEST(cuda_dequant_kernels_emulated_bit_exact) {
  namespace k = lora::cuda::dequant_kernels;
  struct Shape {
    int64_t rows, cols;
    int block;
  };
  // The device test's shapes, smaller: a partial last quantization block and a last warp
  // with only some of its 64 chunks (100 x 37); an odd count with a lone high nibble and a
  // 7-element tail (7 x 9); blocks 48 and 40 (multiples of 8, no powers of two: the
  // division path of ChunkBlocks); block 36 (not a multiple of 8: per-element only);
  // 600 x 8 = 75 blocks of 64... and 300 x 64 = 300 blocks, two double-quant groups.
  const Shape shapes[] = {{100, 37, 64}, {100, 37, 128}, {7, 9, 64}, {96, 50, 48},
                          {33, 21, 40},  {33, 21, 36},   {300, 64, 64}, {1, 1, 64}};
  uint32_t seed = 100;
  for (const Shape& sh : shapes) {
    const std::vector<float> w = checkpoint_like(sh.rows * sh.cols, seed++);
    for (lora::QuantType type : {lora::QuantType::NF4, lora::QuantType::FP4, lora::QuantType::Int8}) {
      for (bool dq : {false, true}) {
        const lora::QuantizedMatrix m = lora::quantize_matrix(w.data(), sh.rows, sh.cols, type, sh.block, dq);
        std::vector<float> want(w.size());
        lora::dequantize_rows(m, 0, m.rows, want.data());
        std::ostringstream name;
        name << lora::quant_name(type) << (dq ? "+dq" : "") << " " << sh.rows << "x" << sh.cols << " block "
             << sh.block;
        for (int offset : {0, 1}) {
          Bf16Buf out(want.size());
          emulate_dequant(name.str(), out.at(offset), m);
          check_bits(name.str() + (offset ? " (unaligned out)" : ""), out.raw(offset, want.size()), want);
        }
      }
    }
  }
  // The plan: vector chunks only with block % 8 == 0 and aligned pointers, the rest per element.
  alignas(16) static uint8_t buf[64];
  k::DequantPlan p = k::plan_dequant(37000, 64, true, buf, buf);
  CHECK_EQ(p.chunks, int64_t(4625));
  CHECK_EQ(p.vector_grid, 10u);  // 512 chunks per block of 8 warps
  CHECK_EQ(p.tail_begin, int64_t(37000));
  CHECK_EQ(p.tail_grid, 0u);
  p = k::plan_dequant(63, 64, false, buf, buf + 4);  // int8 codes need 8-byte alignment
  CHECK_EQ(p.chunks, int64_t(0));
  CHECK_EQ(p.tail_grid, 1u);
  p = k::plan_dequant(63, 64, true, buf, buf + 4);
  CHECK_EQ(p.chunks, int64_t(7));
  CHECK_EQ(p.tail_begin, int64_t(56));
  p = k::plan_dequant(1000, 36, true, buf, buf);
  CHECK_EQ(p.chunks, int64_t(0));
  CHECK_EQ(p.tail_grid, 4u);
  CHECK_EQ(k::chunk_blocks(64).shift, 3);
  CHECK_EQ(k::chunk_blocks(48).shift, -1);
  CHECK_EQ(k::chunk_blocks(48).of(13), int64_t(2));
}

// ---------------------------------------------------------------------------------------
// Normalisations: a warp per row, float4 and scalar paths.

namespace {
struct RowShape {
  int64_t T, C;
};
// T = 1; C = 72 (float4, 18 of 32 lanes busy); C = 75 (scalar); 9 rows (the last block of
// 4 rows has one warp busy, three return before any shuffle); 1000 channels (many laps);
// C = 8 (few lanes busy).
const RowShape kRowShapes[] = {{1, 72}, {6, 75}, {9, 1000}, {3, 1001}, {9, 8}, {5, 3}};
}  // namespace

TEST(cuda_norm_kernels_emulated_match_cpu) {
  namespace k = lora::cuda::norms_kernels;
  uint32_t seed = 200;
  for (const RowShape& s : kRowShapes) {
    const int64_t T = s.T, C = s.C, n = T * C;
    const float eps = 1e-5f;
    for (bool vec : {true, false}) {
      if (vec && C % 4 != 0) continue;
      const std::string name = " T=" + std::to_string(T) + " C=" + std::to_string(C) + (vec ? " float4" : " scalar");
      const dim3 grid(k::grid_for(T)), block(k::kBlock);
      {  // RMSNorm
        const std::vector<float> x = random_vec(n, seed++, -2.f, 2.f), w = random_vec(C, seed++, 0.5f, 1.5f);
        const std::vector<float> dy = random_vec(n, seed++), dx0 = random_vec(n, seed++);
        std::vector<float> y_cpu(n), rstd_cpu(T), dx_cpu = dx0;
        lora::rmsnorm_forward(y_cpu.data(), rstd_cpu.data(), x.data(), w.data(), T, C, eps);
        lora::rmsnorm_backward(dx_cpu.data(), dy.data(), x.data(), w.data(), rstd_cpu.data(), T, C);
        Bf16Buf y(n);
        std::vector<float> rstd(T), dx = dx0;
        run("rmsnorm forward" + name, grid, block, [&] {
          if (vec)
            k::rmsnorm_forward_kernel<true>(y.at(0), rstd.data(), x.data(), w.data(), T, C, eps);
          else
            k::rmsnorm_forward_kernel<false>(y.at(0), rstd.data(), x.data(), w.data(), T, C, eps);
        });
        run("rmsnorm backward" + name, grid, block, [&] {
          if (vec)
            k::rmsnorm_backward_kernel<true>(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), T, C);
          else
            k::rmsnorm_backward_kernel<false>(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), T, C);
        });
        check_close("rmsnorm rstd" + name, rstd, rstd_cpu, 0, 1e-5);
        check_close("rmsnorm y" + name, y.get(0, n), y_cpu, 1e-7, kBf16Rel + 2e-5);
        check_close("rmsnorm dx" + name, dx, dx_cpu, 1e-5 * max_abs_diff(dx_cpu, dx0), 1e-5);
        // rstd may be null (the forward of a frozen layer that keeps no statistics).
        Bf16Buf y2(n);
        run("rmsnorm forward without rstd" + name, grid, block, [&] {
          if (vec)
            k::rmsnorm_forward_kernel<true>(y2.at(0), nullptr, x.data(), w.data(), T, C, eps);
          else
            k::rmsnorm_forward_kernel<false>(y2.at(0), nullptr, x.data(), w.data(), T, C, eps);
        });
        CHECK(y2.bits == y.bits);
      }
      {  // LayerNorm: a mean far from zero next to a unit spread
        const std::vector<float> x = random_vec(n, seed++, 2.f, 4.f), w = random_vec(C, seed++, 0.5f, 1.5f);
        const std::vector<float> b = random_vec(C, seed++, -0.5f, 0.5f);
        const std::vector<float> dy = random_vec(n, seed++), dx0 = random_vec(n, seed++);
        std::vector<float> y_cpu(n), mean_cpu(T), rstd_cpu(T), dx_cpu = dx0;
        lora::layernorm_forward(y_cpu.data(), mean_cpu.data(), rstd_cpu.data(), x.data(), w.data(), b.data(), T, C,
                                eps);
        lora::layernorm_backward(dx_cpu.data(), dy.data(), x.data(), w.data(), mean_cpu.data(), rstd_cpu.data(), T,
                                 C);
        Bf16Buf y(n);
        std::vector<float> mean(T), rstd(T), dx = dx0;
        run("layernorm forward" + name, grid, block, [&] {
          if (vec)
            k::layernorm_forward_kernel<true>(y.at(0), mean.data(), rstd.data(), x.data(), w.data(), b.data(), T, C,
                                              eps);
          else
            k::layernorm_forward_kernel<false>(y.at(0), mean.data(), rstd.data(), x.data(), w.data(), b.data(), T, C,
                                               eps);
        });
        run("layernorm backward" + name, grid, block, [&] {
          if (vec)
            k::layernorm_backward_kernel<true>(dx.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(), T,
                                               C);
          else
            k::layernorm_backward_kernel<false>(dx.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                                                T, C);
        });
        check_close("layernorm mean" + name, mean, mean_cpu, 0, 2e-6);
        check_close("layernorm rstd" + name, rstd, rstd_cpu, 0, 2e-5);
        check_close("layernorm y" + name, y.get(0, n), y_cpu, 4e-5, kBf16Rel + 2e-5);
        check_close("layernorm dx" + name, dx, dx_cpu, 2e-5 * max_abs_diff(dx_cpu, dx0), 1e-5);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// RoPE: two pairs per thread (bf16x2) and one pair per thread.

TEST(cuda_rope_kernels_emulated_match_cpu) {
  namespace k = lora::cuda::rope_kernels;
  struct Case {
    int64_t T, H, D;
    const char* scaling;
  };
  // D = 128 with 3 heads (threadIdx.y 3 idle), D = 64 llama3 over 8 KV heads, D = 6 (odd
  // half: x1 kernel), D = 2, D = 132 (half 66: a second lap of the pair loop, x2 kernel).
  const Case cases[] = {{3, 3, 128, ""}, {2, 8, 64, "llama3"}, {7, 5, 6, ""}, {4, 1, 2, "linear"}, {1, 5, 132, ""}};
  uint32_t seed = 400;
  for (const Case& c : cases) {
    const auto [inv_freq, pos] = rope_inputs(c.T, c.D, c.scaling);
    const int64_t n = c.T * c.H * c.D;
    for (bool backward : {false, true}) {
      for (int offset : {0, 1}) {
        const std::vector<float> x = rand_bf16(n, seed++);
        std::vector<float> want = x;
        if (backward)
          lora::rope_backward(want.data(), pos.data(), inv_freq.data(), c.T, c.H, c.D);
        else
          lora::rope_forward(want.data(), pos.data(), inv_freq.data(), c.T, c.H, c.D);
        Bf16Buf buf(n);
        buf.set(offset, x);
        bf16* p = buf.at(offset);
        const bool x2 = k::pairs_of_two(c.D, p);
        CHECK(x2 == ((c.D / 2) % 2 == 0 && offset == 0));
        const float sign = backward ? -1.0f : 1.0f;
        std::ostringstream name;
        name << "rope " << (backward ? "backward" : "forward") << " T=" << c.T << " H=" << c.H << " D=" << c.D
             << (x2 ? " x2" : " x1");
        run(name.str(), dim3(static_cast<unsigned>(c.T)), dim3(k::kPairThreads, k::kHeadThreads), [&] {
          if (x2)
            k::rope_x2_kernel(p, pos.data(), inv_freq.data(), c.H, c.D, sign);
          else
            k::rope_x1_kernel(p, pos.data(), inv_freq.data(), c.H, c.D, sign);
        });
        check_close(name.str(), buf.get(offset, n), want, 2e-6, kBf16Rel);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Activations: 8 elements per thread plus a per-element tail.

namespace {
template <class Op, int NIN, int NOUT>
void emulate_map(const std::string& what, const lora::cuda::activations_kernels::Ptrs<NIN, NOUT>& p, int64_t n) {
  namespace k = lora::cuda::activations_kernels;
  bool vec = true;
  for (int a = 0; a < NIN; ++a) vec = vec && reinterpret_cast<uintptr_t>(p.in[a]) % 16 == 0;
  for (int b = 0; b < NOUT; ++b) vec = vec && reinterpret_cast<uintptr_t>(p.out[b]) % 16 == 0;
  const k::MapPlan plan = k::plan_map(n, vec);
  if (plan.chunks > 0)
    run(what + " x8", dim3(plan.vector_grid), dim3(k::kThreads),
        [&] { k::map_x8_kernel<Op, NIN, NOUT>(p, plan.chunks); });
  if (plan.tail_grid > 0)
    run(what + " x1", dim3(plan.tail_grid), dim3(k::kThreads),
        [&] { k::map_x1_kernel<Op, NIN, NOUT>(p, plan.tail_begin, n); });
}
}  // namespace

TEST(cuda_activation_kernels_emulated_match_cpu) {
  namespace k = lora::cuda::activations_kernels;
  uint32_t seed = 500;
  // 2049 = 256 chunks + 1 tail element (and more than one block of 256 threads in the
  // per-element kernel when unaligned); 7: no full chunk; 8: one chunk, no tail; 1.
  for (int64_t n : {int64_t(2049), int64_t(7), int64_t(8), int64_t(1)}) {
    for (int offset : {0, 1}) {
      const std::vector<float> g = rand_bf16(n, seed++, -6.f, 6.f), u = rand_bf16(n, seed++, -2.f, 2.f);
      const std::vector<float> dh = rand_bf16(n, seed++);
      const std::string tag = " n=" + std::to_string(n) + (offset ? " unaligned" : "");
      Bf16Buf bg(n), bu(n), bdh(n), h(n), dg(n), du(n);
      bg.set(offset, g);
      bu.set(offset, u);
      bdh.set(offset, dh);
      std::vector<float> h_cpu(n), dg_cpu(n), du_cpu(n);
      lora::swiglu_forward(h_cpu.data(), g.data(), u.data(), n);
      lora::swiglu_backward(dg_cpu.data(), du_cpu.data(), dh.data(), g.data(), u.data(), n);
      emulate_map<k::SwigluForward, 2, 1>("swiglu forward" + tag, {{bg.at(offset), bu.at(offset)}, {h.at(offset)}}, n);
      emulate_map<k::SwigluBackward, 3, 2>(
          "swiglu backward" + tag, {{bdh.at(offset), bg.at(offset), bu.at(offset)}, {dg.at(offset), du.at(offset)}}, n);
      check_close("swiglu forward" + tag, h.get(offset, n), h_cpu, 1e-6, kBf16Rel + 4e-6);
      check_close("swiglu backward dg" + tag, dg.get(offset, n), dg_cpu, 5e-6, kBf16Rel + 1e-5);
      check_close("swiglu backward du" + tag, du.get(offset, n), du_cpu, 1e-6, kBf16Rel + 4e-6);
      // The untouched spare element stays zero: nothing is written past n.
      CHECK_EQ(h.bits[offset ? 0 : static_cast<size_t>(n)], uint16_t(0));

      // GELU in place (h = x, dx = dh), as the GPT-2 MLP calls it.
      const std::vector<float> x = rand_bf16(n, seed++, -5.f, 5.f);
      std::vector<float> gelu_cpu(n), dgelu_cpu(n);
      lora::gelu_forward(gelu_cpu.data(), x.data(), n);
      lora::gelu_backward(dgelu_cpu.data(), dh.data(), x.data(), n);
      Bf16Buf bx(n), inout(n);
      bx.set(offset, x);
      inout.set(offset, x);
      emulate_map<k::GeluForward, 1, 1>("gelu forward" + tag, {{inout.at(offset)}, {inout.at(offset)}}, n);
      check_close("gelu forward in place" + tag, inout.get(offset, n), gelu_cpu, 2e-6, kBf16Rel + 4e-6);
      inout.set(offset, dh);
      emulate_map<k::GeluBackward, 2, 1>("gelu backward" + tag, {{inout.at(offset), bx.at(offset)}, {inout.at(offset)}},
                                         n);
      check_close("gelu backward in place" + tag, inout.get(offset, n), dgelu_cpu, 1e-5, kBf16Rel + 1e-5);
    }
  }
  const k::MapPlan p = k::plan_map(4097, true);
  CHECK_EQ(p.chunks, int64_t(512));
  CHECK_EQ(p.vector_grid, 2u);
  CHECK_EQ(p.tail_begin, int64_t(4096));
  CHECK_EQ(p.tail_grid, 1u);
  const k::MapPlan q = k::plan_map(4097, false);
  CHECK_EQ(q.chunks, int64_t(0));
  CHECK_EQ(q.tail_grid, 17u);
}

// ---------------------------------------------------------------------------------------
// Elementwise maps, embeddings, gathers and scatters (exact), and dropout (the CPU's mask).

namespace {
template <class Op>
void emulate_map4(const std::string& what, const Op& op, int64_t n, bool vec) {
  namespace k = lora::cuda::elementwise_kernels;
  run(what, dim3(k::map4_grid(n)), dim3(k::kThreads), [&] {
    if (vec)
      k::map4_kernel<Op, true>(op, n);
    else
      k::map4_kernel<Op, false>(op, n);
  });
}
bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }
}  // namespace

TEST(cuda_elementwise_kernels_emulated_exact) {
  namespace k = lora::cuda::elementwise_kernels;
  uint32_t seed = 600;
  for (int64_t n : {int64_t(1031), int64_t(3), int64_t(1)}) {
    for (int offset : {0, 1}) {
      const std::string tag = " n=" + std::to_string(n) + (offset ? " unaligned" : "");
      const std::vector<float> a = random_vec(n, seed++, -100.f, 100.f);
      const std::vector<float> b = rand_bf16(n, seed++, -100.f, 100.f);
      std::vector<float> fa(n + 1), fy(n + 1);
      std::copy(a.begin(), a.end(), fa.begin() + offset);
      Bf16Buf hb(n);
      float* pa = fa.data() + offset;
      float* py = fy.data() + offset;
      bf16* pb = hb.at(offset);

      emulate_map4("cast_f32_to_bf16" + tag, k::Cast<bf16, float>{pb, pa}, n, aligned(pb, 8) && aligned(pa, 16));
      check_bits("cast_f32_to_bf16" + tag, hb.raw(offset, n), a);
      hb.set(offset, b);
      emulate_map4("cast_bf16_to_f32" + tag, k::Cast<float, bf16>{py, pb}, n, aligned(py, 16) && aligned(pb, 8));
      check_close("cast_bf16_to_f32" + tag, std::vector<float>(py, py + n), b, 0, 0);

      std::vector<float> sum(n);
      for (int64_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
      emulate_map4("add_f32_bf16" + tag, k::AddF32Bf16{pa, pa, pb}, n,
                   aligned(pa, 16) && aligned(pb, 8));  // y = a in place
      check_close("add_f32_bf16 in place" + tag, std::vector<float>(pa, pa + n), sum, 0, 0);
    }
  }

  // Biases: N % 4 == 0 vectorises; the float4 read of bias[i % N] must stay in one row.
  for (const RowShape& s : {RowShape{3, 72}, RowShape{5, 75}, RowShape{1, 4}, RowShape{7, 1}}) {
    const int64_t T = s.T, N = s.C, n = T * N;
    const std::string tag = " T=" + std::to_string(T) + " N=" + std::to_string(N);
    const std::vector<float> y = rand_bf16(n, seed++), bias = random_vec(N, seed++);
    std::vector<float> yf = random_vec(n, seed++);
    std::vector<float> want_bf(n), want_f(n);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < N; ++j) {
        want_bf[t * N + j] = y[t * N + j] + bias[j];
        want_f[t * N + j] = yf[t * N + j] + bias[j];
      }
    Bf16Buf by(n);
    by.set(0, y);
    emulate_map4("add_bias_bf16" + tag, k::AddBias<bf16>{by.at(0), bias.data(), N}, n, N % 4 == 0);
    check_bits("add_bias_bf16" + tag, by.raw(0, n), want_bf);
    emulate_map4("add_bias_f32" + tag, k::AddBias<float>{yf.data(), bias.data(), N}, n, N % 4 == 0);
    check_close("add_bias_f32" + tag, yf, want_f, 0, 0);
  }

  for (int64_t C : {int64_t(72), int64_t(75), int64_t(300)}) {
    const int64_t V = 50, P = 40, T = 9;
    const std::string tag = " C=" + std::to_string(C);
    const std::vector<float> table = rand_bf16(V * C, seed++), pos_table = rand_bf16(P * C, seed++);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 13, 1, 48, 2, 30};
    const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 39, 3, 4, 5};
    std::vector<float> want_tok(T * C), want_gpt2(T * C);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        want_tok[t * C + c] = table[ids[t] * C + c];
        want_gpt2[t * C + c] = table[ids[t] * C + c] + pos_table[pos[t] * C + c];
      }
    Bf16Buf btable(V * C), bpos(P * C);
    btable.set(0, table);
    bpos.set(0, pos_table);
    const bool vec4 = C % 4 == 0;
    for (bool gpt2 : {false, true}) {
      std::vector<float> out(T * C, -1.f);
      const bf16* pt = gpt2 ? bpos.at(0) : nullptr;
      run("embedding" + tag, dim3(static_cast<unsigned>(T)), dim3(k::kRowThreads), [&] {
        if (vec4)
          k::embedding_kernel<true>(out.data(), ids.data(), btable.at(0), pos.data(), pt, C);
        else
          k::embedding_kernel<false>(out.data(), ids.data(), btable.at(0), pos.data(), pt, C);
      });
      check_close((gpt2 ? "embedding + positions" : "embedding") + tag, out, gpt2 ? want_gpt2 : want_tok, 0, 0);
    }

    const std::vector<int64_t> index = {5, 0, 49, 17, 3};
    const int64_t R = static_cast<int64_t>(index.size());
    Bf16Buf gathered(R * C);
    run("gather_rows_bf16" + tag, dim3(static_cast<unsigned>(R)), dim3(k::kRowThreads), [&] {
      if (C % 8 == 0)
        k::gather_rows_kernel<true>(gathered.at(0), btable.at(0), index.data(), C);
      else
        k::gather_rows_kernel<false>(gathered.at(0), btable.at(0), index.data(), C);
    });
    std::vector<float> want_rows(R * C);
    for (int64_t i = 0; i < R; ++i)
      for (int64_t c = 0; c < C; ++c) want_rows[i * C + c] = table[index[i] * C + c];
    check_close("gather_rows_bf16" + tag, gathered.get(0, R * C), want_rows, 0, 0);

    std::vector<float> dtab = random_vec(V * C, seed++);
    const std::vector<float> d = random_vec(R * C, seed++);
    std::vector<float> want_scatter = dtab;
    for (int64_t i = 0; i < R; ++i)
      for (int64_t c = 0; c < C; ++c) want_scatter[index[i] * C + c] += d[i * C + c];
    run("scatter_add_rows_f32" + tag, dim3(static_cast<unsigned>(R)), dim3(k::kRowThreads), [&] {
      if (vec4)
        k::scatter_add_rows_kernel<true>(dtab.data(), d.data(), index.data(), C);
      else
        k::scatter_add_rows_kernel<false>(dtab.data(), d.data(), index.data(), C);
    });
    check_close("scatter_add_rows_f32" + tag, dtab, want_scatter, 0, 0);
  }
  CHECK_EQ(k::map4_grid(1), 1u);
  CHECK_EQ(k::map4_grid(1024), 1u);
  CHECK_EQ(k::map4_grid(1025), 2u);
}

TEST(cuda_dropout_kernels_emulated_match_cpu_mask) {
  namespace k = lora::cuda::elementwise_kernels;
  const int64_t T = 7, in = 333, n = T * in;
  const uint64_t key = lora::rng_key(lora::rng_key(42, 0xD0D0ull, 3, 1), 5, 2);
  for (float p : {0.05f, 0.5f, 0.0f}) {
    for (int offset : {0, 1}) {
      const std::string tag = " p=" + std::to_string(p) + (offset ? " unaligned" : "");
      std::vector<uint8_t> keep(static_cast<size_t>(n));
      lora::dropout_mask(keep.data(), n, p, key);
      const float scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;

      Bf16Buf ones(n), h(n);
      ones.set(offset, std::vector<float>(static_cast<size_t>(n), 1.0f));
      emulate_map4("dropout_forward" + tag, k::DropoutForward{h.at(offset), ones.at(offset), p, scale, key}, n,
                   aligned(h.at(offset), 8) && aligned(ones.at(offset), 8));
      const std::vector<float> got = h.get(offset, n);
      const float kept_value = bf16_bits_to_f32(f32_to_bf16_bits(scale));
      int64_t pattern_mismatch = 0, value_mismatch = 0;
      for (int64_t i = 0; i < n; ++i) {
        if ((got[i] != 0.0f) != (keep[i] != 0)) ++pattern_mismatch;
        if (keep[i] && got[i] != kept_value) ++value_mismatch;
      }
      CHECK_EQ(pattern_mismatch, int64_t(0));
      CHECK_EQ(value_mismatch, int64_t(0));

      const std::vector<float> dx0 = random_vec(n, 700 + offset), dh = random_vec(n, 800 + offset);
      std::vector<float> want = dx0;
      for (int64_t i = 0; i < n; ++i)
        if (keep[i]) want[i] += dh[i] * scale;
      std::vector<float> bdx(n + 1), bdh(n + 1);
      std::copy(dx0.begin(), dx0.end(), bdx.begin() + offset);
      std::copy(dh.begin(), dh.end(), bdh.begin() + offset);
      float* pdx = bdx.data() + offset;
      const float* pdh = bdh.data() + offset;
      emulate_map4("dropout_backward_add" + tag, k::DropoutBackwardAdd{pdx, pdh, p, scale, key}, n,
                   aligned(pdx, 16) && aligned(pdh, 16));
      int64_t touched_dropped = 0;
      for (int64_t i = 0; i < n; ++i)
        if (!keep[i] && pdx[i] != dx0[i]) ++touched_dropped;
      CHECK_EQ(touched_dropped, int64_t(0));
      // Kept ones may differ by an FMA's single rounding (the compiler may contract either side).
      check_close("dropout_backward_add" + tag, std::vector<float>(pdx, pdx + n), want, 3e-7, 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Optimizers and the deterministic sum of squares.

TEST(cuda_optimizer_kernels_emulated_match_cpu) {
  namespace k = lora::cuda::adamw_kernels;
  for (int64_t n : {int64_t(1031), int64_t(1)}) {
    std::vector<float> p_cpu = random_vec(n, 900, -0.5f, 0.5f), m_cpu(n, 0.f), v_cpu(n, 0.f);
    std::vector<float> p = p_cpu, m = m_cpu, v = v_cpu, sgd_cpu = p_cpu, sgd = p_cpu;
    const float lr = 2e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    const std::string tag = " n=" + std::to_string(n);
    for (int64_t step = 1; step <= 10; ++step) {
      const std::vector<float> grad = random_vec(n, 1000 + static_cast<uint32_t>(step));
      lora::adamw_update(p_cpu.data(), grad.data(), m_cpu.data(), v_cpu.data(), n, lr, beta1, beta2, eps, wd, step);
      // The launcher's scalars (adamw.cu), formed as ops/adamw.cpp forms them.
      const double bc1 = 1.0 - std::pow(double(beta1), double(step));
      const double bc2 = 1.0 - std::pow(double(beta2), double(step));
      const float step_size = static_cast<float>(double(lr) / bc1);
      const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      const float decay = 1.0f - lr * wd;
      run("adamw" + tag, dim3(k::grid_for(n)), dim3(k::kThreads), [&] {
        k::adamw_kernel(p.data(), grad.data(), m.data(), v.data(), n, beta1, beta2, eps, step_size, bc2_sqrt, decay);
      });
      lora::sgd_update(sgd_cpu.data(), grad.data(), n, lr, wd);
      run("sgd" + tag, dim3(k::grid_for(n)), dim3(k::kThreads),
          [&] { k::sgd_kernel(sgd.data(), grad.data(), n, lr, wd); });
    }
    // The same fp32 expressions; FMA contraction (the GPU's, or a host compiler's) may differ,
    // one rounding per operation and step: test_cuda_ops.cpp's tolerances, argued there.
    check_close("adamw param" + tag, p, p_cpu, 1e-8, 1e-6);
    check_close("adamw m" + tag, m, m_cpu, 3e-7, 1e-6);
    check_close("adamw v" + tag, v, v_cpu, 0, 2e-6);
    check_close("sgd param" + tag, sgd, sgd_cpu, 1e-8, 1e-6);
  }
}

TEST(cuda_sum_squares_kernels_emulated_match_cpu) {
  namespace k = lora::cuda::adamw_kernels;
  // 1 and 3 (tail only), 4097, and one past the first pass's 1024 x 256 threads x 4 values
  // (every thread takes two float4 chunks, some three).
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(4097), int64_t((1 << 20) + 7)}) {
    const std::vector<float> x = random_vec(n, 1100 + static_cast<uint32_t>(n % 1000), -3.f, 3.f);
    const double want = lora::sum_squares(x.data(), n);
    for (int offset : {0, 1}) {
      if (n > 5000 && offset) continue;  // the scalar path is covered by the small sizes
      std::vector<float> buf(n + 1);
      std::copy(x.begin(), x.end(), buf.begin() + offset);
      const float* px = buf.data() + offset;
      std::vector<double> partial(k::kReduceBlocks + 1, -1.0);
      const std::string tag = " n=" + std::to_string(n) + (offset ? " unaligned" : "");
      run("sum_squares_partial" + tag, dim3(k::kReduceBlocks), dim3(k::kThreads), [&] {
        if (aligned(px, 16))
          k::sum_squares_partial<true>(px, n, partial.data());
        else
          k::sum_squares_partial<false>(px, n, partial.data());
      });
      run("sum_squares_final" + tag, dim3(1), dim3(k::kFinalThreads),
          [&] { k::sum_squares_final(partial.data(), partial.data() + k::kReduceBlocks); });
      CHECK_NEAR(partial[k::kReduceBlocks], want, 0, 1e-12);
    }
    std::vector<float> scaled = x, got = x;
    lora::scale_inplace(scaled.data(), n, 0.37f);
    run("scale_inplace", dim3(k::grid_for(n)), dim3(k::kThreads), [&] { k::scale_kernel(got.data(), n, 0.37f); });
    check_close("scale_inplace n=" + std::to_string(n), got, scaled, 0, 0);
  }
}
