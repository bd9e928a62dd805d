#pragma once
// Dense matrix products on the tensor cores, row-major throughout:
//   C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C
// op(X) = X, or X^T when trans_x (then A is stored [K, M], B is stored [N, K]).
// lda/ldb/ldc are row strides in elements of the stored matrices. A and B are bf16; C is
// bf16 or fp32; accumulation is fp32. With beta == 0, C is not read (may be uninitialised).
//
// The backend is cuBLASLt, loaded at run time with dlopen (no cuBLAS headers or link-time
// dependency): LORA_CUBLASLT names the library file to use; otherwise libcublasLt.so.13 /
// .so.12 / .so are tried through the loader path (LD_LIBRARY_PATH), then the CUDA toolkit
// (CUDA_HOME, /usr/local/cuda/lib64, /usr/local/cuda/targets/x86_64-linux/lib), then the
// `nvidia-cublas` Python wheel's folder (site-packages/nvidia/cublas/lib, and
// nvidia/cu13/lib). When none loads, or LORA_GEMM=builtin, a built-in WMMA tensor-core GEMM
// is used instead. gemm_backend() says which, for the log line.
#include <cstdint>
#include <string>

#include "cuda/common.hpp"

namespace lora::cuda {

enum class GemmType { BF16, F32 };

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.f, beta = 0.f;
  const bf16* A = nullptr; int64_t lda = 0;
  const bf16* B = nullptr; int64_t ldb = 0;
  void* C = nullptr; int64_t ldc = 0;
  GemmType c_type = GemmType::BF16;
};

// Runs on `stream` (the current context's compute stream when nullptr).
void gemm(const GemmArgs& args, cudaStream_t stream = nullptr);

// "cublasLt (<path>)" or "builtin wmma (<reason cuBLASLt is not used>)"; loads on first call.
std::string gemm_backend();

// The built-in kernel directly (for tests comparing the two backends).
void gemm_builtin(const GemmArgs& args, cudaStream_t stream = nullptr);

}  // namespace lora::cuda
