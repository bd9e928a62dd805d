#pragma once
// The RoPE kernels (rope.cu launches them), in a header of their own so
// that a host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp.
#include <cstdint>
#include <cstring>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::rope_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kPairThreads = 32;  // D/2 = 64 for most models: 32 threads x 2 pairs
constexpr int kHeadThreads = 4;

// (a, b) <- (a c - b s, b c + a s), the CPU's expressions.
__device__ __forceinline__ void rotate(float& a, float& b, float c, float s) {
  const float ra = a * c - b * s;
  const float rb = b * c + a * s;
  a = ra;
  b = rb;
}

// sign = +1 forward, -1 backward (a rotation's transpose is the opposite rotation).
__device__ __forceinline__ void angle_sin_cos(int32_t p, float f, float sign, float& c, float& s) {
  // Full-range sincosf (not the __sincosf intrinsic): positions reach 10^5, where the fast
  // version's range reduction is far off.
  sincosf(__fmul_rn(static_cast<float>(p), f), &s, &c);
  s *= sign;
}

// Two pairs per thread: half = D/2 even, x 4-byte aligned, so (i, i+1) and (i+half, i+half+1)
// are bf16x2 words.
__global__ void __launch_bounds__(kPairThreads* kHeadThreads)
    rope_x2_kernel(bf16* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq, int64_t H,
                   int64_t D, float sign) {
  const int64_t t = blockIdx.x;
  const int64_t half = D / 2;
  const int32_t p = pos[t];
  for (int64_t i = 2 * static_cast<int64_t>(threadIdx.x); i < half; i += 2 * kPairThreads) {
    float c0, s0, c1, s1;
    angle_sin_cos(p, inv_freq[i], sign, c0, s0);
    angle_sin_cos(p, inv_freq[i + 1], sign, c1, s1);
    for (int64_t h = threadIdx.y; h < H; h += kHeadThreads) {
      bf16* v = x + (t * H + h) * D;
      __nv_bfloat162* lo = reinterpret_cast<__nv_bfloat162*>(v + i);
      __nv_bfloat162* hi = reinterpret_cast<__nv_bfloat162*>(v + i + half);
      const float2 a = __bfloat1622float2(*lo);
      const float2 b = __bfloat1622float2(*hi);
      float a0 = a.x, b0 = b.x, a1 = a.y, b1 = b.y;
      rotate(a0, b0, c0, s0);
      rotate(a1, b1, c1, s1);
      *lo = __floats2bfloat162_rn(a0, a1);
      *hi = __floats2bfloat162_rn(b0, b1);
    }
  }
}

// One pair per thread, any D (odd half, misaligned x).
__global__ void __launch_bounds__(kPairThreads* kHeadThreads)
    rope_x1_kernel(bf16* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq, int64_t H,
                   int64_t D, float sign) {
  const int64_t t = blockIdx.x;
  const int64_t half = D / 2;
  const int32_t p = pos[t];
  for (int64_t i = threadIdx.x; i < half; i += kPairThreads) {
    float c, s;
    angle_sin_cos(p, inv_freq[i], sign, c, s);
    for (int64_t h = threadIdx.y; h < H; h += kHeadThreads) {
      bf16* v = x + (t * H + h) * D;
      float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]);
      rotate(a, b, c, s);
      v[i] = __float2bfloat16_rn(a);
      v[i + half] = __float2bfloat16_rn(b);
    }
  }
}

// Whether rope_x2_kernel may run: D / 2 even and x 4-byte aligned, so that every pair of
// neighbouring values at i and i + D / 2 is one bf16x2 word (else rope_x1_kernel).
inline bool pairs_of_two(int64_t D, const void* x) {
  return (D / 2) % 2 == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0;
}

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::rope_kernels
