// The small elementwise kernels of the layer code: casts, residual adds, biases, embedding
// lookups, LoRA dropout and row gathers/scatters. Flat maps take 4 elements per thread
// (float4 / 8-byte bf16 accesses) when every pointer allows it and fall back to single
// elements otherwise; row kernels take a block per row.
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/rng.hpp"
#include "cuda/elementwise.hpp"
#include "cuda/elementwise_kernels.cuh"

namespace lora::cuda {

namespace {

using namespace elementwise_kernels;

template <class Op>
void launch_map4(const char* name, const Op& op, int64_t n, bool vec, cudaStream_t stream) {
  if (n < 0) throw std::invalid_argument(std::string(name) + ": n must not be negative");
  if (n == 0) return;
  const unsigned grid = map4_grid(n);
  if (vec)
    map4_kernel<Op, true><<<grid, kThreads, 0, stream>>>(op, n);
  else
    map4_kernel<Op, false><<<grid, kThreads, 0, stream>>>(op, n);
  LORA_CUDA_LAUNCH_CHECK(name);
}

void check_rows(const char* name, int64_t rows, int64_t C) {
  if (rows < 0 || C < 0) throw std::invalid_argument(std::string(name) + ": negative shape");
  if (rows > 0x7fffffff) throw std::invalid_argument(std::string(name) + ": too many rows for one launch");
}

void check_ptr(const char* name, const char* what, const void* p) {
  if (!p) throw std::invalid_argument(std::string(name) + ": " + what + " is null");
}

// 1 / (1 - p) as ops/linear.cpp's keep_scale computes it.
float keep_scale(const char* name, float p) {
  if (!(p >= 0.0f && p < 1.0f)) throw std::invalid_argument(std::string(name) + ": p must be in [0, 1)");
  return p > 0.f ? 1.0f / (1.0f - p) : 1.0f;
}

}  // namespace

void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n > 0) {
    check_ptr("cast_f32_to_bf16", "out", out);
    check_ptr("cast_f32_to_bf16", "in", in);
  }
  launch_map4("cast_f32_to_bf16", Cast<bf16, float>{out, in}, n, aligned(out, 8) && aligned(in, 16), stream);
}

void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  if (n > 0) {
    check_ptr("cast_bf16_to_f32", "out", out);
    check_ptr("cast_bf16_to_f32", "in", in);
  }
  launch_map4("cast_bf16_to_f32", Cast<float, bf16>{out, in}, n, aligned(out, 16) && aligned(in, 8), stream);
}

void add_f32_bf16(float* y, const float* a, const bf16* b, int64_t n, cudaStream_t stream) {
  if (n > 0) {
    check_ptr("add_f32_bf16", "y", y);
    check_ptr("add_f32_bf16", "a", a);
    check_ptr("add_f32_bf16", "b", b);
  }
  launch_map4("add_f32_bf16", AddF32Bf16{y, a, b}, n, aligned(y, 16) && aligned(a, 16) && aligned(b, 8), stream);
}

void add_bias_bf16(bf16* y, const float* bias, int64_t T, int64_t N, cudaStream_t stream) {
  check_rows("add_bias_bf16", T, N);
  if (T == 0 || N == 0) return;
  check_ptr("add_bias_bf16", "y", y);
  check_ptr("add_bias_bf16", "bias", bias);
  launch_map4("add_bias_bf16", AddBias<bf16>{y, bias, N}, T * N, N % 4 == 0 && aligned(y, 8) && aligned(bias, 16),
              stream);
}

void add_bias_f32(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t stream) {
  check_rows("add_bias_f32", T, N);
  if (T == 0 || N == 0) return;
  check_ptr("add_bias_f32", "y", y);
  check_ptr("add_bias_f32", "bias", bias);
  launch_map4("add_bias_f32", AddBias<float>{y, bias, N}, T * N, N % 4 == 0 && aligned(y, 16) && aligned(bias, 16),
              stream);
}

void embedding_forward(float* out, const int32_t* ids, const bf16* table, const int32_t* pos, const bf16* pos_table,
                       int64_t T, int64_t C, cudaStream_t stream) {
  check_rows("embedding_forward", T, C);
  if (T == 0 || C == 0) return;
  check_ptr("embedding_forward", "out", out);
  check_ptr("embedding_forward", "ids", ids);
  check_ptr("embedding_forward", "table", table);
  if (pos_table) check_ptr("embedding_forward", "pos", pos);
  const bool vec = C % 4 == 0 && aligned(out, 16) && aligned(table, 8) && (!pos_table || aligned(pos_table, 8));
  if (vec)
    embedding_kernel<true><<<static_cast<unsigned>(T), kRowThreads, 0, stream>>>(out, ids, table, pos, pos_table, C);
  else
    embedding_kernel<false><<<static_cast<unsigned>(T), kRowThreads, 0, stream>>>(out, ids, table, pos, pos_table, C);
  LORA_CUDA_LAUNCH_CHECK("embedding_forward");
}

void dropout_forward(bf16* h, const bf16* x, int64_t n, float p, uint64_t key, cudaStream_t stream) {
  const float scale = keep_scale("dropout_forward", p);
  if (n > 0) {
    check_ptr("dropout_forward", "h", h);
    check_ptr("dropout_forward", "x", x);
  }
  launch_map4("dropout_forward", DropoutForward{h, x, p, scale, key}, n, aligned(h, 8) && aligned(x, 8), stream);
}

void dropout_backward_add(float* dx, const float* dh, int64_t n, float p, uint64_t key, cudaStream_t stream) {
  const float scale = keep_scale("dropout_backward_add", p);
  if (n > 0) {
    check_ptr("dropout_backward_add", "dx", dx);
    check_ptr("dropout_backward_add", "dh", dh);
  }
  launch_map4("dropout_backward_add", DropoutBackwardAdd{dx, dh, p, scale, key}, n,
              aligned(dx, 16) && aligned(dh, 16), stream);
}

void gather_rows_bf16(bf16* out, const bf16* in, const int64_t* index, int64_t n, int64_t C, cudaStream_t stream) {
  check_rows("gather_rows_bf16", n, C);
  if (n == 0 || C == 0) return;
  check_ptr("gather_rows_bf16", "out", out);
  check_ptr("gather_rows_bf16", "in", in);
  check_ptr("gather_rows_bf16", "index", index);
  const bool vec = C % 8 == 0 && aligned(out, 16) && aligned(in, 16);
  if (vec)
    gather_rows_kernel<true><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(out, in, index, C);
  else
    gather_rows_kernel<false><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(out, in, index, C);
  LORA_CUDA_LAUNCH_CHECK("gather_rows_bf16");
}

void scatter_add_rows_f32(float* dx, const float* d, const int64_t* index, int64_t n, int64_t C, cudaStream_t stream) {
  check_rows("scatter_add_rows_f32", n, C);
  if (n == 0 || C == 0) return;
  check_ptr("scatter_add_rows_f32", "dx", dx);
  check_ptr("scatter_add_rows_f32", "d", d);
  check_ptr("scatter_add_rows_f32", "index", index);
  const bool vec = C % 4 == 0 && aligned(dx, 16) && aligned(d, 16);
  if (vec)
    scatter_add_rows_kernel<true><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(dx, d, index, C);
  else
    scatter_add_rows_kernel<false><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(dx, d, index, C);
  LORA_CUDA_LAUNCH_CHECK("scatter_add_rows_f32");
}

}  // namespace lora::cuda
