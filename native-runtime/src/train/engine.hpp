#pragma once
// Where a training step runs. The trainer (train/trainer.cpp) drives one TrainEngine and
// never touches device memory itself: the CPU engine works in place on the host's LoraState;
// the CUDA engine (cuda/engine.cpp) keeps the fp32 LoRA weights, gradients and AdamW moments
// on the GPU and copies them to the host only for checkpoints, the adapter and best-params.
#include <cstdint>
#include <memory>
#include <vector>

#include "common/json.hpp"
#include "model/forward.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora {

struct OptimizerStep {
  bool adamw = true;          // false: SGD
  float lr = 0, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;           // counts from 1 (AdamW bias correction)
};

class TrainEngine {
 public:
  virtual ~TrainEngine() = default;
  // {kind: "cpu"|"cuda", name, memory_total, ...}: the `device` of the hello event.
  virtual Json device_json() const = 0;
  virtual void zero_grads() = 0;
  // One micro-batch: accumulates d(summed token loss)/d(A, B) into the gradients and returns
  // the summed loss over the batch's targets.
  virtual double forward_backward(const Batch& batch, const DropoutKey& key, bool checkpointing) = 0;
  // Summed loss without dropout; with_adapter false scores the base model.
  virtual double forward_loss(const Batch& batch, bool with_adapter) = 0;
  // Multiplies the gradients by `s`.
  virtual void scale_grads(float s) = 0;
  // Sum of squares of the gradients (fp64 accumulation).
  virtual double grad_sum_squares() = 0;
  virtual void optimizer_step(const OptimizerStep& o) = 0;
  // Makes lora.params (and m, v when given, resized to the parameter count) equal to the
  // engine's current values.
  virtual void download(LoraState& lora, std::vector<float>* m, std::vector<float>* v) = 0;
  // Replaces the engine's parameters (and moments when given) with the host's, e.g. after
  // reading a checkpoint.
  virtual void upload(const LoraState& lora, const std::vector<float>* m, const std::vector<float>* v) = 0;
  // {used, peak, device_used, device_total} for the `step` event's `mem`.
  virtual Json memory_json() = 0;
};

// The CPU engine: forward_backward/forward_loss of model/forward.hpp and ops/adamw on `lora`
// in place (it holds references to both; they must outlive it).
std::unique_ptr<TrainEngine> make_cpu_engine(const Model& model, LoraState& lora);

}  // namespace lora
