#include "quant/quant.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "common/threadpool.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace lora {

namespace {

// NF4: the 16 quantiles of N(0, 1) normalised to [-1, 1] from the QLoRA paper (appendix E),
// as bitsandbytes stores them (csrc/kernels.cu, nf4_data). Index 7 is exactly 0 so that
// zero weights and padding stay exact.
constexpr float kNF4[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// FP4 as bitsandbytes (dDequantizeFP4Tree): bit 3 is the sign, bits 2..1 the exponent,
// bit 0 the mantissa, exponent bias 3 with a subnormal at exponent 0. Magnitudes of codes
// 0..7 are {0, 0.0625, 8, 12, 4, 6, 2, 3}, divided by 12 (the largest) so the code book
// spans [-1, 1]. Codes 8..15 are the negatives; code 8 is -0.
constexpr float kFP4[16] = {
    0.0f,         5.208333333e-03f,  0.66666667f,  1.0f,  0.33333333f,  0.5f,  0.16666667f,  0.25f,
    -0.0f,        -5.208333333e-03f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f,
};

// Nearest-code search: a code book sorted by value with the midpoints between neighbours.
// A value picks the code whose interval contains it; a value exactly on a midpoint takes
// the lower code (ties are deterministic and independent of the thread count).
struct CodeSearch {
  std::array<float, 16> mid{};
  std::array<uint8_t, 16> index{};
  int count = 0;

  explicit CodeSearch(const float* code) {
    std::array<int, 16> order{};
    for (int i = 0; i < 16; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return code[a] < code[b]; });
    float last = 0;
    for (int k = 0; k < 16; ++k) {
      const int i = order[k];
      if (count > 0 && code[i] == last) continue;  // FP4's -0 duplicates +0; keep the lower index
      if (count > 0) mid[count - 1] = 0.5f * (last + code[i]);
      index[count++] = static_cast<uint8_t>(i);
      last = code[i];
    }
  }

};

const CodeSearch& nf4_search() {
  static const CodeSearch s(kNF4);
  return s;
}
const CodeSearch& fp4_search() {
  static const CodeSearch s(kFP4);
  return s;
}

// Code pair tables: the two dequantized code values of each packed byte (high nibble first).
struct PairTable {
  float v[256][2];
  explicit PairTable(const float* code) {
    for (int b = 0; b < 256; ++b) {
      v[b][0] = code[b >> 4];
      v[b][1] = code[b & 15];
    }
  }
};

const PairTable& nf4_pairs() {
  static const PairTable t(kNF4);
  return t;
}
const PairTable& fp4_pairs() {
  static const PairTable t(kFP4);
  return t;
}

constexpr int kDoubleQuantBlock = 256;
// Above this many elements, quantization and dequantization are split over the pool.
constexpr int64_t kParallelElements = 1 << 15;

#if defined(__AVX2__)
// Dequantizes 16 elements per step from an even element index: 8 packed bytes are widened,
// split into high/low nibbles, interleaved back into element order, and looked up in the
// 16-entry code book with two 8-entry permutes. Returns the first element not written;
// `o` advances past the written outputs. Same products as the scalar path, so results are
// bit-identical.
int64_t dequant_4bit_avx2(const uint8_t* raw, const float* code, float scale, int64_t i, int64_t end,
                          float*& o) {
  const __m256 table_lo = _mm256_loadu_ps(code);
  const __m256 table_hi = _mm256_loadu_ps(code + 8);
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256i low_mask = _mm256_set1_epi32(15);
  for (; i + 16 <= end; i += 16) {
    uint64_t packed;
    std::memcpy(&packed, raw + (i >> 1), 8);
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(packed)));
    const __m256i hi = _mm256_srli_epi32(bytes, 4);
    const __m256i lo = _mm256_and_si256(bytes, low_mask);
    // Per 128-bit lane: unpacklo -> [h0 l0 h1 l1 | h4 l4 h5 l5], unpackhi -> [h2 l2 h3 l3 | h6 l6 h7 l7].
    const __m256i a = _mm256_unpacklo_epi32(hi, lo);
    const __m256i b = _mm256_unpackhi_epi32(hi, lo);
    const __m256i first = _mm256_permute2x128_si256(a, b, 0x20);   // elements 0..7
    const __m256i second = _mm256_permute2x128_si256(a, b, 0x31);  // elements 8..15
    for (const __m256i idx : {first, second}) {
      const __m256 from_lo = _mm256_permutevar8x32_ps(table_lo, idx);
      const __m256 from_hi = _mm256_permutevar8x32_ps(table_hi, idx);
      // Bit 3 of the index selects the upper half of the table; move it to the sign bit.
      const __m256 use_hi = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
      _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_blendv_ps(from_lo, from_hi, use_hi), vscale));
      o += 8;
    }
  }
  return i;
}
#endif

