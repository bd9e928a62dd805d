#pragma once
// The Llama-family decoder (Llama, Mistral, Qwen2) with its frozen, optionally quantized
// base weights. Loading validates every tensor against config.json before anything is
// allocated for compute, so a bad checkpoint fails with an InputError naming the tensor.
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_config.hpp"
#include "formats/safetensors.hpp"
#include "quant/quant.hpp"

namespace lora {

// The decoder-layer linear modules, in the canonical order of llama_target_modules().
enum Module : int { kQProj = 0, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj, kNumModules };
const char* module_name(int module);                   // "q_proj", ...
int module_from_name(const std::string& name);         // -1 when unknown
bool module_is_attention(int module);                  // q,k,v,o live under self_attn, the rest under mlp
// The HF tensor name prefix of a module in layer `layer`, e.g. "model.layers.3.self_attn.q_proj".
std::string module_path(int64_t layer, int module);

struct QuantSettings {
  QuantType type = QuantType::None;
  int block_size = 64;
  bool double_quant = false;
};

struct LayerWeights {
  std::vector<float> input_norm;   // (C)
  std::vector<float> post_norm;    // (C)
  QuantizedMatrix linear[kNumModules];  // nn.Linear layout [out, in]
  std::vector<float> bias[kNumModules]; // (out), empty when the module has no bias
};

struct Model {
  ModelConfig cfg;
  QuantSettings quant;
  std::vector<float> embed;        // (V, C)
  std::vector<float> lm_head;      // (V, C); empty when tied to the embeddings
  std::vector<float> final_norm;   // (C)
  std::vector<LayerWeights> layers;
  std::vector<float> inv_freq;     // (head_dim / 2), rope scaling applied
  std::string dtype;               // dominant checkpoint dtype, e.g. "BF16"
  uint64_t bytes_disk = 0;         // every tensor the model uses, as stored on disk
  uint64_t bytes_held = 0;         // what this process holds for the base after quantization
  int64_t params_total = 0;

  const float* lm_head_weight() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  int64_t module_in(int module) const;
  int64_t module_out(int module) const;
  int64_t max_linear_numel() const;
};

// Static facts about an HF model folder, from config.json and the safetensors headers only
// (no tensor data read): what `lora-runtime inspect` prints. Validates every tensor's
// presence, dtype and shape, like load_model does.
struct ModelSummary {
  ModelConfig cfg;
  int64_t params_total = 0;
  uint64_t bytes = 0;
  std::string dtype;
};
ModelSummary inspect_model(const std::string& model_dir);

// Loads the model; decoder-layer linear weights are quantized as `quant` says (None keeps
// the checkpoint's dtype bytes). Throws InputError for any problem with the folder.
Model load_model(const std::string& model_dir, const QuantSettings& quant);

}  // namespace lora
