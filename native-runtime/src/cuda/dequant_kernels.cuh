#pragma once
// The dequantization kernels (dequant.cu launches them), in a header of their own so that a
// host build can run the very same source: tests/cuda/test_cuda_ops_emulated.cpp executes
// them on the CPU with tests/cuda/emu_shim.hpp. Host helpers the launcher and the test share
// (code books, chunk-to-block maps, the launch plan) are here too.
#include <cstdint>
#include <cstring>

#include "cuda/common.hpp"
#include "cuda/kernel_support.cuh"
#include "quant/quant.hpp"

namespace lora::cuda::dequant_kernels {
inline namespace LORA_KERNEL_ABI {
constexpr int kDoubleQuantBlock = 256;  // absmax values per double-quant scale (quant.cpp)
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// The vector kernels work in chunks of 8 elements: 4 packed bytes (4-bit) or 8 int8 codes
// in, one 16-byte bf16 store out. Each thread takes two chunks, 32 apart, so that lane l of
// a warp takes chunks 64 w + l and 64 w + 32 + l: every load and store instruction of a warp
// covers one contiguous range (128 or 256 bytes of codes, 512 bytes of bf16), the pattern
// the memory system serves at full width.
constexpr int kChunk = 8;
constexpr int kChunksPerWarp = 2 * kWarp;

// The code books, copied from the host tables once per kernel into shared memory: 16
// floats sit in 16 distinct banks, so any per-thread index pattern is conflict-free (a
// constant-memory read with divergent indices would serialise).
struct CodeBook {
  float v[16];
};

inline CodeBook code_book(QuantType t) {
  CodeBook c{};
  const float* src = t == QuantType::NF4 ? nf4_code() : fp4_code();
  std::memcpy(c.v, src, sizeof c.v);
  return c;
}

// The fields a kernel needs to decode one block's absmax.
struct Scales {
  const float* absmax;        // per block, when !double_quant
  const uint8_t* absmax_q;    // per block, when double_quant
  const float* absmax_scale;  // per 256 blocks, when double_quant
  float absmax_mean;
  bool double_quant;
};

__device__ __forceinline__ float block_absmax(const Scales& s, int64_t block) {
  if (!s.double_quant) return __ldg(s.absmax + block);
  const int q = static_cast<int>(__ldg(s.absmax_q + block)) - 128;
  return __fmaf_rn(static_cast<float>(q), __ldg(s.absmax_scale + block / kDoubleQuantBlock), s.absmax_mean);
}

// Fills the shared table from the kernel parameter. Constant indices only: indexing the
// parameter with threadIdx.x would copy it to local memory in every thread.
__device__ __forceinline__ void load_table(float* table, const CodeBook& book) {
  if (threadIdx.x < 16) {
    float v = 0.0f;
LORA_UNROLL
    for (int k = 0; k < 16; ++k)
      if (threadIdx.x == static_cast<unsigned>(k)) v = book.v[k];
    table[threadIdx.x] = v;
  }
  __syncthreads();
}

// Chunk index -> quantization block, without a 64-bit division per chunk (tens of
// instructions, as many as the rest of the chunk's work): a shift when the block holds a
// power-of-two number of chunks (block 64: 8 chunks), else a 32-bit division (the launcher
// keeps chunk indices below 2^32).
struct ChunkBlocks {
  uint32_t chunks_per_block;
  int shift;  // log2(chunks_per_block), or -1 when it is no power of two
  __device__ __forceinline__ int64_t of(int64_t chunk) const {
    const uint32_t c = static_cast<uint32_t>(chunk);
    return shift >= 0 ? static_cast<int64_t>(c >> shift) : static_cast<int64_t>(c / chunks_per_block);
  }
};

inline ChunkBlocks chunk_blocks(int block_size) {
  ChunkBlocks b{static_cast<uint32_t>(block_size / kChunk), -1};
  for (int k = 0; k < 31; ++k)
    if ((uint32_t(1) << k) == b.chunks_per_block) b.shift = k;
  return b;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo_elem, float hi_elem) {
  // .x (the lower address, the even element) is the low half of the 32-bit word.
  __nv_bfloat162 p = __floats2bfloat162_rn(lo_elem, hi_elem);
  uint32_t u;
  memcpy(&u, &p, 4);
  return u;
}

// Two nibbles of byte `byte_index` of the 32-bit word w: the high nibble is the even element.
__device__ __forceinline__ uint32_t pack_4bit_pair(uint32_t w, int byte_index, const float* table, float scale) {
  const uint32_t b = (w >> (8 * byte_index)) & 0xFFu;
  const float even = __fmul_rn(table[b >> 4], scale);
  const float odd = __fmul_rn(table[b & 15u], scale);
  return pack_bf16x2(even, odd);
}

// 4-bit: chunk c covers elements [8 c, 8 c + 8), inside one quantization block because
// block_size is a multiple of 8. Needs codes 4-byte aligned and out 16-byte aligned (checked
// by the launcher).
__global__ void __launch_bounds__(kThreads) dequant_4bit_bf16(bf16* __restrict__ out, const uint8_t* __restrict__ codes,
                                                             Scales s, CodeBook book, int64_t chunks,
                                                             ChunkBlocks blocks) {
  __shared__ float table[16];
  load_table(table, book);
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t c0 = warp * kChunksPerWarp + threadIdx.x % kWarp, c1 = c0 + kWarp;
  if (c0 >= chunks) return;
  const bool second = c1 < chunks;
  // Both chunks' loads are issued before either is used, to keep two requests in flight.
  const uint32_t w0 = __ldg(reinterpret_cast<const uint32_t*>(codes) + c0);
  const uint32_t w1 = second ? __ldg(reinterpret_cast<const uint32_t*>(codes) + c1) : 0u;
  const float scale0 = block_absmax(s, blocks.of(c0));
  const float scale1 = second ? block_absmax(s, blocks.of(c1)) : 0.0f;
  uint4* dst = reinterpret_cast<uint4*>(out);
  dst[c0] = make_uint4(pack_4bit_pair(w0, 0, table, scale0), pack_4bit_pair(w0, 1, table, scale0),
                       pack_4bit_pair(w0, 2, table, scale0), pack_4bit_pair(w0, 3, table, scale0));
  if (second)
    dst[c1] = make_uint4(pack_4bit_pair(w1, 0, table, scale1), pack_4bit_pair(w1, 1, table, scale1),
                         pack_4bit_pair(w1, 2, table, scale1), pack_4bit_pair(w1, 3, table, scale1));
}

__device__ __forceinline__ float int8_value(uint32_t w, int byte_index, float step) {
  const int8_t q = static_cast<int8_t>((w >> (8 * byte_index)) & 0xFFu);
  return __fmul_rn(static_cast<float>(q), step);
}

__device__ __forceinline__ uint32_t pack_int8_pair(uint32_t w, int pair, float step) {
  return pack_bf16x2(int8_value(w, 2 * pair, step), int8_value(w, 2 * pair + 1, step));
}

__device__ __forceinline__ uint4 int8_chunk(uint2 q, float step) {
  return make_uint4(pack_int8_pair(q.x, 0, step), pack_int8_pair(q.x, 1, step), pack_int8_pair(q.y, 0, step),
                    pack_int8_pair(q.y, 1, step));
}

// int8: chunk c is 8 codes (one 8-byte load) -> one 16-byte store; codes 8-byte aligned.
__global__ void __launch_bounds__(kThreads) dequant_int8_bf16(bf16* __restrict__ out, const uint8_t* __restrict__ codes,
                                                             Scales s, int64_t chunks, ChunkBlocks blocks) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t c0 = warp * kChunksPerWarp + threadIdx.x % kWarp, c1 = c0 + kWarp;
  if (c0 >= chunks) return;
  const bool second = c1 < chunks;
  const uint2 q0 = __ldg(reinterpret_cast<const uint2*>(codes) + c0);
  const uint2 q1 = second ? __ldg(reinterpret_cast<const uint2*>(codes) + c1) : make_uint2(0u, 0u);
  const float step0 = __fdiv_rn(block_absmax(s, blocks.of(c0)), 127.0f);
  const float step1 = second ? __fdiv_rn(block_absmax(s, blocks.of(c1)), 127.0f) : 0.0f;
  uint4* dst = reinterpret_cast<uint4*>(out);
  dst[c0] = int8_chunk(q0, step0);
  if (second) dst[c1] = int8_chunk(q1, step1);
}

// One element per thread over [begin, n): the tail after the vector kernels, and every
// element when the block size is not a multiple of 8 or a pointer is misaligned.
__global__ void __launch_bounds__(kThreads)
    dequant_bf16_scalar(bf16* __restrict__ out, const uint8_t* __restrict__ codes, Scales s, CodeBook book,
                        bool four_bit, int64_t begin, int64_t n, int block_size) {
  __shared__ float table[16];
  load_table(table, book);
  const int64_t i = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float scale = block_absmax(s, i / block_size);
  float v;
  if (four_bit) {
    const uint32_t b = __ldg(codes + (i >> 1));
    v = __fmul_rn(table[(i & 1) ? (b & 15u) : (b >> 4)], scale);
  } else {
    v = __fmul_rn(static_cast<float>(static_cast<int8_t>(__ldg(codes + i))), __fdiv_rn(scale, 127.0f));
  }
  out[i] = __float2bfloat16_rn(v);
}
// What dequantize_to_bf16 launches for n elements: the vector kernel over n / 8 chunks when
// the block size is a multiple of 8 and the pointers allow 16-byte stores and 4- or 8-byte
// code loads, then the per-element kernel over the rest (everything otherwise).
struct DequantPlan {
  int64_t chunks = 0;        // vector chunks; 0: no vector launch
  unsigned vector_grid = 0;  // blocks of kThreads for the vector kernel
  int64_t tail_begin = 0;    // first element of the per-element kernel
  unsigned tail_grid = 0;    // blocks of kThreads for it; 0: none
};

inline DequantPlan plan_dequant(int64_t n, int block_size, bool four_bit, const void* out, const void* codes) {
  DequantPlan p;
  const bool vector_ok = block_size % kChunk == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(codes) % (four_bit ? 4 : 8) == 0 &&
                         n / kChunk <= int64_t(0xFFFFFFFFu);
  if (vector_ok) {
    p.chunks = n / kChunk;
    p.vector_grid = static_cast<unsigned>(ceil_div(p.chunks, kChunksPerWarp * (kThreads / kWarp)));
    p.tail_begin = p.chunks * kChunk;
  }
  if (p.tail_begin < n) p.tail_grid = static_cast<unsigned>(ceil_div(n - p.tail_begin, kThreads));
  return p;
}

}  // namespace LORA_KERNEL_ABI
}  // namespace lora::cuda::dequant_kernels
