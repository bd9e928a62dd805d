// The optimizer on the device, the twin of ops/adamw.cpp: the same fp32 update in the same
// order (bias corrections formed in double on the host, as the CPU does), and the global
// sum of squares for gradient clipping, reduced deterministically: a fixed grid of blocks
// writes fp64 partials, one block adds them in a fixed tree, so the result depends only on
// the data and n, never on timing or on the GPU model.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/adamw.hpp"
#include "cuda/adamw_kernels.cuh"
#include "cuda/memory.hpp"

namespace lora::cuda {

namespace {

using namespace adamw_kernels;

void check_n(const char* name, int64_t n) {
  if (n < 0) throw std::invalid_argument(std::string(name) + ": n must not be negative");
}

void check_ptr(const char* name, const char* what, const void* p) {
  if (!p) throw std::invalid_argument(std::string(name) + ": " + what + " is null");
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
