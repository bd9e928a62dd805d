// Cross-entropy over the vocabulary and the fused LM head, twins of ops/cross_entropy.cpp
// and the chunked head of model/forward.cpp.
//
// The row kernel reads a row of fp32 logits twice: pass 1 an online (max, sum of exp) per
// thread, combined across the block into the log-sum-exp; pass 2 writes
// scale * (softmax - onehot) as bf16. In the LM head the bf16 gradient overwrites the fp32
// logits of its own row (bf16 row stride = twice the fp32 one), so one (chunk x V) buffer
// serves both GEMMs.
//
// The kernels live in cross_entropy_kernels.cuh, which the emulated test also runs on the CPU.
#include "cuda/cross_entropy.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/context.hpp"
#include "cuda/cross_entropy_kernels.cuh"
#include "cuda/gemm.hpp"
#include "cuda/memory.hpp"

namespace lora::cuda {

struct LmHeadWorkspace {
  DeviceArray<float> logits;    // (chunk, ld) fp32 logits; then each row's bf16 gradient in place
  DeviceArray<float> row_loss;  // (chunk)
  DeviceArray<double> total;    // (1): the loss summed over every chunk of one call
};

namespace {

using namespace cross_entropy_kernels;

cudaStream_t resolve(cudaStream_t stream) { return stream ? stream : current().stream; }

void check_vocab(int64_t V, const char* who) {
  if (V <= 0 || V > INT_MAX)
    throw std::invalid_argument(std::string(who) + ": V = " + std::to_string(V) + " is outside [1, 2^31)");
}

void launch_rows(float* loss, bf16* dlogits, int64_t dl_ld, const float* logits, int64_t ld, const int32_t* targets,
                 int64_t n, int64_t V, float scale, cudaStream_t stream) {
  cross_entropy_rows_kernel<<<rows_grid(n), kRowThreads, 0, stream>>>(loss, dlogits, dl_ld, logits, ld, targets,
                                                                     int(V), scale);
  LORA_CUDA_LAUNCH_CHECK("cross_entropy_rows_kernel");
}

}  // namespace

LmHeadWorkspace* lm_head_workspace_create() { return new LmHeadWorkspace(); }
void lm_head_workspace_destroy(LmHeadWorkspace* ws) { delete ws; }

void cross_entropy_rows(float* loss, bf16* dlogits, const float* logits, const int32_t* targets, int64_t n, int64_t V,
                        float scale, cudaStream_t stream) {
  if (n < 0) throw std::invalid_argument("cross_entropy_rows: n = " + std::to_string(n) + " is negative");
  if (n > INT_MAX) throw std::invalid_argument("cross_entropy_rows: n = " + std::to_string(n) + " exceeds 2^31 - 1");
  check_vocab(V, "cross_entropy_rows");
  if (n == 0) return;
  if (!loss) throw std::invalid_argument("cross_entropy_rows: loss is null");
  if (!logits) throw std::invalid_argument("cross_entropy_rows: logits is null");
  if (!targets) throw std::invalid_argument("cross_entropy_rows: targets is null");
  launch_rows(loss, dlogits, V, logits, V, targets, n, V, scale, resolve(stream));
}

double lm_head_cross_entropy(const LmHeadArgs& args, LmHeadWorkspace* ws, cudaStream_t stream) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("lm_head_cross_entropy: " + what); };
  if (!ws) bad("ws is null");
  if (args.n < 0) bad("n = " + std::to_string(args.n) + " is negative");
  if (args.C <= 0) bad("C = " + std::to_string(args.C) + " is not positive");
  check_vocab(args.V, "lm_head_cross_entropy");
  if (args.chunk <= 0) bad("chunk = " + std::to_string(args.chunk) + " is not positive");
  if (args.n == 0) return 0.0;
  if (!args.x) bad("x is null");
  if (!args.targets) bad("targets is null");
  if (!args.W) bad("W is null");
  stream = resolve(stream);

  const int64_t n = args.n, C = args.C, V = args.V;
  const int64_t chunk = std::min(args.chunk, n);
  // Rows padded to 8 floats: every fp32 row and its in-place bf16 row start 32-byte aligned,
  // whatever V is, which the tensor-core GEMM loads want.
  const int64_t ld = (V + 7) / 8 * 8;
  ws->logits.resize(size_t(chunk * ld));
  ws->row_loss.resize(size_t(chunk));
  ws->total.resize(1);
  float* logits = ws->logits.data();
  bf16* dlogits = args.dx ? reinterpret_cast<bf16*>(logits) : nullptr;
  LORA_CUDA_CHECK(cudaMemsetAsync(ws->total.data(), 0, sizeof(double), stream));

  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t m = std::min(chunk, n - c0);
    GemmArgs head;  // logits (m, V) = x[c0 : c0 + m] W^T
    head.trans_b = true;
    head.M = m;
    head.N = V;
    head.K = C;
    head.A = args.x + c0 * C;
    head.lda = C;
    head.B = args.W;
    head.ldb = C;
    head.C = logits;
    head.ldc = ld;
    head.c_type = GemmType::F32;
    gemm(head, stream);

    launch_rows(ws->row_loss.data(), dlogits, 2 * ld, logits, ld, args.targets + c0, m, V, args.grad_scale, stream);
    sum_losses_kernel<<<1, kSumThreads, 0, stream>>>(ws->total.data(), ws->row_loss.data(), int(m));
    LORA_CUDA_LAUNCH_CHECK("sum_losses_kernel");

    if (!args.dx) continue;
    GemmArgs back;  // dx[c0 : c0 + m] (m, C) = dlogits (m, V) W
    back.M = m;
    back.N = C;
    back.K = V;
    back.A = dlogits;
    back.lda = 2 * ld;
    back.B = args.W;
    back.ldb = C;
    back.C = args.dx + c0 * C;
    back.ldc = C;
    back.c_type = GemmType::F32;
    gemm(back, stream);
  }

  double total = 0.0;
  LORA_CUDA_CHECK(cudaMemcpyAsync(&total, ws->total.data(), sizeof(double), cudaMemcpyDeviceToHost, stream));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return total;
}

}  // namespace lora::cuda
