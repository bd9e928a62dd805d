#pragma once
// The argument checks shared by gemm() and gemm_builtin(): both are entry points, and a bad
// stride must be reported as an argument error before any CUDA call, on any machine.
#include "cuda/gemm.hpp"

namespace lora::cuda {

// Throws std::invalid_argument naming the argument (e.g. "gemm: lda (5) is less than 7, the
// columns of stored A"). `who` prefixes the message.
void validate_gemm_args(const GemmArgs& a, const char* who);

}  // namespace lora::cuda
