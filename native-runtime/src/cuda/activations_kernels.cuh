#pragma once
// The SwiGLU / GELU kernels (activations.cu launches them), in a header of their own so
// that a host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp.
#include <cstdint>
#include <cstring>
#include <cmath>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::activations_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // bf16 values per 16-byte access

// The kernels below read every input element of a chunk before writing any output of it,
// and the chunk belongs to one thread, so outputs may alias inputs element for element
// (gelu's h = x, dx = dh); no __restrict__ on the pointers for that reason.
template <int NIN, int NOUT>
struct Ptrs {
  const bf16* in[NIN];
  bf16* out[NOUT];
};

__device__ __forceinline__ void unpack8(const uint4& q, float (&v)[kVec]) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
LORA_UNROLL
  for (int k = 0; k < 4; ++k) {
    __nv_bfloat162 p;
    memcpy(static_cast<void*>(&p), &w[k], 4);
    const float2 f = __bfloat1622float2(p);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

__device__ __forceinline__ uint4 pack8(const float (&v)[kVec]) {
  uint32_t w[4];
LORA_UNROLL
  for (int k = 0; k < 4; ++k) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    memcpy(&w[k], &p, 4);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Op::apply(const float (&in)[NIN], float (&out)[NOUT]) for one element.
template <class Op, int NIN, int NOUT>
__global__ void __launch_bounds__(kThreads) map_x8_kernel(Ptrs<NIN, NOUT> p, int64_t chunks) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  float in[NIN][kVec];
LORA_UNROLL
  for (int a = 0; a < NIN; ++a) unpack8(reinterpret_cast<const uint4*>(p.in[a])[c], in[a]);
  float out[NOUT][kVec];
LORA_UNROLL
  for (int k = 0; k < kVec; ++k) {
    float xi[NIN], yo[NOUT];
LORA_UNROLL
    for (int a = 0; a < NIN; ++a) xi[a] = in[a][k];
    Op::apply(xi, yo);
LORA_UNROLL
    for (int b = 0; b < NOUT; ++b) out[b][k] = yo[b];
  }
LORA_UNROLL
  for (int b = 0; b < NOUT; ++b) reinterpret_cast<uint4*>(p.out[b])[c] = pack8(out[b]);
}

template <class Op, int NIN, int NOUT>
__global__ void __launch_bounds__(kThreads) map_x1_kernel(Ptrs<NIN, NOUT> p, int64_t begin, int64_t n) {
  const int64_t i = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float xi[NIN], yo[NOUT];
LORA_UNROLL
  for (int a = 0; a < NIN; ++a) xi[a] = __bfloat162float(p.in[a][i]);
  Op::apply(xi, yo);
LORA_UNROLL
  for (int b = 0; b < NOUT; ++b) p.out[b][i] = __float2bfloat16_rn(yo[b]);
}

// Full-precision expf/tanhf (no --use_fast_math), within 2 ulp like the CPU's.
__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

struct SwigluForward {
  __device__ static void apply(const float (&in)[2], float (&out)[1]) {
    const float g = in[0], u = in[1];
    out[0] = g * sigmoid(g) * u;
  }
};

// silu'(g) = s + g s (1 - s), s = sigmoid(g).
struct SwigluBackward {
  __device__ static void apply(const float (&in)[3], float (&out)[2]) {
    const float d = in[0], g = in[1], u = in[2];
    const float s = sigmoid(g);
    const float silu = g * s;
    out[0] = d * u * (s + silu * (1.0f - s));
    out[1] = d * silu;
  }
};

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

struct GeluForward {
  __device__ static void apply(const float (&in)[1], float (&out)[1]) {
    const float v = in[0];
    out[0] = 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + kCubic * v * v * v)));
  }
};

// gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2), t = tanh(sqrt(2/pi)(x + c x^3)).
struct GeluBackward {
  __device__ static void apply(const float (&in)[2], float (&out)[1]) {
    const float d = in[0], v = in[1];
    const float t = tanhf(kSqrt2OverPi * (v + kCubic * v * v * v));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    out[0] = d * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
  }
};

// The vector kernel over n / 8 chunks when every pointer is 16-byte aligned (vec), then the
// per-element kernel over the rest.
struct MapPlan {
  int64_t chunks = 0;
  unsigned vector_grid = 0;
  int64_t tail_begin = 0;
  unsigned tail_grid = 0;
};

inline MapPlan plan_map(int64_t n, bool vec) {
  MapPlan p;
  if (vec) {
    p.chunks = n / kVec;
    p.vector_grid = static_cast<unsigned>(ceil_div(p.chunks, kThreads));
    p.tail_begin = p.chunks * kVec;
  }
  if (p.tail_begin < n) p.tail_grid = static_cast<unsigned>(ceil_div(n - p.tail_begin, kThreads));
  return p;
}

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::activations_kernels
