#pragma once
// `lora-runtime merge`: folds a PEFT LoRA adapter into its base model, W = W0 + scale * B A
// for every adapted module, and writes an HF model folder that loads as a plain model
// (transformers, vLLM, our own `logits`): safetensors with the base's tensor names, sharded
// as HF shards (model-0000i-of-0000n.safetensors + model.safetensors.index.json) when the
// data exceeds the shard size, config.json (torch_dtype updated), generation and tokenizer
// files copied. Tensors are streamed one at a time, so memory stays near one matrix.
#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors.hpp"
#include "quant/quant.hpp"

namespace lora {

struct MergeOptions {
  std::string model;
  std::string adapter;
  std::string out;
  DType dtype = DType::BF16;             // of the floating-point tensors written
  // Not None: the adapted base weights are quantized and dequantized first, so the merge
  // matches what a QLoRA adapter was trained against (the base on disk is unquantized).
  QuantType quant = QuantType::None;
  bool force = false;                    // replace a non-empty `out`
  uint64_t shard_bytes = 5000000000ull;  // HF's default max_shard_size "5GB"
};

struct MergeResult {
  std::string out;
  int64_t tensors = 0;
  int64_t merged_modules = 0;            // (layer, module) pairs that received B A
  std::string dtype;                     // "bf16", "f16", "f32"
  uint64_t bytes = 0;                    // tensor data written (metadata.total_size)
  int64_t shards = 0;
  std::string dequantized;               // quant type name when the base was round-tripped, else ""
  std::vector<std::string> copied;       // config/tokenizer files copied (names)
};

// Throws InputError naming the file and key for a bad model, adapter or output folder.
MergeResult merge_adapter(const MergeOptions& opt);

// w[out, in] += scale * b[out, r] . a[r, in], each delta element summed over k = 0..r-1 in fp32.
void merge_lora_delta(float* w, const float* a, const float* b, int64_t out, int64_t in, int64_t r, float scale);

// "bf16" | "f16" | "f32" -> DType; false when unknown.
bool merge_dtype_from_name(const std::string& s, DType& out);

}  // namespace lora
