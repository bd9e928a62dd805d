// Packed, register-blocked SGEMM in the style of BLIS / GotoBLAS:
//  1. B is packed into NR-column panels (and a transposed A into MR-row panels), K split into
//     KC blocks, so the micro-kernel streams its operands with unit stride whatever the
//     transposition; a row-major A is already read with unit stride and is used in place.
//  2. The output is cut into tiles, which the pool's threads claim one at a time. Every C
//     element is computed by one thread, summing its K blocks in ascending order with the
//     same micro-kernel, so the bits depend neither on the thread count, nor on which thread
//     took which tile, nor on the tile sizes (chosen per call for load balance).
//  3. The micro-kernel keeps an MR x NR block of C in registers (AVX2+FMA: 6 x 16 in twelve
//     ymm accumulators) and applies alpha and the accumulate flag once per K block.
#include "ops/matmul.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>

#include "common/threadpool.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LORA_GEMM_AVX2 1
#endif

namespace lora {

namespace {

constexpr int64_t MR = 6;
constexpr int64_t NR = 16;
// KC * NR floats of B (16 KiB) stay in L1 while the kernel sweeps the A panels of a tile.
constexpr int64_t KC = 256;
// Products at most this many NR panels wide are "thin": each A element feeds only N
// multiply-adds, and copying it costs about as much as 100 of them. Measured on Zen 4:
// reading A in place wins 2x at N = 16 and loses ~10% from N = 128 on, where the packed
// panel's single sequential stream prefetches better than six separate rows.
constexpr int64_t kInPlaceMaxNPanels = 6;
// Outer blocks (see gemm): at most MC_BLOCK x KC_BLOCK floats of A (4 MiB) and
// KC_BLOCK x NC_BLOCK of B (8 MiB) are packed at a time.
constexpr int64_t MC_BLOCK = 1020;  // a multiple of MR
constexpr int64_t NC_BLOCK = 2048;  // a multiple of NR
constexpr int64_t KC_BLOCK = 1024;  // a multiple of KC
// Below this many multiply-adds the hand-off to the pool costs more than it saves.
constexpr int64_t kParallelMinFlops = 1 << 18;

enum class Layout { RowMajor, Transposed };

// A 64-byte aligned scratch buffer that only grows; one per calling thread so that
// independent callers (e.g. tests on several threads) never share packing space.
struct PackBuffer {
  float* data = nullptr;
  size_t capacity = 0;
  ~PackBuffer() { std::free(data); }
  float* reserve(size_t floats) {
    if (floats > capacity) {
      std::free(data);
      data = nullptr;
      capacity = 0;
      const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data) throw std::bad_alloc();
      capacity = floats;
    }
    return data;
  }
};

thread_local PackBuffer t_pack_a;
thread_local PackBuffer t_pack_b;
thread_local PackBuffer t_transposed;

// Packs rows [i0, i0 + MR) x columns [k0, k0 + kc) of op(A) as dst[k * MR + r], zero-padding
// rows past M. op(A)(i, k) = A[i * K + k] (RowMajor) or A[k * M + i] (Transposed).
void pack_a_panel(float* dst, const float* A, Layout layout, int64_t M, int64_t K, int64_t i0,
                  int64_t k0, int64_t kc) {
  const int64_t rows = std::min(MR, M - i0);
  if (layout == Layout::RowMajor) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = A + (i0 + r) * K + k0;
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k];
    }
    for (int64_t r = rows; r < MR; ++r)
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.f;
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = A + (k0 + k) * M + i0;
      float* d = dst + k * MR;
      int64_t r = 0;
      for (; r < rows; ++r) d[r] = src[r];
      for (; r < MR; ++r) d[r] = 0.f;
    }
  }
}

