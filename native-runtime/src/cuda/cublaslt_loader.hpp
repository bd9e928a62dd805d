#pragma once
// Where gemm.cpp looks for cuBLASLt, and the attempt to load it, apart from the GEMM so that
// the search can be checked on a machine with no GPU. The order is the one gemm.hpp
// documents: LORA_CUBLASLT alone when it is set; else the sonames through the loader path,
// the CUDA toolkit folders, then the folders of the nvidia-cublas Python wheels.
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/gemm.hpp"

namespace lora::cuda {

// What the search depends on, so tests can give it their own.
struct CublasLtSearchEnv {
  std::string lora_cublaslt;  // $LORA_CUBLASLT
  std::string cuda_home;      // $CUDA_HOME
  std::string home;           // $HOME
  std::string opt_root = "/opt";  // where `*/.venv` environments are looked for
};

CublasLtSearchEnv cublaslt_search_env();  // from this process's environment
std::vector<std::string> cublaslt_candidates(const CublasLtSearchEnv& env);
std::vector<std::string> cublaslt_candidates();  // cublaslt_candidates(cublaslt_search_env())

// The first candidate that dlopens and has every entry point gemm.cpp uses. `path` is the
// candidate loaded (empty when none); `reason` says why each candidate that exists was
// refused, or that none exists. `handle` is the dlopen handle (null when none).
struct CublasLtLibrary {
  void* handle = nullptr;
  std::string path;
  std::string reason;
};
CublasLtLibrary load_cublaslt(const std::vector<std::string>& candidates);

// The cuBLASLt entry points gemm.cpp resolves, in the order it resolves them.
const std::vector<const char*>& cublaslt_symbols();

// cuBLASLt is column-major: D = alpha op(A) op(B) + beta C with A m x k after op, each
// matrix described by rows, columns and the stride between columns. A row-major [r, c]
// matrix with row stride ld is the column-major [c, r] matrix with the same stride, so
// row-major C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: cuBLASLt's A
// is our B, its B our A, and its m, n are our N, M. This is the call gemm.cpp makes.
struct LtCall {
  bool trans_a = false, trans_b = false;  // CUBLASLT_MATMUL_DESC_TRANSA / _TRANSB
  int64_t m = 0, n = 0, k = 0;
  const void* A = nullptr;  // cuBLASLt's A layout: a_rows x a_cols, column stride lda
  int64_t a_rows = 0, a_cols = 0, lda = 0;
  const void* B = nullptr;
  int64_t b_rows = 0, b_cols = 0, ldb = 0;
  void* C = nullptr;  // C and D: c_rows x c_cols, column stride ldc
  int64_t c_rows = 0, c_cols = 0, ldc = 0;
};
LtCall column_major_call(const GemmArgs& args);

}  // namespace lora::cuda