// Every block's absmax, dequantized when double quantization is on. An explicit fused
// multiply-add: left to the compiler, mean + q * scale is contracted to an FMA or not
// depending on -march (so a native and a portable build disagreed in the last bit), and
// the CUDA twin (cuda/dequant.cu) computes the same fmaf to match bit for bit.
float block_absmax(const QuantizedMatrix& m, int64_t block) {
  if (!m.double_quant) return m.absmax[static_cast<size_t>(block)];
  const int q = static_cast<int>(m.absmax_q[static_cast<size_t>(block)]) - 128;
  return std::fma(static_cast<float>(q), m.absmax_scale[static_cast<size_t>(block / kDoubleQuantBlock)],
                  m.absmax_mean);
}

void run_blocks(int64_t blocks, int64_t elements, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (elements >= kParallelElements && blocks > 1)
    parallel_for(blocks, fn);
  else
    fn(0, blocks, 0);
}

// Second-level quantization of the absmax values (QLoRA's double quantization): subtract
// their mean, then code each group of 256 with 8 bits, linearly and symmetrically around the
// mean: absmax ~= mean + (q - 128) * step, step = max |absmax - mean| / 127 over the group.
// The error per value is at most step / 2 (plus fp32 rounding). This is a linear 8-bit code,
// not bitsandbytes' dynamic-exponent map; memory is the same (1 byte + 4 bytes / 256).
void double_quantize(QuantizedMatrix& m) {
  const int64_t n = static_cast<int64_t>(m.absmax.size());
  double sum = 0;
  for (float a : m.absmax) sum += a;
  m.absmax_mean = n ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  const int64_t groups = (n + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
  m.absmax_q.assign(static_cast<size_t>(n), 128);
  m.absmax_scale.assign(static_cast<size_t>(groups), 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * kDoubleQuantBlock, end = std::min(n, begin + kDoubleQuantBlock);
    float maxdev = 0;
    for (int64_t i = begin; i < end; ++i) maxdev = std::max(maxdev, std::fabs(m.absmax[i] - m.absmax_mean));
    if (maxdev == 0) continue;
    const float step = maxdev / 127.0f;
    m.absmax_scale[static_cast<size_t>(g)] = step;
    for (int64_t i = begin; i < end; ++i) {
      long q = std::lround((m.absmax[static_cast<size_t>(i)] - m.absmax_mean) / step);
      q = std::max(-127L, std::min(127L, q));
      m.absmax_q[static_cast<size_t>(i)] = static_cast<uint8_t>(q + 128);
    }
  }
  m.absmax.clear();
  m.absmax.shrink_to_fit();
}

}  // namespace

const char* quant_name(QuantType t) {
  switch (t) {
    case QuantType::None: return "none";
    case QuantType::NF4: return "nf4";
    case QuantType::FP4: return "fp4";
    case QuantType::Int8: return "int8";
  }
  return "?";
}

