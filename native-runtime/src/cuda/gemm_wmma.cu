// The built-in GEMM (gemm.hpp): bf16 tensor cores through WMMA (16x16x16, fp32 accumulate),
// used when cuBLASLt is not available. Row-major throughout, any M, N, K, any strides, all
// four transpose combinations, C in bf16 or fp32. The kernel is in gemm_wmma_kernel.cuh;
// this file picks the tile shape and launches it.
#include <stdexcept>

#include "cuda/context.hpp"
#include "cuda/gemm.hpp"
#include "cuda/gemm_args.hpp"
#include "cuda/gemm_wmma_kernel.cuh"

namespace lora::cuda {

namespace {

using wmma_gemm::Band;
using wmma_gemm::gemm_wmma_kernel;
using wmma_gemm::plan_bands;

template <int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB, typename CT>
void launch(const GemmArgs& a, cudaStream_t stream) {
  constexpr int kThreads = WARPS_M * WARPS_N * 32;
  for (const Band& b : plan_bands<BM, BN, TA>(a)) {
    gemm_wmma_kernel<BM, BN, WARPS_M, WARPS_N, TA, TB, CT><<<dim3(b.grid_x, b.grid_y), kThreads, 0, stream>>>(
        b.A, a.lda, a.B, a.ldb, static_cast<CT*>(b.C), a.ldc, b.rows, a.N, a.K, a.alpha, a.beta, b.a_vec, b.b_vec);
    LORA_CUDA_LAUNCH_CHECK("gemm_wmma_kernel");
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N>
void dispatch(const GemmArgs& a, cudaStream_t stream) {
  const bool f32 = a.c_type == GemmType::F32;
  if (!a.trans_a && !a.trans_b) {
    f32 ? launch<BM, BN, WARPS_M, WARPS_N, false, false, float>(a, stream)
        : launch<BM, BN, WARPS_M, WARPS_N, false, false, bf16>(a, stream);
  } else if (!a.trans_a && a.trans_b) {
    f32 ? launch<BM, BN, WARPS_M, WARPS_N, false, true, float>(a, stream)
        : launch<BM, BN, WARPS_M, WARPS_N, false, true, bf16>(a, stream);
  } else if (a.trans_a && !a.trans_b) {
    f32 ? launch<BM, BN, WARPS_M, WARPS_N, true, false, float>(a, stream)
        : launch<BM, BN, WARPS_M, WARPS_N, true, false, bf16>(a, stream);
  } else {
    f32 ? launch<BM, BN, WARPS_M, WARPS_N, true, true, float>(a, stream)
        : launch<BM, BN, WARPS_M, WARPS_N, true, true, bf16>(a, stream);
  }
}

cudaStream_t compute_stream_or_default() {
  try {
    return current().stream;
  } catch (const std::logic_error&) {
    return nullptr;
  }
}

}  // namespace

void gemm_builtin(const GemmArgs& args, cudaStream_t stream) {
  validate_gemm_args(args, "gemm_builtin");
  if (args.M == 0 || args.N == 0) return;
  if (!stream) stream = compute_stream_or_default();
  int device = 0, sms = 0;
  LORA_CUDA_CHECK(cudaGetDevice(&device));
  LORA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  // 128x128 tiles (8 warps of 64x32) reuse each loaded element most; when they would leave
  // SMs idle (few tokens, or the rank-r products of LoRA) 64x64 tiles (4 warps of 32x32)
  // give four times the blocks.
  if (ceil_div(args.M, 128) * ceil_div(args.N, 128) >= sms)
    dispatch<128, 128, 2, 4>(args, stream);
  else
    dispatch<64, 64, 2, 2>(args, stream);
}

}  // namespace lora::cuda
