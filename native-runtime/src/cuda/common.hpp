#pragma once
// Shared by every CUDA source: the CUDA headers, the bf16 type, error checking that turns
// CUDA errors into the runtime's exceptions, and small launch helpers.
// Only files of the CUDA build include this (src/cuda/*.cu, src/cuda/*.cpp, tests/cuda/).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace lora::cuda {

using bf16 = __nv_bfloat16;

// Throws OutOfMemoryError for cudaErrorMemoryAllocation (exit 3), std::runtime_error naming
// `what`, the file and the line otherwise. Clears the sticky-free error state it can.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lora::cuda

#define LORA_CUDA_CHECK(expr)                                                        \
  do {                                                                               \
    cudaError_t lora_err_ = (expr);                                                  \
    if (lora_err_ != cudaSuccess) ::lora::cuda::throw_cuda_error(lora_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch site.
#define LORA_CUDA_LAUNCH_CHECK(name)                                                 \
  do {                                                                               \
    cudaError_t lora_err_ = cudaGetLastError();                                      \
    if (lora_err_ != cudaSuccess) ::lora::cuda::throw_cuda_error(lora_err_, name, __FILE__, __LINE__); \
  } while (0)
