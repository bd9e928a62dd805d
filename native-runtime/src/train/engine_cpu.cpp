// The CPU TrainEngine: the reference path of model/forward.cpp and ops/adamw.cpp, run on
// the host's LoraState in place. Each call is exactly what the trainer did before the engine
// split (same functions, same order, same buffers), so CPU results stay bit-identical.
#include <algorithm>
#include <stdexcept>

#include "ops/adamw.hpp"
#include "train/engine.hpp"
#include "train/events.hpp"

namespace lora {

namespace {

class CpuEngine final : public TrainEngine {
 public:
  CpuEngine(const Model& model, LoraState& lora)
      : model_(model), lora_(lora), m_(lora.params.size(), 0.f), v_(lora.params.size(), 0.f) {}

  Json device_json() const override { return cpu_device_json(); }

  void zero_grads() override { std::fill(lora_.grads.begin(), lora_.grads.end(), 0.f); }

  double forward_backward(const Batch& batch, const DropoutKey& key, bool checkpointing) override {
    return lora::forward_backward(model_, lora_, batch, key, checkpointing, ws_);
  }

  // Its own workspace: eval batches may have a different shape from training's, and sharing
  // one would resize the training buffers back and forth.
  double forward_loss(const Batch& batch, bool with_adapter) override {
    return lora::forward_loss(model_, with_adapter ? &lora_ : nullptr, batch, eval_ws_);
  }

  void scale_grads(float s) override { scale_inplace(lora_.grads.data(), n(), s); }

  double grad_sum_squares() override { return sum_squares(lora_.grads.data(), n()); }

  void optimizer_step(const OptimizerStep& o) override {
    if (o.adamw)
      adamw_update(lora_.params.data(), lora_.grads.data(), m_.data(), v_.data(), n(), o.lr, o.beta1, o.beta2, o.eps,
                   o.weight_decay, o.step);
    else
      sgd_update(lora_.params.data(), lora_.grads.data(), n(), o.lr, o.weight_decay);
  }

  void download(LoraState& lora, std::vector<float>* m, std::vector<float>* v) override {
    if (&lora != &lora_) lora.params = lora_.params;
    if (m) *m = m_;
    if (v) *v = v_;
  }

  void upload(const LoraState& lora, const std::vector<float>* m, const std::vector<float>* v) override {
    if (&lora != &lora_) lora_.params = lora.params;
    // A checkpoint's moments were written for the same layout; anything else is a caller bug
    // that would make adamw_update read past the end.
    if (m) {
      if (m->size() != lora_.params.size()) throw std::invalid_argument("upload: m has the wrong size");
      m_ = *m;
    }
    if (v) {
      if (v->size() != lora_.params.size()) throw std::invalid_argument("upload: v has the wrong size");
      v_ = *v;
    }
  }

  // The process's resident memory and the machine's: on the CPU, "device" is the host.
  Json memory_json() override {
    const MemoryInfo mi = read_memory_info();
    Json j = Json::object();
    j.set("used", mi.rss);
    j.set("peak", mi.peak);
    j.set("device_used", mi.system_used);
    j.set("device_total", mi.system_total);
    return j;
  }

 private:
  int64_t n() const { return static_cast<int64_t>(lora_.params.size()); }

  const Model& model_;
  LoraState& lora_;
  std::vector<float> m_, v_;
  Workspace ws_, eval_ws_;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cpu_engine(const Model& model, LoraState& lora) {
  return std::make_unique<CpuEngine>(model, lora);
}

}  // namespace lora
