#pragma once
// The RMSNorm and LayerNorm kernels (norms.cu launches them), in a header of their own so
// that a host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp.
#include <cstdint>
#include <cstring>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::norms_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;  // 4 warps = 128 threads per block

__device__ __forceinline__ float warp_sum(float v) {
LORA_UNROLL
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The row's channels, 4 at a time when VEC (C % 4 == 0 and every pointer aligned), else one
// at a time. fn(c, x0..x3 / x) sees each channel exactly once, on one lane.
template <bool VEC>
struct RowLoop;

template <>
struct RowLoop<true> {
  template <class Fn>
  __device__ __forceinline__ static void run(int64_t C, int lane, Fn fn) {
    for (int64_t c = 4 * lane; c < C; c += 4 * kWarp) fn(c, 4);
  }
};
template <>
struct RowLoop<false> {
  template <class Fn>
  __device__ __forceinline__ static void run(int64_t C, int lane, Fn fn) {
    for (int64_t c = lane; c < C; c += kWarp) fn(c, 1);
  }
};

// Loads `width` (1 or 4) consecutive floats from p[c].
__device__ __forceinline__ void load(float (&v)[4], const float* p, int64_t c, int width) {
  if (width == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p + c);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  } else {
    v[0] = p[c];
  }
}

__device__ __forceinline__ void store_bf16(bf16* p, int64_t c, const float (&v)[4], int width) {
  if (width == 4) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]);
    __nv_bfloat162 hi = __floats2bfloat162_rn(v[2], v[3]);
    uint2 u;
    memcpy(&u.x, &lo, 4);
    memcpy(&u.y, &hi, 4);
    *reinterpret_cast<uint2*>(p + c) = u;
  } else {
    p[c] = __float2bfloat16_rn(v[0]);
  }
}

__device__ __forceinline__ void add_store(float* p, int64_t c, const float (&v)[4], int width) {
  if (width == 4) {
    float4 q = *reinterpret_cast<float4*>(p + c);
    q.x += v[0]; q.y += v[1]; q.z += v[2]; q.w += v[3];
    *reinterpret_cast<float4*>(p + c) = q;
  } else {
    p[c] += v[0];
  }
}

__device__ __forceinline__ float inv_sqrt(float mean_square, float eps) {
  return static_cast<float>(1.0 / sqrt(static_cast<double>(mean_square) + static_cast<double>(eps)));
}

template <bool VEC>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    rmsnorm_forward_kernel(bf16* __restrict__ y, float* __restrict__ rstd_out, const float* __restrict__ x,
                           const float* __restrict__ w, int64_t T, int64_t C, float eps) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T) return;  // whole warps leave together, so the shuffles below stay full-warp
  const float* xr = x + t * C;
  float ss = 0.f;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float v[4];
    load(v, xr, c, width);
    for (int k = 0; k < width; ++k) ss += v[k] * v[k];
  });
  ss = warp_sum(ss);
  const float rstd = inv_sqrt(ss / static_cast<float>(C), eps);
  if (lane == 0 && rstd_out) rstd_out[t] = rstd;
  bf16* yr = y + t * C;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float v[4], wv[4];
    load(v, xr, c, width);
    load(wv, w, c, width);
    for (int k = 0; k < width; ++k) v[k] = wv[k] * (v[k] * rstd);
    store_bf16(yr, c, v, width);
  });
}

