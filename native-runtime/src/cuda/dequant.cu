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
#include "cuda/dequant_kernels.cuh"
#include "formats/safetensors.hpp"

namespace lora::cuda {

namespace {

using namespace dequant_kernels;


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

  const DequantPlan plan = plan_dequant(n, m.block_size, four_bit, out, m.codes.data());
  if (plan.chunks > 0) {
    if (four_bit) {
      dequant_4bit_bf16<<<plan.vector_grid, kThreads, 0, stream>>>(out, m.codes.data(), s, book, plan.chunks,
                                                                   chunk_blocks(m.block_size));
      LORA_CUDA_LAUNCH_CHECK("dequant_4bit_bf16");
    } else {
      dequant_int8_bf16<<<plan.vector_grid, kThreads, 0, stream>>>(out, m.codes.data(), s, plan.chunks,
                                                                   chunk_blocks(m.block_size));
      LORA_CUDA_LAUNCH_CHECK("dequant_int8_bf16");
    }
  }
  if (plan.tail_grid > 0) {
    dequant_bf16_scalar<<<plan.tail_grid, kThreads, 0, stream>>>(out, m.codes.data(), s, book, four_bit,
                                                                 plan.tail_begin, n, m.block_size);
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
