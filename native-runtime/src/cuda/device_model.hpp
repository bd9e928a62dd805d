#pragma once
// The model and the adapter as the GPU holds them, uploaded once from the host's Model and
// LoraState:
//   DeviceModel      every decoder linear as loaded (quantized codes or bf16 values), norms
//                    and biases fp32, embeddings / LM head / GPT-2's wpe bf16, inv_freq fp32.
//   DeviceLoraState  the fp32 master weights, gradients and AdamW moments in LoraState's flat
//                    layout (same offsets, so a download or upload is one copy each), and a
//                    bf16 copy of the weights for the GEMMs, refreshed by refresh_bf16()
//                    after every change of the fp32 weights.
#include <cstdint>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/dequant.hpp"
#include "cuda/lora_linear.hpp"
#include "cuda/memory.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora::cuda {

struct DeviceLayer {
  DeviceArray<float> input_norm, post_norm;            // (C)
  DeviceArray<float> input_norm_bias, post_norm_bias;  // (C) GPT-2; empty otherwise
  DeviceQuantMatrix linear[kNumModules];               // [out, in]; empty for modules the arch lacks
  DeviceArray<float> bias[kNumModules];                // (out); empty when the module has no bias
};

struct DeviceModel {
  const Model* host = nullptr;     // the loaded model (config, module shapes); outlives this
  std::vector<DeviceLayer> layers;
  DeviceArray<bf16> embed;         // (V, C)
  DeviceArray<bf16> lm_head;       // (V, C); empty when tied to the embeddings
  DeviceArray<bf16> wpe;           // (P, C) GPT-2's learned positions; empty otherwise
  DeviceArray<float> final_norm, final_norm_bias;  // (C); the bias for GPT-2 only
  DeviceArray<float> inv_freq;     // (head_dim / 2); empty for GPT-2

  const bf16* lm_head_weight() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  const float* bias(int64_t layer, int module) const {
    const auto& b = layers[layer].bias[module];
    return b.empty() ? nullptr : b.data();
  }
  uint64_t bytes() const;          // device bytes held
};

DeviceModel upload_model(const Model& model);

// Device bytes upload_model will hold for `model` (before the allocator's rounding).
uint64_t device_model_bytes(const Model& model);
// The same tensors at the allocator's size classes: what upload_model adds to the allocator's
// `used` (the memory estimate counts this).
uint64_t device_model_allocated_bytes(const Model& model);

struct DeviceLoraState {
  const LoraState* host = nullptr;  // layout (slots, spec, scale); outlives this
  DeviceArray<float> params, grads, m, v;  // fp32, params.size() each
  DeviceArray<bf16> params_bf16;           // the GEMM copy of params

  int64_t count() const { return static_cast<int64_t>(params.size()); }
  bool targeted(int64_t layer, int module) const { return host && host->slot(layer, module).a >= 0; }
  // The adapter of one module for lora_linear: bf16 weights, fp32 gradients (nullptr unless
  // `with_grads`), no dropout (the caller sets dropout and its key for training passes).
  // A == nullptr when the module is not targeted.
  DeviceLora module(int64_t layer, int module, bool with_grads);
  // params_bf16 = bf16(params), on `stream`.
  void refresh_bf16(cudaStream_t stream);
};

// Copies lora.params to the device (gradients and moments start at zero) and refreshes the
// bf16 copy. Synchronous.
DeviceLoraState upload_lora(const LoraState& lora, cudaStream_t stream);

// Device bytes upload_lora holds for `count` parameters: 4 fp32 vectors and 1 bf16.
inline uint64_t device_lora_bytes(int64_t count) { return static_cast<uint64_t>(count) * (4 * 4 + 2); }
// The same at the allocator's size classes.
inline uint64_t device_lora_allocated_bytes(int64_t count) {
  const size_t n = static_cast<size_t>(count);
  return 4 * static_cast<uint64_t>(allocator_size_class(n * 4)) + allocator_size_class(n * 2);
}

// fp32 -> bf16 bits, round to nearest even (NaN stays NaN), as the device's conversion.
uint16_t host_f32_to_bf16(float f);

}  // namespace lora::cuda
