// Dequantization of the frozen base on the device, the twin of quant.cpp's dequantize_rows:
// the same fp32 products (code value times block absmax, int8 code times absmax / 127, the
// double-quant absmax as fmaf(q - 128, scale, mean)), then one round-to-nearest-even to bf16.
// The products use __fmul_rn / __fdiv_rn / __fmaf_rn so no compiler flag can change them.
#include "cuda/dequant.hpp"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/threadpool.hpp"
#include "formats/safetensors.hpp"

namespace lora::cuda {

namespace {

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

CodeBook code_book(QuantType t) {
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
#pragma unroll
    for (int k = 0; k < 16; ++k)
      if (threadIdx.x == k) v = book.v[k];
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

ChunkBlocks chunk_blocks(int block_size) {
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

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

int64_t element_count(const DeviceQuantMatrix& m) { return m.rows * m.cols; }

// Host conversion of an unquantized checkpoint tensor to bf16 bits (round to nearest even).
std::vector<uint16_t> to_bf16_bits(const QuantizedMatrix& m, int64_t n) {
  std::vector<uint16_t> bits(static_cast<size_t>(n));
  const uint8_t* raw = m.raw.data();
  const DType dt = m.stored_dtype;
  if (dt == DType::BF16) {
    if (n) std::memcpy(bits.data(), raw, static_cast<size_t>(n) * 2);
    return bits;
  }
  parallel_for(n, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      float f;
      if (dt == DType::F32) {
        std::memcpy(&f, raw + i * 4, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw + i * 2, 2);
        f = f16_to_f32(h);  // exact, so F16 -> bf16 is rounded once
      }
      bits[static_cast<size_t>(i)] = f32_to_bf16(f);
    }
  });
  return bits;
}

template <class T>
void upload(DeviceArray<T>& dst, const std::vector<T>& src) {
  dst.resize(src.size());
  if (!src.empty()) copy_to_device(dst.data(), src.data(), src.size() * sizeof(T));
}

}  // namespace

uint64_t DeviceQuantMatrix::bytes() const {
  return codes.bytes() + values.bytes() + absmax.bytes() + absmax_q.bytes() + absmax_scale.bytes();
}

DeviceQuantMatrix upload_quantized(const QuantizedMatrix& m) {
  if (m.rows < 0 || m.cols < 0) throw std::invalid_argument("upload_quantized: m has a negative shape");
  const int64_t n = m.rows * m.cols;
  DeviceQuantMatrix d;
  d.type = m.type;
  d.rows = m.rows;
  d.cols = m.cols;
  d.block_size = m.block_size;
  d.double_quant = m.double_quant;
  d.absmax_mean = m.absmax_mean;

  if (m.type == QuantType::None) {
    if (m.stored_dtype != DType::F32 && m.stored_dtype != DType::F16 && m.stored_dtype != DType::BF16)
      throw std::invalid_argument(std::string("upload_quantized: m.stored_dtype ") + dtype_name(m.stored_dtype) +
                                  " is not F32, F16 or BF16");
    if (m.raw.size() != static_cast<size_t>(n) * dtype_size(m.stored_dtype))
      throw std::invalid_argument("upload_quantized: m.raw holds " + std::to_string(m.raw.size()) + " bytes, not " +
                                  std::to_string(n) + " " + dtype_name(m.stored_dtype) + " values");
    const std::vector<uint16_t> bits = to_bf16_bits(m, n);
    d.values.resize(static_cast<size_t>(n));
    if (n) copy_to_device(d.values.data(), bits.data(), bits.size() * 2);
    return d;
  }

  if (m.block_size <= 0) throw std::invalid_argument("upload_quantized: m.block_size must be positive");
  const bool four_bit = m.type == QuantType::NF4 || m.type == QuantType::FP4;
  const size_t code_bytes = static_cast<size_t>(four_bit ? (n + 1) / 2 : n);
  if (m.raw.size() != code_bytes)
    throw std::invalid_argument("upload_quantized: m.raw holds " + std::to_string(m.raw.size()) + " bytes, not the " +
                                std::to_string(code_bytes) + " codes of a " + std::to_string(m.rows) + " x " +
                                std::to_string(m.cols) + " " + quant_name(m.type) + " matrix");
  const size_t blocks = static_cast<size_t>((n + m.block_size - 1) / m.block_size);
  if (m.double_quant) {
    const size_t groups = (blocks + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
    if (m.absmax_q.size() != blocks || m.absmax_scale.size() != groups)
      throw std::invalid_argument("upload_quantized: m.absmax_q / m.absmax_scale hold " +
                                  std::to_string(m.absmax_q.size()) + " / " + std::to_string(m.absmax_scale.size()) +
                                  " values, not " + std::to_string(blocks) + " / " + std::to_string(groups));
  } else if (m.absmax.size() != blocks) {
    throw std::invalid_argument("upload_quantized: m.absmax holds " + std::to_string(m.absmax.size()) +
                                " values, not one per block (" + std::to_string(blocks) + ")");
  }
  upload(d.codes, m.raw);
  if (m.double_quant) {
    upload(d.absmax_q, m.absmax_q);
    upload(d.absmax_scale, m.absmax_scale);
  } else {
    upload(d.absmax, m.absmax);
  }
  return d;
}

void dequantize_to_bf16(bf16* out, const DeviceQuantMatrix& m, cudaStream_t stream) {
  const int64_t n = element_count(m);
  if (n == 0) return;
  if (!out) throw std::invalid_argument("dequantize_to_bf16: out is null");
  if (m.type == QuantType::None) {
    if (m.values.size() != static_cast<size_t>(n))
      throw std::invalid_argument("dequantize_to_bf16: m.values does not hold rows * cols values");
    LORA_CUDA_CHECK(cudaMemcpyAsync(out, m.values.data(), static_cast<size_t>(n) * sizeof(bf16),
                                    cudaMemcpyDeviceToDevice, stream));
    return;
  }
  if (m.block_size <= 0) throw std::invalid_argument("dequantize_to_bf16: m.block_size must be positive");
  const bool four_bit = m.type == QuantType::NF4 || m.type == QuantType::FP4;
  if (m.codes.size() != static_cast<size_t>(four_bit ? (n + 1) / 2 : n))
    throw std::invalid_argument("dequantize_to_bf16: m.codes does not match the matrix shape");
  const Scales s{m.absmax.data(), m.absmax_q.data(), m.absmax_scale.data(), m.absmax_mean, m.double_quant};
  if (m.double_quant ? (m.absmax_q.empty() || m.absmax_scale.empty()) : m.absmax.empty())
    throw std::invalid_argument("dequantize_to_bf16: m has no block scales");
  const CodeBook book = code_book(four_bit ? m.type : QuantType::NF4);  // unused for int8

  int64_t done = 0;
  const bool vector_ok = m.block_size % kChunk == 0 && aligned(out, 16) &&
                         aligned(m.codes.data(), four_bit ? 4 : 8) && n / kChunk <= int64_t(0xFFFFFFFFu);
  if (vector_ok) {
    const int64_t chunks = n / kChunk;
    if (chunks > 0) {
      const int64_t grid = ceil_div(chunks, kChunksPerWarp * (kThreads / kWarp));
      if (four_bit) {
        dequant_4bit_bf16<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(out, m.codes.data(), s, book, chunks,
                                                                                chunk_blocks(m.block_size));
        LORA_CUDA_LAUNCH_CHECK("dequant_4bit_bf16");
      } else {
        dequant_int8_bf16<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(out, m.codes.data(), s, chunks,
                                                                                 chunk_blocks(m.block_size));
        LORA_CUDA_LAUNCH_CHECK("dequant_int8_bf16");
      }
    }
    done = chunks * kChunk;
  }
  if (done < n) {
    const int64_t grid = ceil_div(n - done, kThreads);
    dequant_bf16_scalar<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(out, m.codes.data(), s, book,
                                                                              four_bit, done, n, m.block_size);
    LORA_CUDA_LAUNCH_CHECK("dequant_bf16_scalar");
  }
}

const bf16* weight_view(const DeviceQuantMatrix& m, bf16* scratch, cudaStream_t stream) {
  if (m.type == QuantType::None) return m.values.data();
  if (!scratch && m.rows * m.cols > 0)
    throw std::invalid_argument("weight_view: scratch is null for a quantized matrix");
  dequantize_to_bf16(scratch, m, stream);
  return scratch;
}

}  // namespace lora::cuda
