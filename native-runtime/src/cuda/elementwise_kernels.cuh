#pragma once
// The elementwise kernels (elementwise.cu launches them), in a header of their own so
// that a host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp
// executes them on the CPU with tests/cuda/emu_shim.hpp.
#include <cstdint>
#include <cstring>

#include "common/rng.hpp"

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

namespace lora::cuda::elementwise_kernels {
inline namespace LORA_KERNEL_ABI {

constexpr int kThreads = 256;
constexpr int kRowThreads = 128;

inline bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// W (1 or 4) consecutive values at p[i], as floats.
template <int W>
__device__ __forceinline__ void load(float (&v)[4], const float* p, int64_t i) {
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p + i);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  } else {
    v[0] = p[i];
  }
}
template <int W>
__device__ __forceinline__ void load(float (&v)[4], const bf16* p, int64_t i) {
  if constexpr (W == 4) {
    const uint2 q = *reinterpret_cast<const uint2*>(p + i);
    __nv_bfloat162 a, b;
    memcpy(static_cast<void*>(&a), &q.x, 4);
    memcpy(static_cast<void*>(&b), &q.y, 4);
    const float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
    v[0] = fa.x; v[1] = fa.y; v[2] = fb.x; v[3] = fb.y;
  } else {
    v[0] = __bfloat162float(p[i]);
  }
}
template <int W>
__device__ __forceinline__ void store(float* p, int64_t i, const float (&v)[4]) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    p[i] = v[0];
  }
}
template <int W>
__device__ __forceinline__ void store(bf16* p, int64_t i, const float (&v)[4]) {
  if constexpr (W == 4) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
    uint2 q;
    memcpy(&q.x, &a, 4);
    memcpy(&q.y, &b, 4);
    *reinterpret_cast<uint2*>(p + i) = q;
  } else {
    p[i] = __float2bfloat16_rn(v[0]);
  }
}

// Every flat op is a functor with `template <int W> void apply(int64_t i)` handling elements
// [i, i + W). Each element is read and written by one thread, inputs before outputs, so an
// output may alias an input of the same type (add_f32_bf16's y = a).
template <class Op, bool VEC>
__global__ void __launch_bounds__(kThreads) map4_kernel(Op op, int64_t n) {
  const int64_t i = 4 * (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
  if (i >= n) return;
  if (VEC && i + 4 <= n) {
    op.template apply<4>(i);
  } else {
    const int64_t end = i + 4 < n ? i + 4 : n;
    for (int64_t k = i; k < end; ++k) op.template apply<1>(k);
  }
}

template <class Out, class In>
struct Cast {
  Out* out;
  const In* in;
  template <int W>
  __device__ void apply(int64_t i) const {
    float v[4];
    load<W>(v, in, i);
    store<W>(out, i, v);
  }
};

struct AddF32Bf16 {
  float* y;
  const float* a;
  const bf16* b;
  template <int W>
  __device__ void apply(int64_t i) const {
    float va[4], vb[4];
    load<W>(va, a, i);
    load<W>(vb, b, i);
    for (int k = 0; k < W; ++k) va[k] += vb[k];
    store<W>(y, i, va);
  }
};

// y (T, N) += bias (N): element i is column i % N. With W = 4 the launcher guarantees
// N % 4 == 0, so the four elements share a row and read bias[c .. c + 3].
template <class Y>
struct AddBias {
  Y* y;
  const float* bias;
  int64_t N;
  template <int W>
  __device__ void apply(int64_t i) const {
    float v[4], b[4];
    load<W>(v, y, i);
    load<W>(b, bias, i % N);
    for (int k = 0; k < W; ++k) v[k] += b[k];
    store<W>(y, i, v);
  }
};

// The CPU's dropout (ops/linear.cpp): element i of the flattened (T, in) input is kept when
// rng_uniform(key, i) >= p, and a kept value is multiplied by scale = 1 / (1 - p) in fp32.
struct DropoutForward {
  bf16* h;
  const bf16* x;
  float p, scale;
  uint64_t key;
  template <int W>
  __device__ void apply(int64_t i) const {
    float v[4];
    load<W>(v, x, i);
    for (int k = 0; k < W; ++k)
      v[k] = rng_uniform(key, static_cast<uint64_t>(i + k)) >= p ? v[k] * scale : 0.0f;
    store<W>(h, i, v);
  }
};

struct DropoutBackwardAdd {
  float* dx;
  const float* dh;
  float p, scale;
  uint64_t key;
  template <int W>
  __device__ void apply(int64_t i) const {
    float v[4], g[4];
    load<W>(v, dx, i);
    load<W>(g, dh, i);
    for (int k = 0; k < W; ++k)
      if (rng_uniform(key, static_cast<uint64_t>(i + k)) >= p) v[k] += g[k] * scale;
    store<W>(dx, i, v);
  }
};

// out (T, C) = table[ids[t]] (+ pos_table[pos[t]]), a block per token row.
template <bool VEC>
__global__ void __launch_bounds__(kRowThreads)
    embedding_kernel(float* __restrict__ out, const int32_t* __restrict__ ids, const bf16* __restrict__ table,
                     const int32_t* __restrict__ pos, const bf16* __restrict__ pos_table, int64_t C) {
  const int64_t t = blockIdx.x;
  const bf16* row = table + static_cast<int64_t>(ids[t]) * C;
  const bf16* prow = pos_table ? pos_table + static_cast<int64_t>(pos[t]) * C : nullptr;
  float* o = out + t * C;
  constexpr int W = VEC ? 4 : 1;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * W; c < C; c += static_cast<int64_t>(kRowThreads) * W) {
    float v[4];
    load<W>(v, row, c);
    if (prow) {
      float q[4];
      load<W>(q, prow, c);
      for (int k = 0; k < W; ++k) v[k] += q[k];
    }
    store<W>(o, c, v);
  }
}

// out[i, :] = in[index[i], :] (bf16), 8 values per 16-byte access when VEC.
template <bool VEC>
__global__ void __launch_bounds__(kRowThreads)
    gather_rows_kernel(bf16* __restrict__ out, const bf16* __restrict__ in, const int64_t* __restrict__ index,
                       int64_t C) {
  const int64_t i = blockIdx.x;
  const bf16* src = in + index[i] * C;
  bf16* dst = out + i * C;
  if (VEC) {
    const int64_t chunks = C / 8;
    for (int64_t c = threadIdx.x; c < chunks; c += kRowThreads)
      reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
  } else {
    for (int64_t c = threadIdx.x; c < C; c += kRowThreads) dst[c] = src[c];
  }
}

// dx[index[i], :] += d[i, :]; the indices are distinct, so no two blocks touch one row.
template <bool VEC>
__global__ void __launch_bounds__(kRowThreads)
    scatter_add_rows_kernel(float* __restrict__ dx, const float* __restrict__ d, const int64_t* __restrict__ index,
                            int64_t C) {
  const int64_t i = blockIdx.x;
  float* dst = dx + index[i] * C;
  const float* src = d + i * C;
  constexpr int W = VEC ? 4 : 1;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * W; c < C; c += static_cast<int64_t>(kRowThreads) * W) {
    float a[4], b[4];
    load<W>(a, dst, c);
    load<W>(b, src, c);
    for (int k = 0; k < W; ++k) a[k] += b[k];
    store<W>(dst, c, a);
  }
}

// map4_kernel: 4 elements per thread.
inline unsigned map4_grid(int64_t n) { return static_cast<unsigned>(ceil_div(ceil_div(n, 4), kThreads)); }

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::elementwise_kernels
