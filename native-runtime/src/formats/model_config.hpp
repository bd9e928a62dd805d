#pragma once
// The model's config.json, for the architectures the runtime supports.
#include <cstdint>
#include <string>
#include <vector>

namespace lora {

enum class Arch { Llama, Mistral, Qwen2, GPT2 };
const char* arch_name(Arch a);  // "llama", "mistral", "qwen2", "gpt2"

struct RopeScaling {
  std::string type;               // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string dir;                // the model folder
  std::string hf_architecture;    // e.g. "LlamaForCausalLM"
  Arch arch = Arch::Llama;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;           // config "head_dim" or hidden_size / num_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // GPT-2: n_positions, the size of its learned table
  double rms_norm_eps = 1e-6;    // GPT-2: its LayerNorms' layer_norm_epsilon
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;    // q/k/v biases (always true for Qwen2)
  bool mlp_bias = false;
  int64_t sliding_window = 0;     // Mistral/Qwen2; 0 = none
  std::string torch_dtype;        // informative
};

// GPT-2 (GPT2LMHeadModel) maps n_embd, n_layer, n_head, n_inner (null: 4 * n_embd),
// n_positions and layer_norm_epsilon onto the fields above; num_kv_heads = num_heads.
// Reads DIR/config.json. Throws InputError (file = config.json, field = the key) when the
// file is missing or malformed, the architecture is unsupported (hint lists the supported
// ones), or a size is missing, non-positive or inconsistent (heads not dividing, etc.).
ModelConfig load_model_config(const std::string& model_dir);

// The HF module names of the linear layers a LoRA can target, in canonical order:
// q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
const std::vector<std::string>& llama_target_modules();
// GPT-2's, as PEFT names them (the last path component): c_attn, c_proj, c_fc. "c_proj"
// names both attn.c_proj and mlp.c_proj.
const std::vector<std::string>& gpt2_target_modules();
// The target module names of the architecture.
const std::vector<std::string>& target_modules(Arch a);

}  // namespace lora
