#pragma once
// The decoders the runtime trains (Llama, Mistral, Qwen2; GPT-2) with their frozen,
// optionally quantized base weights. Loading validates every tensor against config.json before anything is
// allocated for compute, so a bad checkpoint fails with an InputError naming the tensor.
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_config.hpp"
#include "formats/safetensors.hpp"
#include "quant/quant.hpp"

namespace lora {

// The decoder-layer linear modules of every architecture: Llama's in the canonical order of
// llama_target_modules(), then GPT-2's (its Conv1D layers, held transposed to nn.Linear's
// [out, in] at load so the linear op and quantization are shared). A model uses the
// subset arch_modules() returns.
enum Module : int {
  kQProj = 0, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj,
  kCAttn, kAttnCProj, kCFc, kMlpCProj,
  kNumModules
};
const char* module_name(int module);                   // "q_proj", ..., "c_attn", "c_proj", "c_fc", "c_proj"
int module_from_name(const std::string& name);         // Llama's names only; -1 when unknown
const std::vector<int>& arch_modules(Arch arch);       // ascending
// The modules of `arch` a PEFT target_modules entry selects, ascending; empty when none.
// PEFT matches a name against the end of the module path, so GPT-2's "c_proj" selects both
// attn.c_proj and mlp.c_proj while "attn.c_proj" / "mlp.c_proj" select one.
std::vector<int> modules_for_target(Arch arch, const std::string& name);
// The PEFT target_modules names that select exactly `modules` (e.g. GPT-2's attn.c_proj and
// mlp.c_proj together become "c_proj").
std::vector<std::string> target_names(const std::vector<int>& modules);
bool module_is_attention(int module);                  // under self_attn / attn, the rest under mlp
// The HF tensor name prefix of a module in layer `layer` as PEFT sees it, e.g.
// "model.layers.3.self_attn.q_proj" or "transformer.h.3.attn.c_attn".
std::string module_path(int64_t layer, int module);

struct QuantSettings {
  QuantType type = QuantType::None;
  int block_size = 64;
  bool double_quant = false;
};

struct LayerWeights {
  std::vector<float> input_norm;   // (C) RMSNorm weight; GPT-2: ln_1.weight
  std::vector<float> post_norm;    // (C) RMSNorm weight; GPT-2: ln_2.weight
  std::vector<float> input_norm_bias;  // (C) GPT-2: ln_1.bias; empty otherwise
  std::vector<float> post_norm_bias;   // (C) GPT-2: ln_2.bias
  QuantizedMatrix linear[kNumModules];  // nn.Linear layout [out, in]
  std::vector<float> bias[kNumModules]; // (out), empty when the module has no bias
};

struct Model {
  ModelConfig cfg;
  QuantSettings quant;
  std::vector<float> embed;        // (V, C)
  std::vector<float> lm_head;      // (V, C); empty when tied to the embeddings
  std::vector<float> final_norm;   // (C); GPT-2: ln_f.weight
  std::vector<float> final_norm_bias;  // (C) GPT-2: ln_f.bias; empty otherwise
  std::vector<float> wpe;          // (max_position_embeddings, C) GPT-2's learned positions
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
