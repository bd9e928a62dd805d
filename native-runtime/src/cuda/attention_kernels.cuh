#pragma once
// The attention kernels (attention.cu launches them), in a header of their own so that a
// host build runs the very same source: tests/cuda/test_cuda_attention_emulated.cpp executes
// them on the CPU with tests/cuda/emu_shim.hpp and emu_mma.hpp (ldmatrix, mma.sync and
// cp.async rebuilt from their PTX definitions). See attention.cu for the algorithm.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"

// Dynamic shared memory: the launch's third <<<>>> argument on a GPU, the emulator's
// per-block buffer (filled with NaNs before each block) on the host.
#if defined(__CUDACC__)
#define LORA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#else
#define LORA_DYNAMIC_SMEM(name) unsigned char* const name = ::emu::dynamic_smem()
#endif

namespace lora::cuda::attention_kernels {
inline namespace LORA_KERNEL_ABI {

#if !defined(__CUDACC__)
using std::min;
#endif

constexpr int kThreads = 128;  // 4 warps in every attention block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes of one head-dim instantiation. Shared-memory rows are DP + 8 bf16 wide: the
// extra 16 bytes shift consecutive rows by 4 banks, so the 8 row addresses of every
// ldmatrix phase hit distinct banks. Sizes stay under 99 KB so that sm_86/sm_89 (99 KB per
// block) run them as well as sm_80 (163 KB) and sm_90 (227 KB).
template <int DP>
struct Tiles {
  static constexpr int kLd = DP + 8;
  static constexpr int kFwdQ = 64;                     // queries per forward block (16 per warp)
  static constexpr int kFwdK = DP > 128 ? 32 : 64;     // keys per forward tile (registers: kFwdK/2 scores)
  // Backward: keys per block = queries per tile. Above 128 the dK/dV accumulators of one
  // 16-key slab are split by columns over two warps (kSplit), which both compute that slab's
  // scores, to keep each thread under 255 registers.
  static constexpr int kBwd = DP > 128 ? 32 : 64;
  static constexpr int kSplit = DP > 128 ? 2 : 1;
  static constexpr int kSlabs = kBwd / 16;
  static constexpr int kDps = DP / kSplit;             // dK/dV/dQ columns per warp
  static_assert(kSlabs * kSplit * 32 == kThreads, "backward warps must cover slabs x column parts");
  static_assert(kDps % 16 == 0, "column parts are loaded 16 at a time");

  static constexpr size_t kFwdSmem = size_t(kFwdQ + 2 * kFwdK) * kLd * sizeof(bf16);
  static constexpr int kDsLd = kBwd + 8;
  static constexpr size_t kBwdSmem =
      size_t(4 * kBwd) * kLd * sizeof(bf16) + size_t(kBwd) * kDsLd * sizeof(bf16) + 3 * size_t(kBwd) * 4;
  static_assert(kFwdSmem <= 99 * 1024 && kBwdSmem <= 99 * 1024, "tiles must fit sm_86/sm_89 blocks");
};

// ---- warp-level tensor-core primitives (PTX ISA: mma.m16n8k16 and ldmatrix fragments) ----
//
// With g = lane / 4 and c = lane % 4, an m16n8k16 thread holds
//   A (16x16, row-major): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B (16x8, k x n):      b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g)
//   C (16x8, fp32):       c0, c1 = (g, 2c), (g, 2c+1); c2, c3 = (g+8, 2c), (g+8, 2c+1)
// so the C fragments of two adjacent n-tiles are exactly the A fragment of one 16-wide
// k-slab: probabilities go from the score product into the value product without leaving
// registers.

#if defined(__CUDACC__)
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without a register round trip (sm_80+); with valid false the
// destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
// Waits for every cp.async this thread issued; a __syncthreads must follow before other
// threads read the data.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Closes the group of cp.async issued since the last commit (an empty group is allowed).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most the newest group is still in flight: every older one has landed.
__device__ __forceinline__ void cp_async_wait_all_but_newest() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
#else
// The host build (tests/cuda/emu_mma.hpp): the same operations on the emulator's per-block
// shared memory; copies land at the latest wait the PTX allows (or, in a second pass of the
// test, at issue).
inline void ldsm_x4(uint32_t (&r)[4], const bf16* p) { ::emu::ldmatrix_x4(r, p, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) { ::emu::ldmatrix_x4(r, p, true); }
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::emu::mma_m16n8k16(d, a, b0, b1);
}
inline void cp_async_16(void* dst, const void* src, bool valid) { ::emu::cp_async_16(dst, src, valid); }
inline void cp_async_wait_all() { ::emu::cp_async_wait_all(); }
inline void cp_async_commit() { ::emu::cp_async_commit(); }
inline void cp_async_wait_all_but_newest() { ::emu::cp_async_wait_group(1); }
#endif

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) is the low half
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

// ldmatrix.x4 takes one row address per lane (lanes 8i..8i+7: rows of 8x8 matrix i). Two
// address patterns cover every operand here, for a 16x16 block at `base` with row stride ld:
//  - rows_then_cols: lane -> (row lane % 16, col 8 * (lane / 16)). Plain: an A fragment of
//    a row-major (m x k) block. Transposed: the B fragments of two n-tiles of a (k x n) block.
//  - cols_then_rows: lane -> (row lane % 8 + 8 * (lane / 16), col 8 * (lane / 8 % 2)). Plain:
//    the B fragments of two n-tiles of an (n x k) block (B^T stored). Transposed: an A
//    fragment of a (k x m) block (A^T stored).
// For B, r[0], r[1] are (b0, b1) of the first n-tile and r[2], r[3] of the second.
__device__ __forceinline__ const bf16* rows_then_cols(const bf16* base, int ld, int lane) {
  return base + (lane & 15) * ld + (lane >> 4) * 8;
}
__device__ __forceinline__ const bf16* cols_then_rows(const bf16* base, int ld, int lane) {
  return base + ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8;
}

// Starts the copy of rows [0, NR) of a tile: row r is token t0 + r of one head, read from
// `src` (its first row, n_valid >= 1) with `stride` elements between tokens. Rows >= n_valid
// and columns >= D are zeros, so padded products contribute exactly nothing (uninitialised
// memory could hold NaNs). Complete with a cp.async wait and a barrier.
template <int DP, int NR>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t stride, int n_valid, int D) {
  constexpr int kChunks = DP / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < NR * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < n_valid && col < D;
    cp_async_16(dst + r * (DP + 8) + col, valid ? src + r * stride + col : src, valid);
  }
}