// Packs columns [j0, j0 + NR) x rows [k0, k0 + kc) of op(B) as dst[k * NR + c], zero-padding
// columns past N. op(B)(k, j) = B[k * N + j] (RowMajor) or B[j * K + k] (Transposed).
void pack_b_panel(float* dst, const float* B, Layout layout, int64_t N, int64_t K, int64_t j0,
                  int64_t k0, int64_t kc) {
  const int64_t cols = std::min(NR, N - j0);
  if (layout == Layout::RowMajor) {
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = B + (k0 + k) * N + j0;
      float* d = dst + k * NR;
      if (cols == NR) {
        std::memcpy(d, src, NR * sizeof(float));
      } else {
        int64_t c = 0;
        for (; c < cols; ++c) d[c] = src[c];
        for (; c < NR; ++c) d[c] = 0.f;
      }
    }
    return;
  }
#if defined(LORA_GEMM_AVX2)
  if (cols == NR) {
    // 8 x 8 register transposes: the scalar gather-scatter of B^T is a noticeable share of
    // a forward GEMM with few tokens, because the weight is re-packed on every call.
    const float* rows[NR];
    for (int64_t c = 0; c < NR; ++c) rows[c] = B + (j0 + c) * K + k0;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      for (int64_t half = 0; half < 2; ++half) {
        const float* const* rp = rows + half * 8;
        __m256 r0 = _mm256_loadu_ps(rp[0] + k), r1 = _mm256_loadu_ps(rp[1] + k);
        __m256 r2 = _mm256_loadu_ps(rp[2] + k), r3 = _mm256_loadu_ps(rp[3] + k);
        __m256 r4 = _mm256_loadu_ps(rp[4] + k), r5 = _mm256_loadu_ps(rp[5] + k);
        __m256 r6 = _mm256_loadu_ps(rp[6] + k), r7 = _mm256_loadu_ps(rp[7] + k);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float* d = dst + k * NR + half * 8;
        _mm256_store_ps(d + 0 * NR, _mm256_permute2f128_ps(s0, s4, 0x20));
        _mm256_store_ps(d + 1 * NR, _mm256_permute2f128_ps(s1, s5, 0x20));
        _mm256_store_ps(d + 2 * NR, _mm256_permute2f128_ps(s2, s6, 0x20));
        _mm256_store_ps(d + 3 * NR, _mm256_permute2f128_ps(s3, s7, 0x20));
        _mm256_store_ps(d + 4 * NR, _mm256_permute2f128_ps(s0, s4, 0x31));
        _mm256_store_ps(d + 5 * NR, _mm256_permute2f128_ps(s1, s5, 0x31));
        _mm256_store_ps(d + 6 * NR, _mm256_permute2f128_ps(s2, s6, 0x31));
        _mm256_store_ps(d + 7 * NR, _mm256_permute2f128_ps(s3, s7, 0x31));
      }
    }
    for (; k < kc; ++k)
      for (int64_t c = 0; c < NR; ++c) dst[k * NR + c] = rows[c][k];
    return;
  }
#endif
  for (int64_t c = 0; c < cols; ++c) {
    const float* src = B + (j0 + c) * K + k0;
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = src[k];
  }
  for (int64_t c = cols; c < NR; ++c)
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = 0.f;
}

// Stores an MR x NR accumulator block: C = alpha * acc (overwrite) or C += alpha * acc,
// for the rows/cols that exist.
inline void store_block(float* C, int64_t ldc, const float* acc, int64_t rows, int64_t cols,
                        float alpha, bool overwrite) {
  for (int64_t r = 0; r < rows; ++r) {
    float* c = C + r * ldc;
    const float* a = acc + r * NR;
    if (overwrite) {
      for (int64_t j = 0; j < cols; ++j) c[j] = alpha * a[j];
    } else {
      for (int64_t j = 0; j < cols; ++j) c[j] += alpha * a[j];
    }
  }
}

// The micro-kernels read row r of the A block as a[r][k * AStep]: AStep = MR for a packed
// panel (a[r] = panel + r), 1 for rows read in place from a row-major A (a[r] = row start).
// Reading row-major A in place saves a full pass over A per call, which matters most for
// the thin GEMMs of LoRA (N = r), where packing A would cost more than the product.

#if defined(LORA_GEMM_AVX2)

