#pragma once
// Where gemm.cpp looks for cuBLASLt, and the attempt to load it, apart from the GEMM so that
// the search can be checked on a machine with no GPU. The order is the one gemm.hpp
// documents: LORA_CUBLASLT alone when it is set; else the sonames through the loader path,
// the CUDA toolkit folders, then the folders of the nvidia-cublas Python wheels.
#include <string>
#include <vector>

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

}  // namespace lora::cuda