// ---- forward ----

// grid (Hq, rows, query tiles). q: (rows*T, Hq, D), k, v: (rows*T, Hkv, D).
template <int DP>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                             const bf16* __restrict__ k, const bf16* __restrict__ v,
                             const int32_t* __restrict__ doc_start, int T, int Hq, int Hkv, int D,
                             float scale_log2) {
  using Cfg = Tiles<DP>;
  constexpr int BQ = Cfg::kFwdQ, BK = Cfg::kFwdK, LD = Cfg::kLd;
  LORA_DYNAMIC_SMEM(smem_raw);
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);
  bf16* k_s = q_s + BQ * LD;
  bf16* v_s = k_s + BK * LD;

  const int h = blockIdx.x, row = blockIdx.y;
  // The last query tiles see the most keys: schedule them first.
  const int q0 = (gridDim.z - 1 - blockIdx.z) * BQ;
  const int hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int64_t tok0 = int64_t(row) * T;  // first token of the row
  const int32_t* ds_row = doc_start + tok0;
  const int64_t q_stride = int64_t(Hq) * D, kv_stride = int64_t(Hkv) * D;

  const int q_valid = min(BQ, T - q0);
  load_tile<DP, BQ>(q_s, q + ((tok0 + q0) * Hq + h) * D, q_stride, q_valid, D);

  // This thread's two query rows (g and g + 8 of its warp's 16). A row past T sees no key.
  const int t_a = q0 + warp * 16 + g, t_b = t_a + 8;
  const int ds_a = t_a < T ? ds_row[t_a] : INT_MAX;
  const int ds_b = t_b < T ? ds_row[t_b] : INT_MAX;

  float o[DP / 8][4];
