// Flash-attention-2 style causal, document-masked, grouped-query attention on the tensor
// cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), twin of ops/attention.cpp.
//
// Forward: a block of 4 warps owns 64 queries of one head of one row; each warp owns 16 of
// them and keeps its scores, probabilities and output accumulator in registers. Key/value
// tiles stream through shared memory from the first key any of the block's queries may see
// (doc_start of its first query: documents are contiguous and doc_start is non-decreasing)
// up to its last query, each tile's V loading during its scores and the next K during its
// P V product. Softmax runs online in the log2 domain; lse is saved in natural log.
//
// Backward: delta = rowsum(dO * O) first; then a block owns one key tile of one query head,
// keeps that tile's dK and dV in registers while it walks the query tiles that can see it,
// and adds its share of dQ (and, under GQA, of the shared dK/dV) into fp32 workspace with
// atomics; the next query tile loads during the dQ product. A last pass converts the fp32
// sums to bf16.
//
// Head dims are padded in shared memory (with zeros) to the kernel instantiation's DP, one
// of 32, 64, 80, 96, 128, 160, 192, 256, so any multiple of 8 up to 256 runs.
//
// The kernels live in attention_kernels.cuh, which the emulated test also runs on the CPU.
#include "cuda/attention.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention_kernels.cuh"
#include "cuda/context.hpp"

namespace lora::cuda {

bool attention_supports_head_dim(int64_t D) { return D > 0 && D % 8 == 0 && D <= 256; }

namespace {

using namespace attention_kernels;

// ---- host side ----

// The instantiation (padded head dim) that serves D.
int padded_head_dim(int64_t D) {
  if (!attention_supports_head_dim(D))
    throw std::invalid_argument("attention: head dim D = " + std::to_string(D) +
                                " is not supported (need a multiple of 8 up to 256)");
  for (int p : {32, 64, 80, 96, 128, 160, 192, 256})
    if (D <= p) return p;
  return 256;
}

// Calls fn(std::integral_constant<int, DP>) for the instantiation that serves D.
template <class Fn>
void with_padded_head_dim(int64_t D, Fn&& fn) {
  switch (padded_head_dim(D)) {
    case 32: return fn(std::integral_constant<int, 32>{});
    case 64: return fn(std::integral_constant<int, 64>{});
    case 80: return fn(std::integral_constant<int, 80>{});
    case 96: return fn(std::integral_constant<int, 96>{});
    case 128: return fn(std::integral_constant<int, 128>{});
    case 160: return fn(std::integral_constant<int, 160>{});
    case 192: return fn(std::integral_constant<int, 192>{});
    default: return fn(std::integral_constant<int, 256>{});
  }
}

void check_args(int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  if (rows < 0) throw std::invalid_argument("attention: rows = " + std::to_string(rows) + " is negative");
  if (T < 0) throw std::invalid_argument("attention: T = " + std::to_string(T) + " is negative");
  if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0)
    throw std::invalid_argument("attention: Hq = " + std::to_string(Hq) +
                                " query heads are not a positive multiple of Hkv = " + std::to_string(Hkv) +
                                " key/value heads");
  padded_head_dim(D);
  // Grid limits: heads in x (2^31 - 1), rows in y and tiles in z (65535 each); 32-bit ints
  // hold token indices within a row.
  if (rows > 65535) throw std::invalid_argument("attention: rows = " + std::to_string(rows) + " exceeds 65535");
  if (T > (int64_t(1) << 22)) throw std::invalid_argument("attention: T = " + std::to_string(T) + " exceeds 4194304");
  if (Hq > 65535) throw std::invalid_argument("attention: Hq = " + std::to_string(Hq) + " exceeds 65535");
}

void check_ptr(const void* p, const char* name) {
  if (!p) throw std::invalid_argument(std::string("attention: ") + name + " is null");
  // Tiles are read in 16-byte vectors.
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::invalid_argument(std::string("attention: ") + name + " is not 16-byte aligned");
}

cudaStream_t resolve(cudaStream_t stream) { return stream ? stream : current().stream; }

// Raises the kernel's dynamic shared-memory limit once (needed above 48 KB), after checking
// the device allows that much per block.
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* name) {
  int dev = 0, optin = 0;
  LORA_CUDA_CHECK(cudaGetDevice(&dev));
  LORA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes > size_t(optin))
    throw std::runtime_error(std::string(name) + " needs " + std::to_string(bytes) +
                             " bytes of shared memory per block; this GPU allows " + std::to_string(optin));
  LORA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int DP>
void launch_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start,
                    int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream) {
  using Cfg = Tiles<DP>;
  static const bool ready = (allow_smem(attention_forward_kernel<DP>, Cfg::kFwdSmem, "attention_forward"), true);
  (void)ready;
  const dim3 grid = forward_grid<DP>(rows, T, Hq);
  const float scale_log2 = kLog2e / std::sqrt(float(D));
  attention_forward_kernel<DP><<<grid, kThreads, Cfg::kFwdSmem, stream>>>(
      out, lse, q, k, v, doc_start, int(T), int(Hq), int(Hkv), int(D), scale_log2);
  LORA_CUDA_LAUNCH_CHECK("attention_forward_kernel");
}

