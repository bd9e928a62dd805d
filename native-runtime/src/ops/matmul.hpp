#pragma once
// Single-precision GEMMs on the CPU, blocked for cache and vectorised, multi-threaded with
// the static-partition thread pool (deterministic for a given thread count).
// All matrices are row-major and densely packed.
#include <cstdint>

namespace lora {

// C[M,N] = (accumulate ? C : 0) + alpha * A[M,K] . B[N,K]^T      (x W^T, nn.Linear forward)
void matmul_nt(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K,
               float alpha = 1.0f, bool accumulate = false);
// C[M,N] = (accumulate ? C : 0) + alpha * A[M,K] . B[K,N]        (dy W, input gradient)
void matmul_nn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K,
               float alpha = 1.0f, bool accumulate = false);
// C[M,N] = (accumulate ? C : 0) + alpha * A[K,M]^T . B[K,N]      (dy^T x, weight gradient)
void matmul_tn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K,
               float alpha = 1.0f, bool accumulate = false);

// Describes the compiled GEMM kernel, e.g. "packed, avx2+fma 6x16 micro-kernel, KC=256",
// for benchmark and diagnostic output.
const char* matmul_kernel_name();

}  // namespace lora