bool quant_from_name(const std::string& s, QuantType& out) {
  static const std::pair<const char*, QuantType> names[] = {
      {"none", QuantType::None}, {"nf4", QuantType::NF4}, {"fp4", QuantType::FP4}, {"int8", QuantType::Int8}};
  for (const auto& n : names) {
    if (s == n.first) {
      out = n.second;
      return true;
    }
  }
  return false;
}

const float* nf4_code() { return kNF4; }
const float* fp4_code() { return kFP4; }

uint64_t QuantizedMatrix::bytes() const {
  return raw.size() + absmax.size() * sizeof(float) + absmax_q.size() + absmax_scale.size() * sizeof(float) +
         (double_quant ? sizeof(float) : 0);
}

QuantizedMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, QuantType type, int block_size,
                                bool double_quant, DType keep_dtype) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("quantize_matrix: negative shape");
  QuantizedMatrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  const int64_t n = rows * cols;

  if (type == QuantType::None) {
    if (keep_dtype != DType::F32 && keep_dtype != DType::F16 && keep_dtype != DType::BF16)
      throw std::invalid_argument(std::string("quantize_matrix: cannot keep weights as ") + dtype_name(keep_dtype));
    m.stored_dtype = keep_dtype;
    m.block_size = 0;
    m.raw.resize(static_cast<size_t>(n) * dtype_size(keep_dtype));
    if (keep_dtype == DType::F32) {
      if (n) std::memcpy(m.raw.data(), w, static_cast<size_t>(n) * 4);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = keep_dtype == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
        std::memcpy(&m.raw[static_cast<size_t>(i) * 2], &h, 2);
      }
    }
    return m;
  }

  if (block_size <= 0) throw std::invalid_argument("quantize_matrix: block_size must be positive");
  // Whole bytes per block keep two blocks from sharing a packed byte, so blocks can be
  // quantized in parallel without racing on a byte.
  if ((type == QuantType::NF4 || type == QuantType::FP4) && block_size % 2 != 0)
    throw std::invalid_argument("quantize_matrix: 4-bit block_size must be even");
  m.block_size = block_size;
  m.double_quant = double_quant;
  const int64_t blocks = (n + block_size - 1) / block_size;
  m.absmax.assign(static_cast<size_t>(blocks), 0.0f);
  const bool four_bit = type != QuantType::Int8;
  m.raw.assign(static_cast<size_t>(four_bit ? (n + 1) / 2 : n), 0);
  const CodeSearch* search = type == QuantType::NF4 ? &nf4_search() : type == QuantType::FP4 ? &fp4_search() : nullptr;

  run_blocks(blocks, n, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * block_size, end = std::min(n, begin + block_size);
      float amax = 0;
      for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(w[i]));
      m.absmax[static_cast<size_t>(b)] = amax;
      if (four_bit) {
        // Element-inner loops over a small chunk so the compiler vectorizes the divide and
        // the midpoint comparisons. The packed byte index is exact because begin is even.
        constexpr int kChunk = 64;
        float v[kChunk];
        uint8_t k[kChunk];
        for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
          const int len = static_cast<int>(std::min<int64_t>(kChunk, end - c0));
          for (int j = 0; j < len; ++j) {
            v[j] = amax > 0 ? w[c0 + j] / amax : 0.0f;
            k[j] = 0;
          }
          for (int mi = 0; mi < search->count - 1; ++mi) {
            const float mid = search->mid[mi];
            for (int j = 0; j < len; ++j) k[j] = static_cast<uint8_t>(k[j] + (v[j] > mid ? 1 : 0));
          }
          uint8_t* dst = m.raw.data() + (c0 >> 1);
          for (int j = 0; j < len; j += 2) {
            const uint8_t hi = search->index[k[j]];
            const uint8_t lo = j + 1 < len ? search->index[k[j + 1]] : 0;
            dst[j >> 1] = static_cast<uint8_t>((hi << 4) | lo);
          }
        }
      } else {
        // nearbyint (ties to even under the default rounding mode) compiles to one
        // vector instruction, unlike lround's library call.
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        int8_t* dst = reinterpret_cast<int8_t*>(m.raw.data());
        for (int64_t i = begin; i < end; ++i) {
          const float q = std::nearbyint(w[i] * inv);
          dst[i] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, q)));
        }
      }
    }
  });
  if (double_quant) double_quantize(m);
  return m;
}