LORA_UNROLL
  for (int i = 0; i < DP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;  // l: this thread's partial sums

  // Keys stream in as FA2 does: K of the next tile loads while this tile's P V runs, V of
  // this tile while its scores and softmax run. Groups in flight: {Q, K_0}, then per tile
  // {V_i} and {K_i+1} (empty after the last tile).
  const int k_begin = ds_row[q0], k_end = q0 + q_valid;
  load_tile<DP, BK>(k_s, k + ((tok0 + k_begin) * Hkv + hk) * D, kv_stride, min(BK, k_end - k_begin), D);
  cp_async_commit();
  const bf16* q_w = q_s + warp * 16 * LD;
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    __syncthreads();  // every warp is done with the previous tile's P V: v_s is free
    load_tile<DP, BK>(v_s, v + ((tok0 + k0) * Hkv + hk) * D, kv_stride, min(BK, k_end - k0), D);
    cp_async_commit();
    cp_async_wait_all_but_newest();  // K_i (and, the first time, Q) landed; V_i may not have
    __syncthreads();

    // s: this warp's 16 queries x BK keys.
    float s[BK / 8][4];
LORA_UNROLL
    for (int i = 0; i < BK / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
LORA_UNROLL
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4(a, rows_then_cols(q_w + kk * 16, LD, lane));
LORA_UNROLL
      for (int nt = 0; nt < BK / 16; ++nt) {
        uint32_t b[4];
        ldsm_x4(b, cols_then_rows(k_s + nt * 16 * LD + kk * 16, LD, lane));
        mma_16816(s[2 * nt], a, b[0], b[1]);
        mma_16816(s[2 * nt + 1], a, b[2], b[3]);
      }
    }

    // Mask (key j allowed for query t iff doc_start[t] <= j <= t; padded keys are past every
    // t < k_end), then the online-softmax update in the log2 domain.
    float mx_a = -INFINITY, mx_b = -INFINITY;
LORA_UNROLL
    for (int nt = 0; nt < BK / 8; ++nt) {
LORA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + nt * 8 + 2 * c + (e & 1);
        const bool lower = e < 2;
        const int t = lower ? t_a : t_b, ds = lower ? ds_a : ds_b;
        const float x = (j >= ds && j <= t) ? s[nt][e] * scale_log2 : -INFINITY;
        s[nt][e] = x;
        if (lower)
          mx_a = fmaxf(mx_a, x);
        else
          mx_b = fmaxf(mx_b, x);
      }
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    const float new_a = fmaxf(m_a, mx_a), new_b = fmaxf(m_b, mx_b);
    // A row with no allowed key so far keeps max -inf; subtracting 0 instead keeps
    // exp2(-inf - max) at 0 rather than NaN.
    const float base_a = new_a == -INFINITY ? 0.f : new_a;
    const float base_b = new_b == -INFINITY ? 0.f : new_b;
    const float alpha_a = exp2f(m_a - base_a), alpha_b = exp2f(m_b - base_b);
    m_a = new_a;
    m_b = new_b;
    l_a *= alpha_a;
    l_b *= alpha_b;
LORA_UNROLL
    for (int i = 0; i < DP / 8; ++i) {
      o[i][0] *= alpha_a;
      o[i][1] *= alpha_a;
      o[i][2] *= alpha_b;
      o[i][3] *= alpha_b;
    }
LORA_UNROLL
    for (int nt = 0; nt < BK / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - base_a);
      s[nt][1] = exp2f(s[nt][1] - base_a);
      s[nt][2] = exp2f(s[nt][2] - base_b);
      s[nt][3] = exp2f(s[nt][3] - base_b);
      l_a += s[nt][0] + s[nt][1];
      l_b += s[nt][2] + s[nt][3];
    }

    __syncthreads();  // every warp is done with k_s
    if (k0 + BK < k_end)
      load_tile<DP, BK>(k_s, k + ((tok0 + k0 + BK) * Hkv + hk) * D, kv_stride, min(BK, k_end - k0 - BK), D);
    cp_async_commit();
    cp_async_wait_all_but_newest();  // V_i landed; K_i+1 may still be in flight
    __syncthreads();

    // o += P V, P (16 x BK) straight from the score registers.
