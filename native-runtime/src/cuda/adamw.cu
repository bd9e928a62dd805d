// The optimizer on the device, the twin of ops/adamw.cpp: the same fp32 update in the same
// order (bias corrections formed in double on the host, as the CPU does), and the global
// sum of squares for gradient clipping, reduced deterministically: a fixed grid of blocks
// writes fp64 partials, one block adds them in a fixed tree, so the result depends only on
// the data and n, never on timing or on the GPU model.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/adamw.hpp"
#include "cuda/memory.hpp"

namespace lora::cuda {

namespace {

constexpr int kThreads = 256;
// Blocks of the first reduction pass; fixed (not derived from the SM count) so that every
// GPU sums in the same order. 1024 x 256 threads keeps an H100 busy.
constexpr int kReduceBlocks = 1024;
constexpr int kFinalThreads = 1024;  // one thread per partial in the second pass

void check_n(const char* name, int64_t n) {
  if (n < 0) throw std::invalid_argument(std::string(name) + ": n must not be negative");
}

void check_ptr(const char* name, const char* what, const void* p) {
  if (!p) throw std::invalid_argument(std::string(name) + ": " + what + " is null");
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>(ceil_div(n, kThreads)); }

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
#pragma unroll
  for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
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

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int64_t step, cudaStream_t stream) {
  check_n("adamw_update", n);
  if (step < 1) throw std::invalid_argument("adamw_update: step counts from 1");
  if (n == 0) return;
  check_ptr("adamw_update", "param", param);
  check_ptr("adamw_update", "grad", grad);
  check_ptr("adamw_update", "m", m);
  check_ptr("adamw_update", "v", v);
  // The scalars exactly as ops/adamw.cpp forms them.
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = static_cast<float>(double(lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.0f - lr * weight_decay;
  adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, grad, m, v, n, beta1, beta2, eps, step_size, bc2_sqrt,
                                                     decay);
  LORA_CUDA_LAUNCH_CHECK("adamw_update");
}

void sgd_update(float* param, const float* grad, int64_t n, float lr, float weight_decay, cudaStream_t stream) {
  check_n("sgd_update", n);
  if (n == 0) return;
  check_ptr("sgd_update", "param", param);
  check_ptr("sgd_update", "grad", grad);
  sgd_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, grad, n, lr, weight_decay);
  LORA_CUDA_LAUNCH_CHECK("sgd_update");
}

double sum_squares(const float* x, int64_t n, cudaStream_t stream) {
  check_n("sum_squares", n);
  if (n == 0) return 0.0;
  check_ptr("sum_squares", "x", x);
  // From the caching allocator: after the first call this is a free-list hit, not a cudaMalloc.
  DeviceArray<double> scratch(kReduceBlocks + 1);
  double* partial = scratch.data();
  double* total = partial + kReduceBlocks;
  if (reinterpret_cast<uintptr_t>(x) % 16 == 0)
    sum_squares_partial<true><<<kReduceBlocks, kThreads, 0, stream>>>(x, n, partial);
  else
    sum_squares_partial<false><<<kReduceBlocks, kThreads, 0, stream>>>(x, n, partial);
  LORA_CUDA_LAUNCH_CHECK("sum_squares_partial");
  sum_squares_final<<<1, kFinalThreads, 0, stream>>>(partial, total);
  LORA_CUDA_LAUNCH_CHECK("sum_squares_final");
  double result = 0.0;
  LORA_CUDA_CHECK(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, stream));
  // The scratch goes back to the allocator when this returns; the stream must be done with it.
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return result;
}

void scale_inplace(float* x, int64_t n, float s, cudaStream_t stream) {
  check_n("scale_inplace", n);
  if (n == 0) return;
  check_ptr("scale_inplace", "x", x);
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, s);
  LORA_CUDA_LAUNCH_CHECK("scale_inplace");
}

}  // namespace lora::cuda