// C[0:6, 0:16] (=|+=) alpha * sum_k a[r][k * AStep] * b[k * 16 + c]. Full tiles store
// straight from registers; edge tiles go through a small buffer.
template <int64_t AStep>
void micro_kernel(int64_t kc, const float* const* a, const float* b, float* C, int64_t ldc,
                  int64_t rows, int64_t cols, float alpha, bool overwrite) {
  const float* a0 = a[0];
  const float* a1 = a[1];
  const float* a2 = a[2];
  const float* a3 = a[3];
  const float* a4 = a[4];
  const float* a5 = a[5];
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
    const int64_t o = k * AStep;
    __m256 av = _mm256_broadcast_ss(a0 + o);
    c00 = _mm256_fmadd_ps(av, b0, c00);
    c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a1 + o);
    c10 = _mm256_fmadd_ps(av, b0, c10);
    c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a2 + o);
    c20 = _mm256_fmadd_ps(av, b0, c20);
    c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a3 + o);
    c30 = _mm256_fmadd_ps(av, b0, c30);
    c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a4 + o);
    c40 = _mm256_fmadd_ps(av, b0, c40);
    c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a5 + o);
    c50 = _mm256_fmadd_ps(av, b0, c50);
    c51 = _mm256_fmadd_ps(av, b1, c51);
    b += NR;
  }
  const __m256 va = _mm256_set1_ps(alpha);
  if (rows == MR && cols == NR) {
    const __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                               {c30, c31}, {c40, c41}, {c50, c51}};
    for (int64_t r = 0; r < MR; ++r) {
      float* c = C + r * ldc;
      if (overwrite) {
        _mm256_storeu_ps(c, _mm256_mul_ps(va, acc[r][0]));
        _mm256_storeu_ps(c + 8, _mm256_mul_ps(va, acc[r][1]));
      } else {
        _mm256_storeu_ps(c, _mm256_fmadd_ps(va, acc[r][0], _mm256_loadu_ps(c)));
        _mm256_storeu_ps(c + 8, _mm256_fmadd_ps(va, acc[r][1], _mm256_loadu_ps(c + 8)));
      }
    }
    return;
  }
  alignas(64) float buf[MR * NR];
  _mm256_store_ps(buf + 0 * NR, c00);
  _mm256_store_ps(buf + 0 * NR + 8, c01);
  _mm256_store_ps(buf + 1 * NR, c10);
  _mm256_store_ps(buf + 1 * NR + 8, c11);
  _mm256_store_ps(buf + 2 * NR, c20);
  _mm256_store_ps(buf + 2 * NR + 8, c21);
  _mm256_store_ps(buf + 3 * NR, c30);
  _mm256_store_ps(buf + 3 * NR + 8, c31);
  _mm256_store_ps(buf + 4 * NR, c40);
  _mm256_store_ps(buf + 4 * NR + 8, c41);
  _mm256_store_ps(buf + 5 * NR, c50);
  _mm256_store_ps(buf + 5 * NR + 8, c51);
  // The scalar tail must round exactly like the vector path: one fused multiply-add.
  for (int64_t r = 0; r < rows; ++r) {
    float* c = C + r * ldc;
    const float* s = buf + r * NR;
    for (int64_t j = 0; j < cols; ++j) c[j] = overwrite ? alpha * s[j] : std::fma(alpha, s[j], c[j]);
  }
}

#else

// Portable micro-kernel: the same blocking, written so the compiler can vectorise the
// NR-wide inner loop.
template <int64_t AStep>
void micro_kernel(int64_t kc, const float* const* a, const float* b, float* C, int64_t ldc,
                  int64_t rows, int64_t cols, float alpha, bool overwrite) {
  float acc[MR * NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = b + k * NR;
    for (int64_t r = 0; r < MR; ++r) {
      const float av = a[r][k * AStep];
      float* row = acc + r * NR;
      for (int64_t j = 0; j < NR; ++j) row[j] += av * bk[j];
    }
  }
  store_block(C, ldc, acc, rows, cols, alpha, overwrite);
}

#endif

