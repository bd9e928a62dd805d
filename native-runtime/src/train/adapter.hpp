#pragma once
// PEFT LoRA adapters on disk (DESIGN.md "Adapter export"): adapter_model.safetensors with
// keys base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight
// (GPT-2: base_model.model.transformer.h.{i}.{attn|mlp}.{module}...), lora_A [r, in],
// lora_B [out, r], F32 (the same for GPT-2's Conv1D layers, as PEFT writes them, with
// fan_in_fan_out: true); and adapter_config.json as PEFT writes it.
#include <string>
#include <vector>

#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora {

std::string adapter_key(int64_t layer, int module, bool is_a);

// Writes both files into `dir` (created if needed), each atomically. `params` defaults to
// lora.params (a different vector, e.g. the best-eval snapshot, may be given).
void write_adapter(const std::string& dir, const LoraState& lora, const std::string& base_model_path,
                   const std::vector<float>* params = nullptr);

// Reads a PEFT adapter folder for `model`: r, alpha, rsLoRA, dropout and target modules
// from adapter_config.json, weights from adapter_model.safetensors (F32, F16 or BF16).
// Throws InputError naming the file and the key for anything that does not fit the model.
LoraState read_adapter(const std::string& dir, const Model& model);

// Loads an adapter into an existing layout (run.json's lora.init_adapter): r and the
// target modules must match; errors name run.json (`run_file`) and its field lora.init_adapter.
void load_adapter_into(const std::string& dir, const Model& model, LoraState& lora, const std::string& run_file);

}  // namespace lora
