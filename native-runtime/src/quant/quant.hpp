#pragma once
// Blockwise quantization of the frozen base model's linear weights, done once at load.
//   nf4 / fp4: 4-bit codes, two per byte, element 2i in the HIGH nibble, element 2i+1 in
//              the low nibble (as bitsandbytes packs them); one absmax per block of
//              `block_size` elements (row-major over the whole [rows, cols] matrix).
//              NF4 uses the 16 values of the QLoRA paper exactly (nf4_code()).
//   int8:      symmetric blockwise absmax, q = round(127 * w / absmax) (ties to even).
//   double quantization: the fp32 absmax values are themselves quantized to 8 bits in
//              blocks of 256 after subtracting their mean (as QLoRA), with one fp32
//              scale per 256 absmax values. The 8-bit code is linear and symmetric:
//              absmax[b] = absmax_mean + (absmax_q[b] - 128) * absmax_scale[b / 256],
//              absmax_scale = max |absmax - mean| / 127 over the 256 values.
//   Quantization picks the nearest code value of w / absmax; a value exactly half-way
//   between two codes takes the smaller one. FP4 codes: bit 3 sign, bits 2..0 select the
//   magnitudes {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12 (bitsandbytes' layout).
//   none:      the weights are kept in the checkpoint's dtype (F32, F16 or BF16).
#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors.hpp"

namespace lora {

enum class QuantType { None, NF4, FP4, Int8 };
const char* quant_name(QuantType t);                          // "none", "nf4", "fp4", "int8"
bool quant_from_name(const std::string& s, QuantType& out);   // false when unknown

// The 16 NF4 code values, index 0..15, ascending from -1.0 to 1.0 (index 7 is 0.0).
const float* nf4_code();
// The 16 FP4 code values as bitsandbytes' fp4 (e2m1, sign in bit 3), index 0..15.
const float* fp4_code();

struct QuantizedMatrix {
  QuantType type = QuantType::None;
  int64_t rows = 0, cols = 0;     // logical fp shape [rows, cols] (nn.Linear: [out, in])
  int block_size = 64;
  bool double_quant = false;
  DType stored_dtype = DType::F32; // for None: dtype of `raw`
  std::vector<uint8_t> raw;        // None: checkpoint bytes; NF4/FP4: packed nibbles; Int8: int8 codes
  std::vector<float> absmax;       // one per block (empty when double_quant)
  // Double quantization of absmax:
  std::vector<uint8_t> absmax_q;   // one uint8 code per block
  std::vector<float> absmax_scale; // one per 256 absmax values
  float absmax_mean = 0;           // subtracted before quantizing the absmax values

  uint64_t bytes() const;          // memory held by this matrix (codes + scales)
};

// Quantizes w[rows*cols] (fp32). block_size must divide into whole blocks over the
// flattened matrix except possibly the last one (handled). For type None, stores w as
// `keep_dtype` (F32/F16/BF16).
QuantizedMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, QuantType type,
                                int block_size, bool double_quant, DType keep_dtype = DType::F32);

// Keeps the checkpoint's raw bytes for type None without a float round trip.
QuantizedMatrix wrap_unquantized(const uint8_t* bytes, DType dtype, int64_t rows, int64_t cols);

// Writes rows [row_begin, row_end) of the dequantized matrix into out[(row_end-row_begin)*cols].
// Multi-threaded when the range is large.
void dequantize_rows(const QuantizedMatrix& m, int64_t row_begin, int64_t row_end, float* out);

}  // namespace lora
