#pragma once
// The optimizer and reduction kernels (adamw.cu launches them), in a header of their own so
// that a host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp.
#include <cstdint>
#include <cstring>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::adamw_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kThreads = 256;
// Blocks of the first reduction pass; fixed (not derived from the SM count) so that every
// GPU sums in the same order. 1024 x 256 threads keeps an H100 busy.
constexpr int kReduceBlocks = 1024;
constexpr int kFinalThreads = 1024;  // one thread per partial in the second pass

inline unsigned grid_for(int64_t n) { return static_cast<unsigned>(ceil_div(n, kThreads)); }

// torch.optim.AdamW (foreach=False): p *= 1 - lr * wd, then
// p -= step_size * m / (sqrt(v) / bc2_sqrt + eps), step_size = lr / bc1.
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                 float* __restrict__ v, int64_t n, float beta1, float beta2, float eps, float step_size,
                 float bc2_sqrt, float decay) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = grad[i];
  const float mi = beta1 * m[i] + (1.0f - beta1) * g;
  const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float denom = sqrtf(vi) / bc2_sqrt + eps;
  param[i] = param[i] * decay - step_size * (mi / denom);
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* __restrict__ param, const float* __restrict__ grad, int64_t n, float lr, float weight_decay) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  param[i] -= lr * (grad[i] + weight_decay * param[i]);
}

__global__ void __launch_bounds__(kThreads) scale_kernel(float* __restrict__ x, int64_t n, float s) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  x[i] *= s;
}

// Tree sum of buf[0 .. THREADS) into buf[0]; every thread of the block must call it.
template <int THREADS>
__device__ __forceinline__ void block_tree_sum(double* buf) {
  __syncthreads();
LORA_UNROLL
  for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
}

// Pass 1: thread k of the grid sums the squares of a fixed set of elements (float4 chunks k,
// k + grid, ...; then the < 4 tail elements go to threads 0..2), each square exact in
// double; each block writes its tree sum to partial[block].
template <bool VEC>
__global__ void __launch_bounds__(kThreads) sum_squares_partial(const float* __restrict__ x, int64_t n,
                                                                 double* __restrict__ partial) {
  __shared__ double buf[kThreads];
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(kReduceBlocks) * kThreads;
  double s = 0.0;
  if (VEC) {
    const int64_t chunks = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int64_t c = tid; c < chunks; c += stride) {
      const float4 q = x4[c];
      s += static_cast<double>(q.x) * q.x;
      s += static_cast<double>(q.y) * q.y;
      s += static_cast<double>(q.z) * q.z;
      s += static_cast<double>(q.w) * q.w;
    }
    const int64_t tail = chunks * 4 + tid;
    if (tid < 4 && tail < n) s += static_cast<double>(x[tail]) * x[tail];
  } else {
    for (int64_t i = tid; i < n; i += stride) s += static_cast<double>(x[i]) * x[i];
  }
  buf[threadIdx.x] = s;
  block_tree_sum<kThreads>(buf);
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// Pass 2: one block adds the kReduceBlocks partials in a fixed tree.
__global__ void __launch_bounds__(kFinalThreads) sum_squares_final(const double* __restrict__ partial,
                                                                    double* __restrict__ out) {
  __shared__ double buf[kFinalThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < kReduceBlocks; i += kFinalThreads) s += partial[i];
  buf[threadIdx.x] = s;
  block_tree_sum<kFinalThreads>(buf);
  if (threadIdx.x == 0) *out = buf[0];
}

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::adamw_kernels