template <int DP>
void launch_backward(float* dq_acc, bf16* dk, bf16* dv, float* dk_acc, float* dv_acc, const bf16* dout,
                     const float* lse, const float* delta, const bf16* q, const bf16* k, const bf16* v,
                     const int32_t* doc_start, int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                     cudaStream_t stream) {
  using Cfg = Tiles<DP>;
  static const bool ready = (allow_smem(attention_backward_kernel<DP>, Cfg::kBwdSmem, "attention_backward"), true);
  (void)ready;
  const dim3 grid = backward_grid<DP>(rows, T, Hq);
  const float scale = 1.0f / std::sqrt(float(D));
  attention_backward_kernel<DP><<<grid, kThreads, Cfg::kBwdSmem, stream>>>(
      dq_acc, dk, dv, dk_acc, dv_acc, Hq != Hkv, dout, lse, delta, q, k, v, doc_start, int(T), int(Hq), int(Hkv),
      int(D), scale, scale * kLog2e);
  LORA_CUDA_LAUNCH_CHECK("attention_backward_kernel");
}

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

struct WorkspaceLayout {
  size_t dq = 0, delta = 0, dk = 0, dv = 0, total = 0;  // byte offsets; dk/dv only under GQA
};

WorkspaceLayout workspace_layout(int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  WorkspaceLayout w;
  const size_t q_elems = size_t(rows * T * Hq * D), kv_elems = size_t(rows * T * Hkv * D);
  w.dq = 0;
  w.delta = align_up(q_elems * 4, 256);
  w.total = w.delta + align_up(size_t(rows * Hq * T) * 4, 256);
  if (Hq != Hkv) {
    w.dk = w.total;
    w.dv = w.dk + align_up(kv_elems * 4, 256);
    w.total = w.dv + align_up(kv_elems * 4, 256);
  }
  return w;
}

void convert(bf16* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  f32_to_bf16_kernel<<<convert_grid(n), kConvertThreads, 0, stream>>>(dst, src, n);
  LORA_CUDA_LAUNCH_CHECK("f32_to_bf16_kernel");
}

}  // namespace

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* doc_start, int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                       cudaStream_t stream) {
  check_args(rows, T, Hq, Hkv, D);
  if (rows == 0 || T == 0) return;
  check_ptr(out, "out");
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  if (!lse) throw std::invalid_argument("attention: lse is null");
  if (!doc_start) throw std::invalid_argument("attention: doc_start is null");
  stream = resolve(stream);
  with_padded_head_dim(D, [&](auto dp) {
    launch_forward<decltype(dp)::value>(out, lse, q, k, v, doc_start, rows, T, Hq, Hkv, D, stream);
  });
}

size_t attention_backward_workspace(int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  check_args(rows, T, Hq, Hkv, D);
  return workspace_layout(rows, T, Hq, Hkv, D).total;
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, int64_t rows,
                        int64_t T, int64_t Hq, int64_t Hkv, int64_t D, void* workspace, cudaStream_t stream) {
  check_args(rows, T, Hq, Hkv, D);
  if (rows == 0 || T == 0) return;
  check_ptr(dq, "dq");
  check_ptr(dk, "dk");
  check_ptr(dv, "dv");
  check_ptr(dout, "dout");
  check_ptr(out, "out");
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  if (!lse) throw std::invalid_argument("attention: lse is null");
  if (!doc_start) throw std::invalid_argument("attention: doc_start is null");
  if (!workspace) throw std::invalid_argument("attention: workspace is null");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    throw std::invalid_argument("attention: workspace is not 16-byte aligned");
  stream = resolve(stream);

  const WorkspaceLayout w = workspace_layout(rows, T, Hq, Hkv, D);
  unsigned char* base = static_cast<unsigned char*>(workspace);
  float* dq_acc = reinterpret_cast<float*>(base + w.dq);
  float* delta = reinterpret_cast<float*>(base + w.delta);
  float* dk_acc = Hq != Hkv ? reinterpret_cast<float*>(base + w.dk) : nullptr;
  float* dv_acc = Hq != Hkv ? reinterpret_cast<float*>(base + w.dv) : nullptr;
  const int64_t q_elems = rows * T * Hq * D, kv_elems = rows * T * Hkv * D;

  LORA_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, size_t(q_elems) * 4, stream));
  if (dk_acc) {
    LORA_CUDA_CHECK(cudaMemsetAsync(dk_acc, 0, size_t(kv_elems) * 4, stream));
    LORA_CUDA_CHECK(cudaMemsetAsync(dv_acc, 0, size_t(kv_elems) * 4, stream));
  }
  const int64_t items = rows * T * Hq;
  attention_delta_kernel<<<delta_grid(items), kDeltaThreads, 0, stream>>>(delta, dout, out, items, int(T), int(Hq),
                                                                          int(D));
  LORA_CUDA_LAUNCH_CHECK("attention_delta_kernel");

  with_padded_head_dim(D, [&](auto dp) {
    launch_backward<decltype(dp)::value>(dq_acc, dk, dv, dk_acc, dv_acc, dout, lse, delta, q, k, v, doc_start, rows,
                                         T, Hq, Hkv, D, stream);
  });

  convert(dq, dq_acc, q_elems, stream);
  if (dk_acc) {
    convert(dk, dk_acc, kv_elems, stream);
    convert(dv, dv_acc, kv_elems, stream);
  }
}

}  // namespace lora::cuda