// C[M,N] (=|+=) alpha * op(A)[M,K] . op(B)[K,N].
//
// Loops, outermost first: column blocks of NC_BLOCK, depth blocks of KC_BLOCK, row blocks of
// MC_BLOCK; for each, the operands' blocks are packed (B once per column and depth block) and
// the block's output tiles are computed, each tile walking its KC-deep slices in order.
// The blocks bound the packing memory (a 128k-vocabulary LM head must not be copied whole)
// while staying large enough that every shape of a small model is one block.
void gemm(float* C, const float* A, Layout a_layout, const float* B, Layout b_layout, int64_t M,
          int64_t N, int64_t K, float alpha, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) std::memset(C, 0, sizeof(float) * M * N);
    return;
  }
  const int64_t n_panels_total = (N + NR - 1) / NR;
  // A transposed (tn) is always packed; a row-major A only when the product is not thin
  // (see kInPlaceMaxNPanels).
  const bool pack_a = a_layout == Layout::Transposed || n_panels_total > kInPlaceMaxNPanels;
  const int threads = M * N * K < kParallelMinFlops ? 1 : num_threads();

  const int64_t mc_max = std::min(M, MC_BLOCK), nc_max = std::min(N, NC_BLOCK), kc_max = std::min(K, KC_BLOCK);
  float* a_pack =
      pack_a ? t_pack_a.reserve(static_cast<size_t>(((mc_max + MR - 1) / MR) * MR * kc_max)) : nullptr;
  float* b_pack = t_pack_b.reserve(static_cast<size_t>(((nc_max + NR - 1) / NR) * NR * kc_max));

  // Runs fn(begin, end) over [0, items). With several threads the items (panels to pack,
  // tiles to compute) are claimed one at a time from a shared counter: which thread does an
  // item does not change its result, and a thread the OS has not scheduled yet leaves its
  // share to the others instead of holding up the whole product. Generic, so that the
  // single-threaded path calls the body directly (inlined).
  auto run = [&](int64_t items, const auto& fn) {
    if (threads == 1 || items == 1) {
      fn(0, items);
      return;
    }
    std::atomic<int64_t> next{0};
    parallel_for(std::min<int64_t>(threads, items), [&](int64_t, int64_t, int) {
      for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < items;
           item = next.fetch_add(1, std::memory_order_relaxed))
        fn(item, item + 1);
    });
  };

  for (int64_t jc = 0; jc < N; jc += NC_BLOCK) {
    const int64_t nc = std::min(NC_BLOCK, N - jc);
    const int64_t n_panels = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC_BLOCK) {
      const int64_t kcb = std::min(KC_BLOCK, K - pc);
      const int64_t k_slices = (kcb + KC - 1) / KC;
      for (int64_t ic = 0; ic < M; ic += MC_BLOCK) {
        const int64_t mc = std::min(MC_BLOCK, M - ic);
        const int64_t m_panels = (mc + MR - 1) / MR;

        // Packed layout, slice by slice: in the slice starting at depth k0 (kc deep), panel i
        // begins at k0 * panels * width + i * width * kc. B panels are 64-byte aligned (NR
        // floats are 64 bytes) and read with aligned loads; A panels are only broadcast from.
        const int64_t a_items = pack_a ? m_panels : 0;
        const int64_t b_items = ic == 0 ? n_panels : 0;
        run(a_items + b_items, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            for (int64_t s = 0; s < k_slices; ++s) {
              const int64_t k0 = s * KC;
              const int64_t kc = std::min(KC, kcb - k0);
              if (item < a_items) {
                pack_a_panel(a_pack + k0 * m_panels * MR + item * MR * kc, A, a_layout, M, K,
                             ic + item * MR, pc + k0, kc);
              } else {
                const int64_t j = item - a_items;
                pack_b_panel(b_pack + k0 * n_panels * NR + j * NR * kc, B, b_layout, N, K, jc + j * NR,
                             pc + k0, kc);
              }
            }
          }
        });

        // Tile shape: start from 16 x 16 panels (96 x 256) and halve until there are enough
        // tiles to balance the threads; the result is the same for any tile shape.
        int64_t tile_m = 16, tile_n = 16;
        auto tile_count = [&] {
          return ((m_panels + tile_m - 1) / tile_m) * ((n_panels + tile_n - 1) / tile_n);
        };
        const int64_t wanted = threads == 1 ? 1 : int64_t(threads) * 6;
        while (tile_count() < wanted && (tile_n > 2 || tile_m > 2)) {
          if (tile_n >= tile_m && tile_n > 2) {
            tile_n /= 2;
          } else {
            tile_m /= 2;
          }
        }
        const int64_t m_tiles = (m_panels + tile_m - 1) / tile_m;
        const int64_t n_tiles = (n_panels + tile_n - 1) / tile_n;

        // Tiles are numbered column-block major so that tiles claimed close in time share the
        // same packed B columns.
        run(m_tiles * n_tiles, [&](int64_t begin, int64_t end) {
          for (int64_t tile = begin; tile < end; ++tile) {
            const int64_t tn = tile / m_tiles, tm = tile % m_tiles;
            const int64_t ip0 = tm * tile_m, ip1 = std::min(m_panels, ip0 + tile_m);
            const int64_t jp0 = tn * tile_n, jp1 = std::min(n_panels, jp0 + tile_n);
            for (int64_t s = 0; s < k_slices; ++s) {
              const int64_t k0 = s * KC;
              const int64_t kc = std::min(KC, kcb - k0);
              const bool overwrite = pc + k0 == 0 && !accumulate;
              for (int64_t jp = jp0; jp < jp1; ++jp) {
                const int64_t j0 = jc + jp * NR;
                const int64_t cols = std::min(NR, N - j0);
                const float* bp = b_pack + k0 * n_panels * NR + jp * NR * kc;
                for (int64_t ip = ip0; ip < ip1; ++ip) {
                  const int64_t i0 = ic + ip * MR;
                  const int64_t rows = std::min(MR, M - i0);
                  float* c = C + i0 * N + j0;
                  const float* a_rows[MR];
                  if (pack_a) {
                    const float* panel = a_pack + k0 * m_panels * MR + ip * MR * kc;
                    for (int64_t r = 0; r < MR; ++r) a_rows[r] = panel + r;
                    micro_kernel<MR>(kc, a_rows, bp, c, N, rows, cols, alpha, overwrite);
                  } else {
                    // Rows past M repeat the last real row: valid memory, results discarded.
                    for (int64_t r = 0; r < MR; ++r)
                      a_rows[r] = A + (i0 + std::min(r, rows - 1)) * K + pc + k0;
                    micro_kernel<1>(kc, a_rows, bp, c, N, rows, cols, alpha, overwrite);
                  }
                }
              }
            }
          }
        });
      }
    }
  }
}

}  // namespace

