#pragma once
// The built-in GEMM's kernel (gemm_wmma.cu launches it), in a header of its own so that a
// host build can run the very same source: tests/cuda/test_cuda_gemm_emulated.cpp executes
// it on the CPU, one std::thread per CUDA thread, with a host nvcuda::wmma of its own. A
// host build therefore sees no CUDA-only syntax here: no launches, and the PTX only under
// __CUDA_ARCH__ (with a synchronous copy in its place).
//
// Each block computes a BM x BN tile of C, stepping through K in slices of 32. The slices
// of A and B are staged in shared memory in the orientation they have in global memory
// (so every global read is along a contiguous row), and the WMMA fragments are loaded
// row- or column-major to match: A^T stored [K, M] is the column-major view of op(A). Two
// stages alternate so the copy of slice k+1 (cp.async, 16 bytes per thread) overlaps the
// tensor-core work on slice k. Copies that are not 16-byte aligned, or that cross the
// matrix edge, go element by element with zeros past the edge: a tile never holds stale
// data, so the products of the padding are exact zeros.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/gemm.hpp"
#include "cuda/kernel_support.cuh"

#if defined(__CUDACC__)
#include <mma.h>
#define LORA_GEMM_UNROLL _Pragma("unroll")
#else
#define LORA_GEMM_UNROLL
#endif

