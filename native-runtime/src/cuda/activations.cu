// SwiGLU and GELU (tanh) on the device, twins of ops/swiglu.cpp and ops/gelu.cpp: bf16 in
// and out, the same fp32 formulas in the same order. Each thread maps 8 elements (16-byte
// loads and stores) when every pointer is 16-byte aligned; the remainder, or everything
// when a pointer is not, goes one element per thread.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/activations.hpp"
#include "cuda/activations_kernels.cuh"

namespace lora::cuda {

namespace {

using namespace activations_kernels;

template <class Op, int NIN, int NOUT>
void launch_map(const char* name, const Ptrs<NIN, NOUT>& p, int64_t n, cudaStream_t stream) {
  if (n < 0) throw std::invalid_argument(std::string(name) + ": n must not be negative");
  if (n == 0) return;
  bool vec = true;
  for (int a = 0; a < NIN; ++a) {
    if (!p.in[a]) throw std::invalid_argument(std::string(name) + ": an input pointer is null");
    vec = vec && reinterpret_cast<uintptr_t>(p.in[a]) % 16 == 0;
  }
  for (int b = 0; b < NOUT; ++b) {
    if (!p.out[b]) throw std::invalid_argument(std::string(name) + ": an output pointer is null");
    vec = vec && reinterpret_cast<uintptr_t>(p.out[b]) % 16 == 0;
  }
  const MapPlan plan = plan_map(n, vec);
  if (plan.chunks > 0) {
    map_x8_kernel<Op, NIN, NOUT><<<plan.vector_grid, kThreads, 0, stream>>>(p, plan.chunks);
    LORA_CUDA_LAUNCH_CHECK(name);
  }
  if (plan.tail_grid > 0) {
    map_x1_kernel<Op, NIN, NOUT><<<plan.tail_grid, kThreads, 0, stream>>>(p, plan.tail_begin, n);
    LORA_CUDA_LAUNCH_CHECK(name);
  }
}

}  // namespace

void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream) {
  launch_map<SwigluForward, 2, 1>("swiglu_forward", Ptrs<2, 1>{{g, u}, {h}}, n, stream);
}

void swiglu_backward(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u, int64_t n,
                     cudaStream_t stream) {
  launch_map<SwigluBackward, 3, 2>("swiglu_backward", Ptrs<3, 2>{{dh, g, u}, {dg, du}}, n, stream);
}

void gelu_forward(bf16* h, const bf16* x, int64_t n, cudaStream_t stream) {
  launch_map<GeluForward, 1, 1>("gelu_forward", Ptrs<1, 1>{{x}, {h}}, n, stream);
}

void gelu_backward(bf16* dx, const bf16* dh, const bf16* x, int64_t n, cudaStream_t stream) {
  launch_map<GeluBackward, 2, 1>("gelu_backward", Ptrs<2, 1>{{dh, x}, {dx}}, n, stream);
}

}  // namespace lora::cuda
