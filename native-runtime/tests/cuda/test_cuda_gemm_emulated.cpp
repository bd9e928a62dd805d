// The built-in GEMM kernel's own source (src/cuda/gemm_wmma_kernel.cuh) run on the CPU, so
// its indexing, bounds, stage switching and epilogue are checked on every machine, GPU or
// not. Each CUDA thread of a block is a std::thread; __syncthreads and __syncwarp are
// barriers; shared memory is the kernel's static array (blocks run one after another);
// WMMA is a host implementation that also checks the alignment rules the hardware imposes
// (32-byte fragment pointers, ldm a multiple of 16 bytes). The cp.async copies become plain
// 16-byte copies, so this checks what is copied where, not the asynchronous timing, which
// the device tests (test_cuda_gemm.cpp) cover. In a LORA_SANITIZE build, AddressSanitizer
// also catches any read or write outside A, B, C or the shared array.
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/gemm.hpp"
#include "gemm_check.hpp"
#include "test.hpp"

// ---- the CUDA execution model on the host ----------------------------------------------------

namespace gemm_emu {

// Threads that arrive early yield until the last one flips the generation: with hundreds
// of emulated threads on a few cores this is several times faster than a condition
// variable, whose notify_all wakes every waiter to fight for one mutex.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
    } else {
      while (generation_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<uint64_t> generation_{0};
};

struct Block {
  explicit Block(int threads) : all(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
  }
  Barrier all;
  std::vector<std::unique_ptr<Barrier>> warps;
};

thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local Block* current_block = nullptr;
std::mutex fault_mu;
std::vector<std::string> faults;  // rule violations seen by the host WMMA

inline void syncthreads() { current_block->all.wait(); }
inline void syncwarp() { current_block->warps[thread_idx.x / 32]->wait(); }
inline int lane() { return static_cast<int>(thread_idx.x % 32); }

inline void fault(const std::string& what) {
  std::lock_guard<std::mutex> lock(fault_mu);
  if (faults.size() < 10) faults.push_back(what);
}

inline void check_fragment_pointer(const void* p, unsigned ldm, unsigned elem_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32) fault(std::string(what) + ": pointer not 32-byte aligned");
  if ((ldm * elem_bytes) % 16) fault(std::string(what) + ": ldm not a multiple of 16 bytes");
}

}  // namespace gemm_emu

// nvcuda::wmma for 16x16x16 bf16 -> fp32, with each fragment held whole. Lane 0 of a warp
// does the arithmetic and the stores (the other lanes' copies are never read), which keeps
// the emulation 32x cheaper; every lane still checks the pointer rules.
namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16 * 16];
};

template <class Use, class Layout>
inline void load_bf16(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
  gemm_emu::check_fragment_pointer(p, ldm, 2, "load_matrix_sync");
  if (gemm_emu::lane() != 0) return;
  const bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = __bfloat162float(row ? p[r * ldm + c] : p[r + c * ldm]);
}

template <class Layout>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  load_bf16(f, p, ldm);
}
template <class Layout>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  load_bf16(f, p, ldm);
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (float& x : f.x) x = v;
}

template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  if (gemm_emu::lane() != 0) return;
  float out[16 * 16];
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      float s = c.x[r * 16 + col];
      for (int k = 0; k < 16; ++k) s += a.x[r * 16 + k] * b.x[k * 16 + col];
      out[r * 16 + col] = s;
    }
  for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  gemm_emu::check_fragment_pointer(p, ldm, 4, "store_matrix_sync");
  if (gemm_emu::lane() != 0) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      if (layout == mem_row_major)
        p[r * ldm + c] = f.x[r * 16 + c];
      else
        p[r + c * ldm] = f.x[r * 16 + c];
    }
}

}  // namespace wmma
}  // namespace nvcuda

// The CUDA keywords of the kernel source, for the host.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx ::gemm_emu::thread_idx
#define blockIdx ::gemm_emu::block_idx
#define __syncthreads() ::gemm_emu::syncthreads()
#define __syncwarp() ::gemm_emu::syncwarp()

#include "cuda/gemm_wmma_kernel.cuh"

#undef __syncwarp
#undef __syncthreads
#undef blockIdx
#undef threadIdx