namespace lora::cuda::wmma_gemm {
// A name of its own per build (kernel_support.cuh), so that this header compiled for the host
// emulator (test_cuda_gemm_emulated.cpp) and the host-side launch functions nvcc generates never share weak symbols.
inline namespace LORA_KERNEL_ABI {

constexpr int kBK = 32;   // K slice per stage
constexpr int kPad = 8;   // elements added to each shared row: spreads banks, keeps 16-byte rows

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *reinterpret_cast<uint4*>(smem_dst) = *reinterpret_cast<const uint4*>(gmem_src);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Copies the ROWS x COLS window at (row0, col0) of a row-major global matrix with `nrows`
// x `ncols` valid elements and stride `ld` into shared memory with stride LDS; elements
// outside the matrix become zero. `vec` says the base pointer and `ld` allow 16-byte copies.
template <int ROWS, int COLS, int LDS, int NTHREADS>
__device__ __forceinline__ void load_tile(bf16* smem, const bf16* __restrict__ g, int64_t ld, int64_t row0,
                                          int64_t col0, int64_t nrows, int64_t ncols, bool vec) {
  static_assert(COLS % 8 == 0 && LDS % 8 == 0, "16-byte chunks");
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  constexpr int kIters = (kChunks + NTHREADS - 1) / NTHREADS;
LORA_GEMM_UNROLL
  for (int it = 0; it < kIters; ++it) {
    const int c = static_cast<int>(threadIdx.x) + it * NTHREADS;
    if (kChunks % NTHREADS != 0 && c >= kChunks) break;
    const int r = c / kChunksPerRow;
    const int cc = (c % kChunksPerRow) * 8;
    const int64_t gr = row0 + r;
    const int64_t gc = col0 + cc;
    bf16* dst = smem + r * LDS + cc;
    if (gr < nrows && gc + 8 <= ncols && vec) {
      cp_async16(dst, g + gr * ld + gc);
    } else if (gr < nrows && gc < ncols) {
      const unsigned short* src = reinterpret_cast<const unsigned short*>(g + gr * ld + gc);
      unsigned short* d = reinterpret_cast<unsigned short*>(dst);
LORA_GEMM_UNROLL
      for (int e = 0; e < 8; ++e) d[e] = gc + e < ncols ? src[e] : static_cast<unsigned short>(0);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

__device__ __forceinline__ float load_c(const float* p) { return *p; }
__device__ __forceinline__ float load_c(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_c(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_c(bf16* p, float v) { *p = __float2bfloat16(v); }

// Shared-memory shapes of one stage, in the global orientation of each operand:
//   A: [BM][BK] when not transposed, [BK][BM] when stored [K, M];
//   B: [BK][BN] when not transposed, [BN][BK] when stored [N, K].
template <int BM, int BN, bool TA, bool TB>
struct StageShape {
  static constexpr int kARows = TA ? kBK : BM, kACols = TA ? BM : kBK, kALd = kACols + kPad;
  static constexpr int kBRows = TB ? BN : kBK, kBCols = TB ? kBK : BN, kBLd = kBCols + kPad;
  static constexpr int kAElems = kARows * kALd, kBElems = kBRows * kBLd;
  static constexpr int kStageElems = kAElems + kBElems;
  // WMMA wants 32-byte aligned fragment pointers: every row stride is a multiple of 8
  // elements and every fragment starts at a multiple of 16 rows, so offsets of 16 rows are
  // multiples of 256 bytes; the B tile and the second stage must keep that alignment.
  static_assert((kAElems * 2) % 32 == 0 && (kStageElems * 2) % 32 == 0, "fragment alignment");
};

template <int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB, typename CT>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
    gemm_wmma_kernel(const bf16* __restrict__ A, int64_t lda, const bf16* __restrict__ B, int64_t ldb, CT* C,
                     int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta, bool a_vec, bool b_vec) {
  using namespace nvcuda;
  using S = StageShape<BM, BN, TA, TB>;
  constexpr int kThreads = WARPS_M * WARPS_N * 32;
  constexpr int kWarpM = BM / WARPS_M, kWarpN = BN / WARPS_N;
  constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 16;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile is whole fragments");
  constexpr int kTileBytes = 2 * S::kStageElems * 2;
  constexpr int kScratchBytes = WARPS_M * WARPS_N * 256 * 4;  // one 16x16 fp32 tile per warp
  constexpr int kSmemBytes = kTileBytes > kScratchBytes ? kTileBytes : kScratchBytes;
  static_assert(kSmemBytes <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  bf16* const tiles = reinterpret_cast<bf16*>(smem);

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;

  using ALayout = std::conditional_t<TA, wmma::col_major, wmma::row_major>;
  using BLayout = std::conditional_t<TB, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragM][kFragN];
LORA_GEMM_UNROLL
  for (int i = 0; i < kFragM; ++i)
LORA_GEMM_UNROLL
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto load_stage = [&](int stage, int64_t k0) {
    bf16* as = tiles + stage * S::kStageElems;
    bf16* bs = as + S::kAElems;
    if (TA)
      load_tile<S::kARows, S::kACols, S::kALd, kThreads>(as, A, lda, k0, m0, K, M, a_vec);
    else
      load_tile<S::kARows, S::kACols, S::kALd, kThreads>(as, A, lda, m0, k0, M, K, a_vec);
    if (TB)
      load_tile<S::kBRows, S::kBCols, S::kBLd, kThreads>(bs, B, ldb, n0, k0, N, K, b_vec);
    else
      load_tile<S::kBRows, S::kBCols, S::kBLd, kThreads>(bs, B, ldb, k0, n0, K, N, b_vec);
  };

  const int64_t ktiles = (K + kBK - 1) / kBK;
  if (ktiles > 0) {
    load_stage(0, 0);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    // Stage (kt+1)&1 was last read in iteration kt-1, which ended in a barrier.
    if (kt + 1 < ktiles) {
      load_stage(static_cast<int>((kt + 1) & 1), (kt + 1) * kBK);
      cp_async_commit();
      cp_async_wait<1>();  // this thread's copies of slice kt are done
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ... and every thread's (and the element-wise stores) are visible
    const bf16* as = tiles + static_cast<int>(kt & 1) * S::kStageElems;
    const bf16* bs = as + S::kAElems;
LORA_GEMM_UNROLL
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, ALayout> af[kFragM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, BLayout> bfrag[kFragN];
LORA_GEMM_UNROLL
      for (int i = 0; i < kFragM; ++i) {
        const int m = wm * kWarpM + i * 16;
        const bf16* p = TA ? as + kk * S::kALd + m : as + m * S::kALd + kk;
        wmma::load_matrix_sync(af[i], p, S::kALd);
      }
LORA_GEMM_UNROLL
      for (int j = 0; j < kFragN; ++j) {
        const int n = wn * kWarpN + j * 16;
        const bf16* p = TB ? bs + n * S::kBLd + kk : bs + kk * S::kBLd + n;
        wmma::load_matrix_sync(bfrag[j], p, S::kBLd);
      }
LORA_GEMM_UNROLL
      for (int i = 0; i < kFragM; ++i)
LORA_GEMM_UNROLL
        for (int j = 0; j < kFragN; ++j) wmma::mma_sync(acc[i][j], af[i], bfrag[j], acc[i][j]);
    }
    __syncthreads();  // the stage read here is overwritten by the next iteration's copy
  }

  // Epilogue through a per-warp 16x16 scratch tile (the stage buffers are free: the loop
  // ended in a barrier), so every store can be bounds-checked and C read only when beta != 0.
  float* scratch = reinterpret_cast<float*>(smem) + warp * 256;
  const int r = lane >> 1;
  const int c0 = (lane & 1) * 8;
LORA_GEMM_UNROLL
  for (int i = 0; i < kFragM; ++i) {
LORA_GEMM_UNROLL
    for (int j = 0; j < kFragN; ++j) {
      const int64_t row0 = m0 + wm * kWarpM + i * 16;
      const int64_t col0 = n0 + wn * kWarpN + j * 16;
      if (row0 >= M || col0 >= N) continue;  // the same for the whole warp
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int64_t gm = row0 + r;
      if (gm < M) {
        CT* crow = C + gm * ldc;
LORA_GEMM_UNROLL
        for (int e = 0; e < 8; ++e) {
          const int64_t gn = col0 + c0 + e;
          if (gn < N) {
            float v = alpha * scratch[r * 16 + c0 + e];
            if (beta != 0.0f) v += beta * load_c(crow + gn);
            store_c(crow + gn, v);
          }
        }
      }
      __syncwarp();  // the scratch tile is rewritten by the next fragment
    }
  }
}

// One launch of the kernel: gridDim.y is limited to 65535, so taller products run as
// several launches over bands of rows, each with its own A and C base pointers.
struct Band {
  const bf16* A;
  void* C;
  int64_t rows;
  bool a_vec, b_vec;  // 16-byte copies allowed
  unsigned grid_x, grid_y;
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int BM, int BN, bool TA>
std::vector<Band> plan_bands(const GemmArgs& a) {
  constexpr int64_t kMaxGridY = 65535;
  const size_t c_size = a.c_type == GemmType::F32 ? 4 : 2;
  const int64_t n_tiles = ceil_div(a.N, BN);
  const int64_t m_tiles = ceil_div(a.M, BM);
  std::vector<Band> bands;
  for (int64_t mt = 0; mt < m_tiles; mt += kMaxGridY) {
    const int64_t m_off = mt * BM;
    Band b;
    b.rows = std::min(a.M - m_off, kMaxGridY * BM);
    b.A = a.A ? a.A + (TA ? m_off : m_off * a.lda) : nullptr;
    b.C = static_cast<char*>(a.C) + static_cast<size_t>(m_off * a.ldc) * c_size;
    b.a_vec = aligned16(b.A) && a.lda % 8 == 0;
    b.b_vec = aligned16(a.B) && a.ldb % 8 == 0;
    b.grid_x = static_cast<unsigned>(n_tiles);
    b.grid_y = static_cast<unsigned>(ceil_div(b.rows, BM));
    bands.push_back(b);
  }
  return bands;
}

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::wmma_gemm
