// RMSNorm and LayerNorm on the device, twins of ops/rmsnorm.cpp and ops/layernorm.cpp: one
// warp per row (rows are a few thousand channels: 32 lanes with float4 loads cover them in a
// few dozen iterations, and a warp needs no shared memory or block barrier), statistics in
// fp32 per lane combined by a shuffle tree, 1/sqrt in double as the CPU does.
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/norms.hpp"
#include "cuda/norms_kernels.cuh"

namespace lora::cuda {

namespace {

using namespace norms_kernels;

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

void check_shape(const char* op, int64_t T, int64_t C) {
  if (T < 0) throw std::invalid_argument(std::string(op) + ": T must not be negative");
  if (C <= 0) throw std::invalid_argument(std::string(op) + ": C must be positive");
}

void check_ptr(const char* op, const char* name, const void* p) {
  if (!p) throw std::invalid_argument(std::string(op) + ": " + name + " is null");
}


}  // namespace

void rmsnorm_forward(bf16* y, float* rstd, const float* x, const float* w, int64_t T, int64_t C, float eps,
                     cudaStream_t stream) {
  check_shape("rmsnorm_forward", T, C);
  if (T == 0) return;
  check_ptr("rmsnorm_forward", "y", y);
  check_ptr("rmsnorm_forward", "x", x);
  check_ptr("rmsnorm_forward", "w", w);
  const bool vec = C % 4 == 0 && aligned(x, 16) && aligned(w, 16) && aligned(y, 8);
  if (vec)
    rmsnorm_forward_kernel<true><<<grid_for(T), kBlock, 0, stream>>>(y, rstd, x, w, T, C, eps);
  else
    rmsnorm_forward_kernel<false><<<grid_for(T), kBlock, 0, stream>>>(y, rstd, x, w, T, C, eps);
  LORA_CUDA_LAUNCH_CHECK("rmsnorm_forward");
}

void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* rstd, int64_t T,
                      int64_t C, cudaStream_t stream) {
  check_shape("rmsnorm_backward", T, C);
  if (T == 0) return;
  check_ptr("rmsnorm_backward", "dx", dx);
  check_ptr("rmsnorm_backward", "dy", dy);
  check_ptr("rmsnorm_backward", "x", x);
  check_ptr("rmsnorm_backward", "w", w);
  check_ptr("rmsnorm_backward", "rstd", rstd);
  const bool vec = C % 4 == 0 && aligned(dx, 16) && aligned(dy, 16) && aligned(x, 16) && aligned(w, 16);
  if (vec)
    rmsnorm_backward_kernel<true><<<grid_for(T), kBlock, 0, stream>>>(dx, dy, x, w, rstd, T, C);
  else
    rmsnorm_backward_kernel<false><<<grid_for(T), kBlock, 0, stream>>>(dx, dy, x, w, rstd, T, C);
  LORA_CUDA_LAUNCH_CHECK("rmsnorm_backward");
}

void layernorm_forward(bf16* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t T,
                       int64_t C, float eps, cudaStream_t stream) {
  check_shape("layernorm_forward", T, C);
  if (T == 0) return;
  check_ptr("layernorm_forward", "y", y);
  check_ptr("layernorm_forward", "x", x);
  check_ptr("layernorm_forward", "w", w);
  check_ptr("layernorm_forward", "b", b);
  const bool vec = C % 4 == 0 && aligned(x, 16) && aligned(w, 16) && aligned(b, 16) && aligned(y, 8);
  if (vec)
    layernorm_forward_kernel<true><<<grid_for(T), kBlock, 0, stream>>>(y, mean, rstd, x, w, b, T, C, eps);
  else
    layernorm_forward_kernel<false><<<grid_for(T), kBlock, 0, stream>>>(y, mean, rstd, x, w, b, T, C, eps);
  LORA_CUDA_LAUNCH_CHECK("layernorm_forward");
}

void layernorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t T, int64_t C, cudaStream_t stream) {
  check_shape("layernorm_backward", T, C);
  if (T == 0) return;
  check_ptr("layernorm_backward", "dx", dx);
  check_ptr("layernorm_backward", "dy", dy);
  check_ptr("layernorm_backward", "x", x);
  check_ptr("layernorm_backward", "w", w);
  check_ptr("layernorm_backward", "mean", mean);
  check_ptr("layernorm_backward", "rstd", rstd);
  const bool vec = C % 4 == 0 && aligned(dx, 16) && aligned(dy, 16) && aligned(x, 16) && aligned(w, 16);
  if (vec)
    layernorm_backward_kernel<true><<<grid_for(T), kBlock, 0, stream>>>(dx, dy, x, w, mean, rstd, T, C);
  else
    layernorm_backward_kernel<false><<<grid_for(T), kBlock, 0, stream>>>(dx, dy, x, w, mean, rstd, T, C);
  LORA_CUDA_LAUNCH_CHECK("layernorm_backward");
}

}  // namespace lora::cuda