LORA_UNROLL
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint32_t a[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                             pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
LORA_UNROLL
      for (int dn = 0; dn < DP / 16; ++dn) {
        uint32_t b[4];
        ldsm_x4_trans(b, rows_then_cols(v_s + kk * 16 * LD + dn * 16, LD, lane));
        mma_16816(o[2 * dn], a, b[0], b[1]);
        mma_16816(o[2 * dn + 1], a, b[2], b[3]);
      }
    }
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  // Every real row sees at least its own key, so l >= 1 there (the max element gives 2^0).
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  if (t_a < T) {
    bf16* dst = out + ((tok0 + t_a) * Hq + h) * D;
LORA_UNROLL
    for (int i = 0; i < DP / 8; ++i) {
      const int col = i * 8 + 2 * c;
      if (col < D)
        *reinterpret_cast<__nv_bfloat162*>(dst + col) = __floats2bfloat162_rn(o[i][0] * inv_a, o[i][1] * inv_a);
    }
    if (c == 0) lse[(int64_t(row) * Hq + h) * T + t_a] = (m_a + log2f(l_a)) * kLn2;
  }
  if (t_b < T) {
    bf16* dst = out + ((tok0 + t_b) * Hq + h) * D;
LORA_UNROLL
    for (int i = 0; i < DP / 8; ++i) {
      const int col = i * 8 + 2 * c;
      if (col < D)
        *reinterpret_cast<__nv_bfloat162*>(dst + col) = __floats2bfloat162_rn(o[i][2] * inv_b, o[i][3] * inv_b);
    }
    if (c == 0) lse[(int64_t(row) * Hq + h) * T + t_b] = (m_b + log2f(l_b)) * kLn2;
  }
}

// ---- backward ----

// delta[(row*Hq + h)*T + t] = sum_d dO * O, one warp per (token, head); 8 warps per block.
__global__ void attention_delta_kernel(float* __restrict__ delta, const bf16* __restrict__ dout,
                                       const bf16* __restrict__ out, int64_t items, int T, int Hq, int D) {
  const int64_t item = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (item >= items) return;
  const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(dout + item * D);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(out + item * D);
  float s = 0.f;
  for (int i = lane; i < D / 2; i += 32) {
    const float2 x = __bfloat1622float2(a[i]), y = __bfloat1622float2(b[i]);
    s += x.x * y.x + x.y * y.y;
  }
LORA_UNROLL
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) {
    const int64_t token = item / Hq;  // row * T + t
    const int h = int(item % Hq);
    const int64_t row = token / T, t = token % T;
    delta[(row * Hq + h) * T + t] = s;
  }
}

