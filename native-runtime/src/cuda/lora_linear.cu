// A frozen linear with a LoRA adapter on the device, twin of ops/linear.cpp, as a sequence
// of GEMMs (cuda/gemm.hpp) and elementwise kernels (cuda/elementwise.hpp). Every product
// has bf16 inputs and fp32 accumulation; the input gradient and the LoRA gradients
// accumulate into fp32 buffers (beta = 1), so contributions from several modules sum
// without a bf16 rounding step in between.
#include "cuda/lora_linear.hpp"

#include <stdexcept>
#include <string>

#include "cuda/elementwise.hpp"
#include "cuda/gemm.hpp"

namespace lora::cuda {

namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("lora_linear: ") + what);
}

// C[M, N] (+)= alpha * op(A) op(B) with row-major storage; the ld of each operand is its
// stored row length, which for these dense operands is always its column count.
void run_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
              int64_t lda, const bf16* B, int64_t ldb, float beta, void* C, int64_t ldc, GemmType c_type,
              cudaStream_t stream) {
  GemmArgs g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.M = M;
  g.N = N;
  g.K = K;
  g.alpha = alpha;
  g.beta = beta;
  g.A = A;
  g.lda = lda;
  g.B = B;
  g.ldb = ldb;
  g.C = C;
  g.ldc = ldc;
  g.c_type = c_type;
  gemm(g, stream);
}

bool lora_on(const DeviceLora& lora) { return lora.A != nullptr; }
bool dropout_on(const DeviceLora& lora) { return lora_on(lora) && lora.dropout > 0.f; }

void check_lora(const DeviceLora& lora) {
  if (!lora_on(lora)) return;
  require(lora.B != nullptr, "lora.B is null while lora.A is set");
  require(lora.r > 0, "lora.r must be positive");
  require(lora.dropout >= 0.f && lora.dropout < 1.f, "lora.dropout must be in [0, 1)");
}

}  // namespace

void lora_linear_forward(const LinearForward& f, const DeviceLora& lora, cudaStream_t stream) {
  require(f.T >= 0 && f.in > 0 && f.out > 0, "T must be >= 0 and in, out positive");
  require(f.x != nullptr && f.W != nullptr, "x and W are required");
  require((f.y_bf16 != nullptr) != (f.y_f32 != nullptr), "exactly one of y_bf16 or y_f32 must be given");
  check_lora(lora);
  if (lora_on(lora)) {
    require(f.u != nullptr, "u (T, r) is required when the adapter is present");
    require(!dropout_on(lora) || f.h != nullptr, "h (T, in) is required when dropout > 0");
  }
  if (f.T == 0) return;

  const bool f32 = f.y_f32 != nullptr;
  void* y = f32 ? static_cast<void*>(f.y_f32) : static_cast<void*>(f.y_bf16);
  const GemmType yt = f32 ? GemmType::F32 : GemmType::BF16;

  // y (T, out) (+)= x (T, in) . W (out, in)^T; the fp32 output accumulates into the residual.
  run_gemm(false, true, f.T, f.out, f.in, 1.f, f.x, f.in, f.W, f.in, f32 ? 1.f : 0.f, y, f.out, yt, stream);
  if (f.bias) {
    if (f32)
      add_bias_f32(f.y_f32, f.bias, f.T, f.out, stream);
    else
      add_bias_bf16(f.y_bf16, f.bias, f.T, f.out, stream);
  }
  if (!lora_on(lora)) return;

  const bf16* h = f.x;
  if (dropout_on(lora)) {
    dropout_forward(f.h, f.x, f.T * f.in, lora.dropout, lora.dropout_key, stream);
    h = f.h;
  }
  // u (T, r) = h . A^T, kept in bf16: it is the input of the next GEMM and of dB's.
  run_gemm(false, true, f.T, lora.r, f.in, 1.f, h, f.in, lora.A, f.in, 0.f, f.u, lora.r, GemmType::BF16, stream);
  // y += scale * u . B^T
  run_gemm(false, true, f.T, f.out, lora.r, lora.scale, f.u, lora.r, lora.B, lora.r, 1.f, y, f.out, yt, stream);
}

void lora_linear_backward(const LinearBackward& b, const DeviceLora& lora, cudaStream_t stream) {
  require(b.T >= 0 && b.in > 0 && b.out > 0, "T must be >= 0 and in, out positive");
  require(b.dy != nullptr, "dy is required");
  require(b.dx == nullptr || b.W != nullptr, "W is required when dx is requested");
  check_lora(lora);
  const bool drop = dropout_on(lora);
  if (lora_on(lora)) {
    require(b.u != nullptr, "u (T, r) saved by the forward is required");
    require(b.du != nullptr, "du scratch (T, r) is required");
    require(drop ? b.h != nullptr : b.x != nullptr, drop ? "h (saved drop(x)) is required when dropout > 0"
                                                         : "x is required when the adapter is present");
    require(!drop || b.dx == nullptr || b.dh != nullptr, "dh scratch (T, in) is required when dropout > 0");
  }
  if (b.T == 0) return;

  // dx (T, in) += dy (T, out) . W (out, in)
  if (b.dx)
    run_gemm(false, false, b.T, b.in, b.out, 1.f, b.dy, b.out, b.W, b.in, 1.f, b.dx, b.in, GemmType::F32, stream);
  if (!lora_on(lora)) return;
  const int64_t r = lora.r;
  const bf16* h = drop ? b.h : b.x;

  // dB (out, r) += scale * dy^T (out, T) . u (T, r)
  if (lora.dB)
    run_gemm(true, false, b.out, r, b.T, lora.scale, b.dy, b.out, b.u, r, 1.f, lora.dB, r, GemmType::F32, stream);
  // du (T, r) = scale * dy (T, out) . B (out, r): the gradient w.r.t. u, which carries the
  // scale so that dA and dx below need none (as ops/linear.cpp).
  run_gemm(false, false, b.T, r, b.out, lora.scale, b.dy, b.out, lora.B, r, 0.f, b.du, r, GemmType::BF16, stream);
  // dA (r, in) += du^T (r, T) . h (T, in)
  if (lora.dA)
    run_gemm(true, false, r, b.in, b.T, 1.f, b.du, r, h, b.in, 1.f, lora.dA, b.in, GemmType::F32, stream);
  if (!b.dx) return;
  if (!drop) {
    // dx += du (T, r) . A (r, in)
    run_gemm(false, false, b.T, b.in, r, 1.f, b.du, r, lora.A, b.in, 1.f, b.dx, b.in, GemmType::F32, stream);
    return;
  }
  // Through dropout: dh = du . A, then dx += keep * dh / (1 - p) with the forward's mask.
  run_gemm(false, false, b.T, b.in, r, 1.f, b.du, r, lora.A, b.in, 0.f, b.dh, b.in, GemmType::F32, stream);
  dropout_backward_add(b.dx, b.dh, b.T * b.in, lora.dropout, lora.dropout_key, stream);
}

}  // namespace lora::cuda