QuantizedMatrix wrap_unquantized(const uint8_t* bytes, DType dtype, int64_t rows, int64_t cols) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    throw std::invalid_argument(std::string("wrap_unquantized: unsupported dtype ") + dtype_name(dtype));
  if (rows < 0 || cols < 0) throw std::invalid_argument("wrap_unquantized: negative shape");
  QuantizedMatrix m;
  m.type = QuantType::None;
  m.rows = rows;
  m.cols = cols;
  m.block_size = 0;
  m.stored_dtype = dtype;
  const size_t nbytes = static_cast<size_t>(rows * cols) * dtype_size(dtype);
  m.raw.assign(bytes, bytes + nbytes);
  return m;
}

void dequantize_rows(const QuantizedMatrix& m, int64_t row_begin, int64_t row_end, float* out) {
  if (row_begin < 0 || row_end > m.rows || row_begin > row_end)
    throw std::out_of_range("dequantize_rows: rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) +
                            ") outside a matrix of " + std::to_string(m.rows) + " rows");
  const int64_t e0 = row_begin * m.cols, e1 = row_end * m.cols;
  const int64_t n = e1 - e0;
  if (n == 0) return;

  if (m.type == QuantType::None) {
    const uint8_t* raw = m.raw.data();
    const DType dt = m.stored_dtype;
    auto convert = [&](int64_t c0, int64_t c1, int) {
      const int64_t i0 = e0 + c0, i1 = e0 + c1;
      if (dt == DType::F32) {
        std::memcpy(out + c0, raw + i0 * 4, static_cast<size_t>(i1 - i0) * 4);
        return;
      }
      for (int64_t i = i0; i < i1; ++i) {
        uint16_t h;
        std::memcpy(&h, raw + i * 2, 2);
        out[i - e0] = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
    };
    if (n >= kParallelElements)
      parallel_for(n, convert);
    else
      convert(0, n, 0);
    return;
  }

  // Work block by block so each block's scale is computed once.
  const int64_t bs = m.block_size;
  const int64_t first_block = e0 / bs, last_block = (e1 - 1) / bs;
  const uint8_t* raw = m.raw.data();
  const float (*pairs)[2] = m.type == QuantType::NF4 ? nf4_pairs().v : m.type == QuantType::FP4 ? fp4_pairs().v : nullptr;
  const float* code = m.type == QuantType::NF4 ? kNF4 : kFP4;

  run_blocks(last_block - first_block + 1, n, [&](int64_t k0, int64_t k1, int) {
    for (int64_t b = first_block + k0; b < first_block + k1; ++b) {
      const int64_t i0 = std::max(e0, b * bs), i1 = std::min(e1, (b + 1) * bs);
      const float scale = block_absmax(m, b);
      float* o = out + (i0 - e0);
      if (m.type == QuantType::Int8) {
        const float step = scale / 127.0f;
        for (int64_t i = i0; i < i1; ++i) *o++ = static_cast<float>(static_cast<int8_t>(raw[i])) * step;
        continue;
      }
      int64_t i = i0;
      if (i & 1) {  // starts on a low nibble
        *o++ = code[raw[i >> 1] & 15] * scale;
        ++i;
      }
#if defined(__AVX2__)
      if (i + 16 <= i1) i = dequant_4bit_avx2(raw, code, scale, i, i1, o);
#endif
      for (; i + 1 < i1; i += 2) {
        const float* p = pairs[raw[i >> 1]];
        o[0] = p[0] * scale;
        o[1] = p[1] * scale;
        o += 2;
      }
      if (i < i1) *o++ = code[raw[i >> 1] >> 4] * scale;  // ends on a high nibble
    }
  });
}

}  // namespace lora