// grid (Hq, rows, key tiles). Warp w owns the 16-key slab w % kSlabs and, of dK/dV and dQ,
// the columns [part * kDps, (part + 1) * kDps) with part = w / kSlabs.
// dq_acc: (rows*T, Hq, D) fp32, scaled dQ summed with atomics. When kv_acc is true, dK/dV
// are summed into dk_acc, dv_acc ((rows*T, Hkv, D) fp32: the group's query heads share
// them); otherwise this block is their only writer and stores bf16 into dk, dv directly.
template <int DP>
__global__ void __launch_bounds__(kThreads)
    attention_backward_kernel(float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv,
                              float* __restrict__ dk_acc, float* __restrict__ dv_acc, bool kv_acc,
                              const bf16* __restrict__ dout, const float* __restrict__ lse,
                              const float* __restrict__ delta, const bf16* __restrict__ q,
                              const bf16* __restrict__ k, const bf16* __restrict__ v,
                              const int32_t* __restrict__ doc_start, int T, int Hq, int Hkv, int D, float scale,
                              float scale_log2) {
  using Cfg = Tiles<DP>;
  constexpr int B = Cfg::kBwd, LD = Cfg::kLd, DPS = Cfg::kDps, DSLD = Cfg::kDsLd;
  LORA_DYNAMIC_SMEM(smem_raw);
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);
  bf16* v_s = k_s + B * LD;
  bf16* q_s = v_s + B * LD;
  bf16* do_s = q_s + B * LD;
  bf16* dst_s = do_s + B * LD;  // dS^T: (B keys) x (B queries)
  float* lse_s = reinterpret_cast<float*>(dst_s + B * DSLD);  // log2 domain
  float* delta_s = lse_s + B;
  int* dsq_s = reinterpret_cast<int*>(delta_s + B);  // doc_start of the tile's queries

  const int h = blockIdx.x, row = blockIdx.y;
  const int k0 = blockIdx.z * B;  // the earliest key tiles see the most queries and go first
  const int hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int slab = warp % Cfg::kSlabs, part = warp / Cfg::kSlabs;
  const int col0 = part * DPS;
  const int64_t tok0 = int64_t(row) * T;
  const int32_t* ds_row = doc_start + tok0;
  const int64_t q_stride = int64_t(Hq) * D, kv_stride = int64_t(Hkv) * D;
  const float* lse_h = lse + (int64_t(row) * Hq + h) * T;
  const float* delta_h = delta + (int64_t(row) * Hq + h) * T;

  const int k_valid = min(B, T - k0);
  const int k_last = k0 + k_valid - 1;
  load_tile<DP, B>(k_s, k + ((tok0 + k0) * Hkv + hk) * D, kv_stride, k_valid, D);
  load_tile<DP, B>(v_s, v + ((tok0 + k0) * Hkv + hk) * D, kv_stride, k_valid, D);

  // Queries that see a key of this tile: t >= k0 with doc_start[t] <= k_last. Every
  // t <= k_last qualifies; past it, doc_start is non-decreasing, so binary search for the end.
  int lo = k_last + 1, hi = T;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ds_row[mid] <= k_last)
      lo = mid + 1;
    else
      hi = mid;
  }
  const int t_end = lo;

  float dk_r[DPS / 8][4], dv_r[DPS / 8][4];
LORA_UNROLL
  for (int i = 0; i < DPS / 8; ++i)
LORA_UNROLL
    for (int e = 0; e < 4; ++e) dk_r[i][e] = dv_r[i][e] = 0.f;

  const bf16* k_w = k_s + slab * 16 * LD;
  const bf16* v_w = v_s + slab * 16 * LD;
  const int j_a = k0 + slab * 16 + g, j_b = j_a + 8;  // this thread's two keys

  // Starts loading query tile [q0, q0 + B): Q and dO by cp.async, the per-query lse (log2
  // domain), delta and doc_start by plain stores. Its consumers wait and pass a barrier.
  auto load_queries = [&](int q0) {
    const int q_valid = min(B, t_end - q0);
    load_tile<DP, B>(q_s, q + ((tok0 + q0) * Hq + h) * D, q_stride, q_valid, D);
    load_tile<DP, B>(do_s, dout + ((tok0 + q0) * Hq + h) * D, q_stride, q_valid, D);
    for (int i = threadIdx.x; i < B; i += kThreads) {
      const bool ok = i < q_valid;
      lse_s[i] = ok ? lse_h[q0 + i] * kLog2e : 0.f;
      delta_s[i] = ok ? delta_h[q0 + i] : 0.f;
      dsq_s[i] = ok ? ds_row[q0 + i] : INT_MAX;  // a padded query sees no key
    }
  };
  load_queries(k0);

  // The next query tile loads while this one's dQ product and atomics run: by then no warp
  // reads q_s, do_s or the per-query values any more.
  for (int q0 = k0; q0 < t_end; q0 += B) {
    const int q_valid = min(B, t_end - q0);
    cp_async_wait_all();  // (the first time, the K and V tiles too)
    __syncthreads();      // the tile is visible; every warp is done with the previous dst_s

    // S^T and dP^T for this warp's 16 keys x B queries: K_slab Q^T and V_slab dO^T.
    float st[B / 8][4], dpt[B / 8][4];
LORA_UNROLL
    for (int i = 0; i < B / 8; ++i)
LORA_UNROLL
      for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
LORA_UNROLL
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t ak[4], av[4];
      ldsm_x4(ak, rows_then_cols(k_w + kk * 16, LD, lane));
      ldsm_x4(av, rows_then_cols(v_w + kk * 16, LD, lane));
LORA_UNROLL
      for (int nt = 0; nt < B / 16; ++nt) {
        uint32_t bq[4], bd[4];
        ldsm_x4(bq, cols_then_rows(q_s + nt * 16 * LD + kk * 16, LD, lane));
        ldsm_x4(bd, cols_then_rows(do_s + nt * 16 * LD + kk * 16, LD, lane));
        mma_16816(st[2 * nt], ak, bq[0], bq[1]);
        mma_16816(st[2 * nt + 1], ak, bq[2], bq[3]);
        mma_16816(dpt[2 * nt], av, bd[0], bd[1]);
        mma_16816(dpt[2 * nt + 1], av, bd[2], bd[3]);
      }
    }

    // P^T from the saved lse (masked entries exactly 0), then dS^T = P^T (dP^T - delta).
