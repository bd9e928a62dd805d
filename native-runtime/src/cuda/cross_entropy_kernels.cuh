#pragma once
// The cross-entropy kernels (cross_entropy.cu launches them), in a header of their own so
// that a host build runs the very same source: tests/cuda/test_cuda_attention_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp. See cross_entropy.cu for the
// algorithm.
#include <cmath>
#include <cstdint>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::cross_entropy_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kRowThreads = 512;  // V up to 256k: 512 values per thread at most
constexpr int kSumThreads = 256;

// Merges the (max, sum of exp(x - max)) pair (m2, s2) into (m, s). An empty side has
// max -inf and sum 0 and must not turn the other into NaN through exp(-inf - -inf).
__device__ __forceinline__ void merge_lse(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * expf(m2 - m);
  }
}

// One block per row. logits: row r at logits + r * ld (fp32); dlogits: row r at
// dlogits + r * dl_ld (bf16), may alias the logits (dl_ld = 2 * ld); loss: (n).
// A target outside [0, V) (a caller bug the CPU twin throws on) yields a NaN loss and no
// one-hot term, which the loss check of the trainer surfaces.
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_rows_kernel(float* __restrict__ loss, bf16* dlogits, int64_t dl_ld, const float* logits,
                              int64_t ld, const int32_t* __restrict__ targets, int V, float scale) {
  __shared__ float red_m[kRowThreads / 32], red_s[kRowThreads / 32];
  __shared__ float row_lse;
  const int64_t r = blockIdx.x;
  const float* x = logits + r * ld;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float m = -INFINITY, s = 0.f;
  for (int i = threadIdx.x; i < V; i += kRowThreads) {
    const float xi = x[i];
    if (xi == -INFINITY) continue;  // exp(-inf) = 0; skipping keeps m = -inf out of exp
    if (xi > m) {
      s = s * expf(m - xi) + 1.f;
      m = xi;
    } else {
      s += expf(xi - m);  // a NaN logit lands here and makes the loss NaN, as it should
    }
  }
LORA_UNROLL
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    merge_lse(m, s, m2, s2);
  }
  if (lane == 0) {
    red_m[warp] = m;
    red_s[warp] = s;
  }
  __syncthreads();
  const int target = targets[r];
  const bool target_ok = target >= 0 && target < V;
  if (threadIdx.x == 0) {
    float bm = red_m[0], bs = red_s[0];
    for (int w = 1; w < kRowThreads / 32; ++w) merge_lse(bm, bs, red_m[w], red_s[w]);
    const float lse = bm + logf(bs);
    row_lse = lse;
    // Read the target's logit before pass 2 may overwrite it.
    loss[r] = target_ok ? lse - x[target] : NAN;
  }
  __syncthreads();
  if (!dlogits) return;
  const float lse = row_lse;
  bf16* dl = dlogits + r * dl_ld;
  // In place, element i's bf16 occupies bytes of fp32 element i / 2 <= i: every value of a
  // stride is read before the barrier and written after it, and later strides are never
  // touched by earlier writes, so no thread reads a value another has overwritten.
  for (int base = 0; base < V; base += kRowThreads) {
    const int i = base + threadIdx.x;
    float g = 0.f;
    if (i < V) g = scale * (expf(x[i] - lse) - (target_ok && i == target ? 1.f : 0.f));
    __syncthreads();
    if (i < V) dl[i] = __float2bfloat16_rn(g);
  }
}

// total += sum of row_loss[0, n) in fp64, in a fixed order (one block): the same inputs
// always give the same sum.
__global__ void __launch_bounds__(kSumThreads) sum_losses_kernel(double* total, const float* __restrict__ row_loss,
                                                                  int n) {
  __shared__ double part[kSumThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += kSumThreads) s += double(row_loss[i]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total += part[0];
}

// ---- launch geometry (cross_entropy.cu and the emulated test): one block per row ----
inline unsigned rows_grid(int64_t n) { return unsigned(n); }

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::cross_entropy_kernels
