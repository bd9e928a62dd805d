#pragma once
// Small elementwise kernels the layer code strings together: casts, residual adds, biases,
// embedding lookups and LoRA dropout. Dropout masks come from the same counter-based RNG
// as the CPU (common/rng.hpp): element i of the stream `key` is kept when
// rng_uniform(key, i) >= p, so the GPU drops exactly the elements the CPU drops.
#include <cstdint>

#include "cuda/common.hpp"

namespace lora::cuda {

void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream);
// y (fp32) = a (fp32) + b (bf16), n values; y may alias a.
void add_f32_bf16(float* y, const float* a, const bf16* b, int64_t n, cudaStream_t stream);
// y (T, N) bf16 += bias (N) fp32, per row.
void add_bias_bf16(bf16* y, const float* bias, int64_t T, int64_t N, cudaStream_t stream);
// y (T, N) fp32 += bias (N) fp32, per row.
void add_bias_f32(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t stream);

// out (T, C) fp32 = table[ids[t]] (+ pos_table[pos[t]] when pos_table != nullptr, GPT-2).
// table: (V, C) bf16; pos_table: (P, C) bf16.
void embedding_forward(float* out, const int32_t* ids, const bf16* table, const int32_t* pos, const bf16* pos_table,
                       int64_t T, int64_t C, cudaStream_t stream);

// h (n) bf16 = x * keep / (1 - p), keep_i = rng_uniform(key, i) >= p.
void dropout_forward(bf16* h, const bf16* x, int64_t n, float p, uint64_t key, cudaStream_t stream);
// dx (n) fp32 += dh (fp32) * keep / (1 - p), with the mask regenerated from `key`.
void dropout_backward_add(float* dx, const float* dh, int64_t n, float p, uint64_t key, cudaStream_t stream);

// Gathers rows: out[i, :] = in[index[i], :], C columns, n rows (bf16).
void gather_rows_bf16(bf16* out, const bf16* in, const int64_t* index, int64_t n, int64_t C, cudaStream_t stream);
// dx[index[i], :] += d[i, :] (fp32); indices are distinct.
void scatter_add_rows_f32(float* dx, const float* d, const int64_t* index, int64_t n, int64_t C, cudaStream_t stream);

}  // namespace lora::cuda