const char* matmul_kernel_name() {
#if defined(LORA_GEMM_AVX2)
  return "packed, avx2+fma 6x16 micro-kernel, KC=256";
#else
  return "packed, portable 6x16 micro-kernel, KC=256";
#endif
}

void matmul_nt(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, float alpha,
               bool accumulate) {
  gemm(C, A, Layout::RowMajor, B, Layout::Transposed, M, N, K, alpha, accumulate);
}

void matmul_nn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, float alpha,
               bool accumulate) {
  gemm(C, A, Layout::RowMajor, B, Layout::RowMajor, M, N, K, alpha, accumulate);
}

void matmul_tn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, float alpha,
               bool accumulate) {
  // Tall and thin (the LoRA gradient dB = dy^T u: M = out, N = r): packing the transposed A
  // would cost more than the product, so compute C^T = B^T A, which reads A as row-major
  // B panels (plain row copies), and transpose the small result into C.
  if (K > 0 && N <= NR * kInPlaceMaxNPanels && M > 4 * N) {
    float* ct = t_transposed.reserve(static_cast<size_t>(M * N));
    gemm(ct, B, Layout::Transposed, A, Layout::RowMajor, N, M, K, alpha, false);
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * N;
      if (accumulate) {
        for (int64_t j = 0; j < N; ++j) c[j] += ct[j * M + i];
      } else {
        for (int64_t j = 0; j < N; ++j) c[j] = ct[j * M + i];
      }
    }
    return;
  }
  gemm(C, A, Layout::Transposed, B, Layout::RowMajor, M, N, K, alpha, accumulate);
}

}  // namespace lora