namespace {

using lora::cuda::GemmArgs;
using lora::cuda::bf16;
using lora::cuda::wmma_gemm::Band;
using lora_test::GemmCase;
using lora_test::GemmProblem;

// What gemm_wmma.cu's launch() does, with every block run on host threads.
template <int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB, typename CT>
void run_emulated(const GemmArgs& a) {
  constexpr int kThreads = WARPS_M * WARPS_N * 32;
  for (const Band& band : lora::cuda::wmma_gemm::plan_bands<BM, BN, TA>(a)) {
    // One host thread per CUDA thread for the whole grid: the blocks run one after another
    // (they share the kernel's static shared array), separated by a barrier.
    gemm_emu::Block block(kThreads);
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (unsigned t = 0; t < static_cast<unsigned>(kThreads); ++t) {
      threads.emplace_back([&, t] {
        gemm_emu::thread_idx = make_uint3(t, 0, 0);
        gemm_emu::current_block = &block;
        for (unsigned by = 0; by < band.grid_y; ++by) {
          for (unsigned bx = 0; bx < band.grid_x; ++bx) {
            gemm_emu::block_idx = make_uint3(bx, by, 0);
            lora::cuda::wmma_gemm::gemm_wmma_kernel<BM, BN, WARPS_M, WARPS_N, TA, TB, CT>(
                band.A, a.lda, a.B, a.ldb, static_cast<CT*>(band.C), a.ldc, band.rows, a.N, a.K, a.alpha, a.beta,
                band.a_vec, band.b_vec);
            block.all.wait();
          }
        }
      });
    }
    for (auto& th : threads) th.join();
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N>
void dispatch_emulated(const GemmArgs& a) {
  const bool f32 = a.c_type == lora::cuda::GemmType::F32;
  if (!a.trans_a && !a.trans_b) {
    f32 ? run_emulated<BM, BN, WARPS_M, WARPS_N, false, false, float>(a)
        : run_emulated<BM, BN, WARPS_M, WARPS_N, false, false, bf16>(a);
  } else if (!a.trans_a && a.trans_b) {
    f32 ? run_emulated<BM, BN, WARPS_M, WARPS_N, false, true, float>(a)
        : run_emulated<BM, BN, WARPS_M, WARPS_N, false, true, bf16>(a);
  } else if (a.trans_a && !a.trans_b) {
    f32 ? run_emulated<BM, BN, WARPS_M, WARPS_N, true, false, float>(a)
        : run_emulated<BM, BN, WARPS_M, WARPS_N, true, false, bf16>(a);
  } else {
    f32 ? run_emulated<BM, BN, WARPS_M, WARPS_N, true, true, float>(a)
        : run_emulated<BM, BN, WARPS_M, WARPS_N, true, true, bf16>(a);
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N>
void check_emulated(const GemmCase& c, const char* config) {
  GemmProblem p = lora_test::make_gemm_problem(c);
  void* c_base = p.f32() ? static_cast<void*>(p.c_f32.data()) : static_cast<void*>(p.c_bf16.data());
  const GemmArgs args = lora_test::gemm_args_for(p, reinterpret_cast<const bf16*>(p.a_bits.data()),
                                                 reinterpret_cast<const bf16*>(p.b_bits.data()), c_base);
  {
    std::lock_guard<std::mutex> lock(gemm_emu::fault_mu);
    gemm_emu::faults.clear();
  }
  dispatch_emulated<BM, BN, WARPS_M, WARPS_N>(args);
  for (const auto& f : gemm_emu::faults)
    lora_test::record_failure(__FILE__, __LINE__, std::string(config) + " " + lora_test::describe(c) + ": " + f);
  lora_test::verify_gemm(p, std::string("emulated ") + config);
}

// Shapes that cover: a single element; partial tiles in every dimension; exact tile
// multiples (16-byte copies everywhere); several K slices with a partial last one; and more
// than one block in both directions for both tile shapes.
std::vector<GemmCase> emulated_cases() {
  return lora_test::gemm_cases({{1, 1, 1}, {7, 33, 40}, {33, 7, 129}, {130, 70, 33}, {64, 64, 64}, {128, 128, 32},
                                {129, 136, 65}, {200, 7, 16}});
}

}  // namespace

TEST(cuda_gemm_kernel_emulated_128x128) {
  for (const auto& c : emulated_cases()) check_emulated<128, 128, 2, 4>(c, "128x128");
}

TEST(cuda_gemm_kernel_emulated_64x64) {
  for (const auto& c : emulated_cases()) check_emulated<64, 64, 2, 2>(c, "64x64");
}

// K == 0 writes beta * C and reads nothing of A or B.
TEST(cuda_gemm_kernel_emulated_k_zero) {
  for (float beta : {0.f, 0.5f}) {
    GemmCase c;
    c.M = 33;
    c.N = 7;
    c.pad_c = 3;
    c.beta = beta;
    check_emulated<64, 64, 2, 2>(c, "64x64");
    c.c_type = lora::cuda::GemmType::F32;
    check_emulated<128, 128, 2, 4>(c, "128x128");
  }
}

// Past 65535 row tiles the launch is split into bands, each with its own A and C.
TEST(cuda_gemm_kernel_bands) {
  GemmArgs a;
  a.M = 128LL * 65535 * 2 + 5;
  a.N = 300;
  a.K = 64;
  a.lda = 64;
  a.ldb = 304;
  a.ldc = 301;
  a.A = reinterpret_cast<const bf16*>(uintptr_t(1) << 20);
  a.B = reinterpret_cast<const bf16*>(uintptr_t(1) << 21);
  a.C = reinterpret_cast<void*>(uintptr_t(1) << 22);
  a.c_type = lora::cuda::GemmType::F32;
  const auto bands = lora::cuda::wmma_gemm::plan_bands<128, 128, false>(a);
  CHECK_EQ(bands.size(), size_t(3));
  if (bands.size() == 3) {
    const int64_t band_rows = 128LL * 65535;
    for (int i = 0; i < 3; ++i) {
      CHECK_EQ(bands[i].rows, i < 2 ? band_rows : int64_t(5));
      CHECK_EQ(bands[i].grid_x, 3u);
      CHECK_EQ(bands[i].grid_y, i < 2 ? 65535u : 1u);
      CHECK(bands[i].A == a.A + i * band_rows * a.lda);
      CHECK(bands[i].C == static_cast<char*>(a.C) + i * band_rows * a.ldc * 4);
      CHECK(bands[i].a_vec);
      CHECK(bands[i].b_vec);
    }
  }
  // A^T advances by columns; a bf16 C by 2 bytes an element; an odd stride turns the
  // 16-byte copies off.
  a.trans_a = true;
  a.lda = a.M + 1;
  a.c_type = lora::cuda::GemmType::BF16;
  const auto t = lora::cuda::wmma_gemm::plan_bands<64, 64, true>(a);
  CHECK_EQ(t.size(), size_t(5));
  if (t.size() == 5) {
    CHECK(t[1].A == a.A + 64LL * 65535);
    CHECK(t[1].C == static_cast<char*>(a.C) + 64LL * 65535 * a.ldc * 2);
    CHECK(!t[0].a_vec);
    CHECK(t[0].b_vec);
  }
}
