// Rotary position embedding on the device, the twin of ops/rope.cpp: dimension i of every
// head pairs with i + D/2 and turns by pos[t] * inv_freq[i] (the angle formed in fp32 as HF
// does). One block per token, 32 x 4 threads: x walks the pairs, two neighbouring ones per
// thread (bf16x2 loads at i and i + D/2), y walks the heads; each thread computes its pairs'
// sin/cos once and applies them to every fourth head of the token.
#include <stdexcept>
#include <string>

#include "cuda/rope.hpp"
#include "cuda/rope_kernels.cuh"

namespace lora::cuda {

namespace {

using namespace rope_kernels;

void launch(const char* op, bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
            float sign, cudaStream_t stream) {
  if (T < 0 || H < 0) throw std::invalid_argument(std::string(op) + ": T and H must not be negative");
  if (D <= 0 || D % 2 != 0) throw std::invalid_argument(std::string(op) + ": D must be positive and even");
  if (T == 0 || H == 0) return;
  if (T > 0x7fffffff) throw std::invalid_argument(std::string(op) + ": T exceeds the grid");
  if (!x || !pos || !inv_freq) throw std::invalid_argument(std::string(op) + ": x, pos and inv_freq must not be null");
  const dim3 block(kPairThreads, kHeadThreads);
  if (pairs_of_two(D, x)) {
    rope_x2_kernel<<<static_cast<unsigned>(T), block, 0, stream>>>(x, pos, inv_freq, H, D, sign);
  } else {
    rope_x1_kernel<<<static_cast<unsigned>(T), block, 0, stream>>>(x, pos, inv_freq, H, D, sign);
  }
  LORA_CUDA_LAUNCH_CHECK(op);
}

}  // namespace

void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
                  cudaStream_t stream) {
  launch("rope_forward", x, pos, inv_freq, T, H, D, 1.0f, stream);
}

void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D,
                   cudaStream_t stream) {
  launch("rope_backward", dx, pos, inv_freq, T, H, D, -1.0f, stream);
}

}  // namespace lora::cuda