// dx_j += rstd * (w_j dy_j - n_j * mean_i(w_i dy_i n_i)), n = x * rstd. dx may alias dy: the
// row's reduction is finished before any dx is written, and each element is read before it
// is written, by the same lane.
template <bool VEC>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    rmsnorm_backward_kernel(float* dx, const float* dy, const float* __restrict__ x,
                            const float* __restrict__ w, const float* __restrict__ rstd, int64_t T, int64_t C) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T) return;
  const float* xr = x + t * C;
  const float* dyr = dy + t * C;
  const float rs = rstd[t];
  float dot = 0.f;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float xv[4], gv[4], wv[4];
    load(xv, xr, c, width);
    load(gv, dyr, c, width);
    load(wv, w, c, width);
    for (int k = 0; k < width; ++k) dot += wv[k] * gv[k] * (xv[k] * rs);
  });
  const float mean_dot = warp_sum(dot) / static_cast<float>(C);
  float* dxr = dx + t * C;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float xv[4], gv[4], wv[4], out[4];
    load(xv, xr, c, width);
    load(gv, dyr, c, width);
    load(wv, w, c, width);
    for (int k = 0; k < width; ++k) out[k] = rs * (wv[k] * gv[k] - (xv[k] * rs) * mean_dot);
    add_store(dxr, c, out, width);
  });
}

// Two passes over the row for the variance, as the CPU twin (E[x^2] - E[x]^2 cancels badly
// when |mean| >> std).
template <bool VEC>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    layernorm_forward_kernel(bf16* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                             const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                             int64_t T, int64_t C, float eps) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T) return;
  const float* xr = x + t * C;
  float sum = 0.f;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float v[4];
    load(v, xr, c, width);
    for (int k = 0; k < width; ++k) sum += v[k];
  });
  const float mean = warp_sum(sum) / static_cast<float>(C);
  float ss = 0.f;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float v[4];
    load(v, xr, c, width);
    for (int k = 0; k < width; ++k) {
      const float d = v[k] - mean;
      ss += d * d;
    }
  });
  const float rstd = inv_sqrt(warp_sum(ss) / static_cast<float>(C), eps);
  if (lane == 0) {
    if (mean_out) mean_out[t] = mean;
    if (rstd_out) rstd_out[t] = rstd;
  }
  bf16* yr = y + t * C;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float v[4], wv[4], bv[4];
    load(v, xr, c, width);
    load(wv, w, c, width);
    load(bv, b, c, width);
    for (int k = 0; k < width; ++k) v[k] = (v[k] - mean) * rstd * wv[k] + bv[k];
    store_bf16(yr, c, v, width);
  });
}

// With g = w * dy and n = (x - mean) * rstd: dx_j += rstd * (g_j - mean(g) - n_j * mean(g n)).
template <bool VEC>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    layernorm_backward_kernel(float* dx, const float* dy, const float* __restrict__ x,
                              const float* __restrict__ w, const float* __restrict__ mean,
                              const float* __restrict__ rstd, int64_t T, int64_t C) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T) return;
  const float* xr = x + t * C;
  const float* dyr = dy + t * C;
  const float rs = rstd[t], m = mean[t];
  float sum_g = 0.f, sum_gn = 0.f;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float xv[4], gv[4], wv[4];
    load(xv, xr, c, width);
    load(gv, dyr, c, width);
    load(wv, w, c, width);
    for (int k = 0; k < width; ++k) {
      const float g = wv[k] * gv[k];
      sum_g += g;
      sum_gn += g * ((xv[k] - m) * rs);
    }
  });
  const float mean_g = warp_sum(sum_g) / static_cast<float>(C);
  const float mean_gn = warp_sum(sum_gn) / static_cast<float>(C);
  float* dxr = dx + t * C;
  RowLoop<VEC>::run(C, lane, [&](int64_t c, int width) {
    float xv[4], gv[4], wv[4], out[4];
    load(xv, xr, c, width);
    load(gv, dyr, c, width);
    load(wv, w, c, width);
    for (int k = 0; k < width; ++k) out[k] = rs * (wv[k] * gv[k] - mean_g - ((xv[k] - m) * rs) * mean_gn);
    add_store(dxr, c, out, width);
  });
}

// A warp per row, kRowsPerBlock rows per block.
inline unsigned grid_for(int64_t T) { return static_cast<unsigned>(ceil_div(T, kRowsPerBlock)); }
constexpr unsigned kBlock = kWarp * kRowsPerBlock;

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::norms_kernels