LORA_UNROLL
    for (int nt = 0; nt < B / 8; ++nt) {
LORA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int il = nt * 8 + 2 * c + (e & 1);  // query within the tile
        const int t = q0 + il, j = e < 2 ? j_a : j_b;
        const bool allowed = j >= dsq_s[il] && j <= t;
        const float p = allowed ? exp2f(st[nt][e] * scale_log2 - lse_s[il]) : 0.f;
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - delta_s[il]);
      }
    }

    // dS^T to shared memory for the dQ product (which needs it transposed across warps).
    if (part == 0) {
LORA_UNROLL
      for (int nt = 0; nt < B / 8; ++nt) {
        bf16* r0 = dst_s + (slab * 16 + g) * DSLD + nt * 8 + 2 * c;
        *reinterpret_cast<uint32_t*>(r0) = pack_bf16x2(dpt[nt][0], dpt[nt][1]);
        *reinterpret_cast<uint32_t*>(r0 + 8 * DSLD) = pack_bf16x2(dpt[nt][2], dpt[nt][3]);
      }
    }

    // dV += P^T dO and dK += dS^T Q over this tile's queries (this warp's columns).
LORA_UNROLL
    for (int kq = 0; kq < B / 16; ++kq) {
      const uint32_t ap[4] = {pack_bf16x2(st[2 * kq][0], st[2 * kq][1]), pack_bf16x2(st[2 * kq][2], st[2 * kq][3]),
                              pack_bf16x2(st[2 * kq + 1][0], st[2 * kq + 1][1]),
                              pack_bf16x2(st[2 * kq + 1][2], st[2 * kq + 1][3])};
      const uint32_t as[4] = {pack_bf16x2(dpt[2 * kq][0], dpt[2 * kq][1]),
                              pack_bf16x2(dpt[2 * kq][2], dpt[2 * kq][3]),
                              pack_bf16x2(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                              pack_bf16x2(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
LORA_UNROLL
      for (int dn = 0; dn < DPS / 16; ++dn) {
        uint32_t bd[4], bq[4];
        ldsm_x4_trans(bd, rows_then_cols(do_s + kq * 16 * LD + col0 + dn * 16, LD, lane));
        ldsm_x4_trans(bq, rows_then_cols(q_s + kq * 16 * LD + col0 + dn * 16, LD, lane));
        mma_16816(dv_r[2 * dn], ap, bd[0], bd[1]);
        mma_16816(dv_r[2 * dn + 1], ap, bd[2], bd[3]);
        mma_16816(dk_r[2 * dn], as, bq[0], bq[1]);
        mma_16816(dk_r[2 * dn + 1], as, bq[2], bq[3]);
      }
    }
    __syncthreads();  // dst_s complete; q_s, do_s and the per-query values are free
    if (q0 + B < t_end) load_queries(q0 + B);

    // dQ rows [16 * slab, +16) of the tile (warps reuse the slab index for query rows),
    // columns of this warp's part: dS (queries x keys) K, summed into dq_acc.
    {
      float dq_r[DPS / 8][4];
LORA_UNROLL
      for (int i = 0; i < DPS / 8; ++i) dq_r[i][0] = dq_r[i][1] = dq_r[i][2] = dq_r[i][3] = 0.f;
LORA_UNROLL
      for (int kk = 0; kk < B / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4_trans(a, cols_then_rows(dst_s + kk * 16 * DSLD + slab * 16, DSLD, lane));
LORA_UNROLL
        for (int dn = 0; dn < DPS / 16; ++dn) {
          uint32_t b[4];
          ldsm_x4_trans(b, rows_then_cols(k_s + kk * 16 * LD + col0 + dn * 16, LD, lane));
          mma_16816(dq_r[2 * dn], a, b[0], b[1]);
          mma_16816(dq_r[2 * dn + 1], a, b[2], b[3]);
        }
      }
      const int ra = slab * 16 + g, rb = ra + 8;
LORA_UNROLL
      for (int i = 0; i < DPS / 8; ++i) {
        const int col = col0 + i * 8 + 2 * c;
        if (col >= D) continue;
        if (ra < q_valid) {
          float* dst = dq_acc + ((tok0 + q0 + ra) * Hq + h) * D + col;
          atomicAdd(dst, dq_r[i][0] * scale);
          atomicAdd(dst + 1, dq_r[i][1] * scale);
        }
        if (rb < q_valid) {
          float* dst = dq_acc + ((tok0 + q0 + rb) * Hq + h) * D + col;
          atomicAdd(dst, dq_r[i][2] * scale);
          atomicAdd(dst + 1, dq_r[i][3] * scale);
        }
      }
    }
  }

  // This warp's dK (scaled) and dV rows.
LORA_UNROLL
  for (int half = 0; half < 2; ++half) {
    const int j = half ? j_b : j_a;
    if (j > k_last) continue;
    const int64_t off = ((tok0 + j) * Hkv + hk) * D;
LORA_UNROLL
    for (int i = 0; i < DPS / 8; ++i) {
      const int col = col0 + i * 8 + 2 * c;
      if (col >= D) continue;
      const float k0v = dk_r[i][2 * half] * scale, k1v = dk_r[i][2 * half + 1] * scale;
      const float v0v = dv_r[i][2 * half], v1v = dv_r[i][2 * half + 1];
      if (kv_acc) {
        atomicAdd(dk_acc + off + col, k0v);
        atomicAdd(dk_acc + off + col + 1, k1v);
        atomicAdd(dv_acc + off + col, v0v);
        atomicAdd(dv_acc + off + col + 1, v1v);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(dk + off + col) = __floats2bfloat162_rn(k0v, k1v);
        *reinterpret_cast<__nv_bfloat162*>(dv + off + col) = __floats2bfloat162_rn(v0v, v1v);
      }
    }
  }
}

__global__ void f32_to_bf16_kernel(bf16* __restrict__ dst, const float* __restrict__ src, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

// ---- launch geometry (attention.cu and the emulated test) ----

template <int DP>
inline dim3 forward_grid(int64_t rows, int64_t T, int64_t Hq) {
  return dim3(unsigned(Hq), unsigned(rows), unsigned(ceil_div(T, Tiles<DP>::kFwdQ)));
}
template <int DP>
inline dim3 backward_grid(int64_t rows, int64_t T, int64_t Hq) {
  return dim3(unsigned(Hq), unsigned(rows), unsigned(ceil_div(T, Tiles<DP>::kBwd)));
}
constexpr int kDeltaThreads = 256;  // 8 warps: one (token, head) each
inline unsigned delta_grid(int64_t items) { return unsigned(ceil_div(items, kDeltaThreads / 32)); }
constexpr int kConvertThreads = 256;
inline unsigned convert_grid(int64_t n) { return unsigned(std::min<int64_t>(ceil_div(n, kConvertThreads), 65536)); }

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::attention_kernels
