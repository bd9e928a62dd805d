// The CUDA TrainEngine (train/engine.hpp): the frozen base and the adapter live on the GPU
// for the whole run; the host's LoraState is only written by download() (checkpoints, the
// final adapter, best parameters) and read by upload() (resume).
#include <stdexcept>
#include <string>

#include "common/json.hpp"
#include "cuda/adamw.hpp"
#include "cuda/context.hpp"
#include "cuda/cuda.hpp"
#include "cuda/device_model.hpp"
#include "cuda/forward.hpp"
#include "cuda/gemm.hpp"
#include "cuda/memory.hpp"
#include "train/engine.hpp"

namespace lora::cuda {

namespace {

ForwardOptions forward_options(const CudaTrainOptions& o) {
  ForwardOptions f;
  f.offload_activations = o.offload_activations;
  f.lm_head_chunk = o.lm_head_chunk;
  return f;
}

class CudaEngine final : public TrainEngine {
 public:
  CudaEngine(const Model& model, LoraState& lora, const CudaTrainOptions& opt)
      : opt_(forward_options(opt)), ctx_(open_device(opt.device)), dm_(upload_model(model)),
        dl_(upload_lora(lora, ctx_.stream)) {}

  Json device_json() const override {
    const DeviceInfo& d = ctx_.info;
    Json j = Json::object();
    j.set("kind", "cuda");
    j.set("index", d.index);
    j.set("name", d.name);
    j.set("compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
    j.set("memory_total", d.memory_total);
    j.set("gemm", gemm_backend());
    return j;
  }

  void zero_grads() override {
    if (dl_.count() > 0)
      LORA_CUDA_CHECK(cudaMemsetAsync(dl_.grads.data(), 0, dl_.grads.bytes(), ctx_.stream));
  }

  double forward_backward(const Batch& batch, const DropoutKey& key, bool checkpointing) override {
    return cuda::forward_backward(dm_, dl_, batch, key, checkpointing, opt_, ws_);
  }

  double forward_loss(const Batch& batch, bool with_adapter) override {
    return cuda::forward_loss(dm_, with_adapter ? &dl_ : nullptr, batch, opt_, ws_);
  }

  void scale_grads(float s) override {
    if (dl_.count() > 0) scale_inplace(dl_.grads.data(), dl_.count(), s, ctx_.stream);
  }

  double grad_sum_squares() override {
    return dl_.count() > 0 ? sum_squares(dl_.grads.data(), dl_.count(), ctx_.stream) : 0.0;
  }

  void optimizer_step(const OptimizerStep& o) override {
    if (dl_.count() == 0) return;
    if (o.adamw)
      adamw_update(dl_.params.data(), dl_.grads.data(), dl_.m.data(), dl_.v.data(), dl_.count(), o.lr, o.beta1,
                   o.beta2, o.eps, o.weight_decay, o.step, ctx_.stream);
    else
      sgd_update(dl_.params.data(), dl_.grads.data(), dl_.count(), o.lr, o.weight_decay, ctx_.stream);
    dl_.refresh_bf16(ctx_.stream);
  }

  void download(LoraState& lora, std::vector<float>* m, std::vector<float>* v) override {
    const size_t n = static_cast<size_t>(dl_.count());
    lora.params.resize(n);
    if (n > 0) copy_to_host(lora.params.data(), dl_.params.data(), n * sizeof(float));
    if (m) {
      m->resize(n);
      if (n > 0) copy_to_host(m->data(), dl_.m.data(), n * sizeof(float));
    }
    if (v) {
      v->resize(n);
      if (n > 0) copy_to_host(v->data(), dl_.v.data(), n * sizeof(float));
    }
  }

  void upload(const LoraState& lora, const std::vector<float>* m, const std::vector<float>* v) override {
    const size_t n = static_cast<size_t>(dl_.count());
    auto check = [n](size_t got, const char* what) {
      if (got != n)
        throw std::invalid_argument(std::string("CudaEngine::upload: ") + what + " has " + std::to_string(got) +
                                    " values, the adapter has " + std::to_string(n));
    };
    check(lora.params.size(), "lora.params");
    if (m) check(m->size(), "m");
    if (v) check(v->size(), "v");
    if (n == 0) return;
    copy_to_device(dl_.params.data(), lora.params.data(), n * sizeof(float));
    if (m) copy_to_device(dl_.m.data(), m->data(), n * sizeof(float));
    if (v) copy_to_device(dl_.v.data(), v->data(), n * sizeof(float));
    dl_.refresh_bf16(ctx_.stream);
  }

  Json memory_json() override {
    const AllocatorStats a = allocator_stats();
    const DeviceMemory d = device_memory(ctx_.device);
    Json j = Json::object();
    j.set("used", a.used);
    j.set("peak", a.peak);
    j.set("device_used", d.used);
    j.set("device_total", d.total);
    return j;
  }

 private:
  ForwardOptions opt_;
  Context& ctx_;
  DeviceModel dm_;
  DeviceLoraState dl_;
  DeviceWorkspace ws_;   // last: destroyed first, while the arrays it orders copies for exist
};

}  // namespace

std::unique_ptr<TrainEngine> make_cuda_engine(const Model& model, LoraState& lora, const CudaTrainOptions& opt) {
  if (opt.device < 0) throw std::invalid_argument("make_cuda_engine: opt.device must be >= 0");
  if (opt.lm_head_chunk <= 0) throw std::invalid_argument("make_cuda_engine: opt.lm_head_chunk must be positive");
  return std::make_unique<CudaEngine>(model, lora, opt);
}

// The base as the device holds it (device_model_bytes: quantized codes and scales, or bf16
// values; bf16 embeddings / LM head; fp32 norms and biases), the adapter's 4 fp32 vectors
// (weights, gradients, two AdamW moments) and its bf16 copy, and the workspace of one
// micro-batch of `tokens` tokens (device_workspace_parts, forward.cpp, which lists it per
// token), plus the GEMM backend's workspace (cuBLASLt's, 32 MiB: gemm.cpp kWorkspaceBytes),
// every tensor at the allocator's size class, as the allocator's `used` will count it (the
// rounding of a 7B base's large tensors alone is about 50 MiB). Not counted: the CUDA
// context itself (a few hundred MiB the driver reports as used). Nothing here calls CUDA:
// the sizing workspace is never allocated.
DeviceEstimate estimate_device(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                               const CudaTrainOptions& opt) {
  constexpr uint64_t kGemmWorkspace = uint64_t(32) << 20;
  const WorkspaceBytes w = device_workspace_parts(model, lora, tokens, checkpointing, forward_options(opt));
  DeviceEstimate e;
  e.base = device_model_allocated_bytes(model);
  e.lora = device_lora_allocated_bytes(static_cast<int64_t>(lora.params.size()));
  e.layer_inputs = w.layer_inputs;
  e.activations = w.activations;
  e.dequant = w.dequant;
  e.lm_head = w.lm_head;
  e.scratch = w.scratch;
  e.gemm_workspace = kGemmWorkspace;
  return e;
}

uint64_t estimate_device_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                               const CudaTrainOptions& opt) {
  return estimate_device(model, lora, tokens, checkpointing, opt).total();
}

}  // namespace lora::cuda
