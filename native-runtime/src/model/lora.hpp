#pragma once
// The trainable LoRA adapter: A [r, in] and B [out, r] for every targeted module of every
// layer, stored in one flat fp32 vector (params) with a parallel gradient vector, so the
// optimizer, grad-norm clipping and checkpoints work on contiguous memory.
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.hpp"

namespace lora {

struct LoraSpec {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.0;
  bool rslora = false;
  std::vector<int> targets;  // Module ids, canonical order, no duplicates
};

struct LoraSlot {
  int64_t a = -1;   // offset of A in params, -1 when the module is not targeted
  int64_t b = -1;   // offset of B
  int64_t in = 0, out = 0;
};

struct LoraState {
  LoraSpec spec;
  float scale = 0;                        // alpha / r, or alpha / sqrt(r) with rsLoRA
  int64_t layers = 0;
  std::vector<LoraSlot> slots;            // layers * kNumModules
  std::vector<float> params;
  std::vector<float> grads;

  const LoraSlot& slot(int64_t layer, int module) const { return slots[layer * kNumModules + module]; }
  bool targeted(int module) const;
};

// Lays out the adapter for `model` and initialises it as PEFT does: A kaiming-uniform with
// a = sqrt(5) (uniform in +-1/sqrt(in)), B zero; A's values are a pure function of
// (seed, layer, module, index). Throws InputError (field "lora.r") when r exceeds
// min(in, out) of a targeted layer.
LoraState lora_create(const Model& model, const LoraSpec& spec, uint64_t seed, const std::string& config_file = {},
                      int config_line = 0);

float lora_scale(const LoraSpec& spec);

}  // namespace lora
