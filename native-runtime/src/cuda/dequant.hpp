#pragma once
// The frozen base weights on the device, and their dequantization to bf16 right before use
// (the twin of quant.cpp's dequantize_rows). The device holds the same bytes as the host's
// QuantizedMatrix: NF4/FP4 nibbles (element 2i in the high nibble), int8 codes, per-block
// fp32 absmax or its double-quantized form; type None holds bf16 values.
#include <cstdint>

#include "cuda/common.hpp"
#include "cuda/memory.hpp"
#include "quant/quant.hpp"

namespace lora::cuda {

struct DeviceQuantMatrix {
  QuantType type = QuantType::None;
  int64_t rows = 0, cols = 0;
  int block_size = 64;
  bool double_quant = false;
  DeviceArray<uint8_t> codes;        // NF4/FP4: (rows*cols+1)/2 bytes; Int8: rows*cols; None: empty
  DeviceArray<bf16> values;          // None: rows*cols bf16; else empty
  DeviceArray<float> absmax;         // per block (not double_quant)
  DeviceArray<uint8_t> absmax_q;     // per block (double_quant)
  DeviceArray<float> absmax_scale;   // per 256 blocks (double_quant)
  float absmax_mean = 0;

  uint64_t bytes() const;            // device bytes held
};

// Copies a host matrix to the device; type None is converted from its stored dtype (F32,
// F16 or BF16) to bf16 (round to nearest even).
DeviceQuantMatrix upload_quantized(const QuantizedMatrix& m);

// out: rows*cols bf16, row-major. For None this is a device-to-device copy; callers that
// only read the weight use weight_view() instead, which avoids it.
void dequantize_to_bf16(bf16* out, const DeviceQuantMatrix& m, cudaStream_t stream);

// The bf16 weight ready for a GEMM: m.values for None, else `scratch` after dequantizing
// into it (scratch must hold rows*cols).
const bf16* weight_view(const DeviceQuantMatrix& m, bf16* scratch, cudaStream_t stream);

}  // namespace lora::cuda
