#include "model/lora.hpp"

#include <algorithm>
#include <cmath>

#include "common/errors.hpp"
#include "common/rng.hpp"

namespace lora {

bool LoraState::targeted(int module) const {
  for (int t : spec.targets)
    if (t == module) return true;
  return false;
}

float lora_scale(const LoraSpec& spec) {
  const double r = static_cast<double>(spec.r);
  return static_cast<float>(spec.rslora ? spec.alpha / std::sqrt(r) : spec.alpha / r);
}

LoraState lora_create(const Model& model, const LoraSpec& spec, uint64_t seed, const std::string& config_file,
                      int config_line) {
  LoraState s;
  s.spec = spec;
  s.scale = lora_scale(spec);
  s.layers = model.cfg.num_layers;
  s.slots.assign(s.layers * kNumModules, LoraSlot{});
  for (int m : spec.targets) {
    const int64_t limit = std::min(model.module_in(m), model.module_out(m));
    if (spec.r > limit) {
      throw InputError("config_field",
                       "lora.r = " + std::to_string(spec.r) + " is larger than " + module_name(m) + " allows (" +
                           std::to_string(model.module_out(m)) + " x " + std::to_string(model.module_in(m)) + ")",
                       config_file, "lora.r", config_line,
                       "r must be at most min(in, out) = " + std::to_string(limit) + " for every targeted module.");
    }
  }
  int64_t total = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int m = 0; m < kNumModules; ++m) {
      LoraSlot& sl = s.slots[l * kNumModules + m];
      sl.in = model.module_in(m);
      sl.out = model.module_out(m);
      if (!s.targeted(m)) continue;
      sl.a = total;
      total += spec.r * sl.in;
      sl.b = total;
      total += sl.out * spec.r;
    }
  }
  s.params.assign(total, 0.f);
  s.grads.assign(total, 0.f);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int m : spec.targets) {
      const LoraSlot& sl = s.slot(l, m);
      const float bound = 1.0f / std::sqrt(static_cast<float>(sl.in));
      const uint64_t key = rng_key(seed, 0x4C6F5241ull /* "LoRA" init stream */, static_cast<uint64_t>(l), m);
      float* A = s.params.data() + sl.a;
      for (int64_t i = 0; i < spec.r * sl.in; ++i) A[i] = (2.f * rng_uniform(key, i) - 1.f) * bound;
    }
  }
  return s;
}

}  // namespace lora
