#pragma once
// The CUDA path's public face, in plain C++ (no CUDA headers), so the CPU build and the
// trainer include it alike. A runtime built without nvcc answers compiled() == false and
// lists no GPU; a runtime built with CUDA still runs on a machine with no driver or GPU
// (the CUDA runtime is linked statically and loads the driver at first use).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lora {
struct Model;
struct ModelConfig;
struct LoraState;
}  // namespace lora

namespace lora::cuda {

// The oldest GPU the kernels are built for: bf16 tensor cores (Ampere, sm_80).
constexpr int kMinComputeMajor = 8;

struct DeviceInfo {
  int index = 0;
  std::string name;                 // e.g. "NVIDIA H100 80GB HBM3"
  int cc_major = 0, cc_minor = 0;   // compute capability
  int multiprocessors = 0;
  uint64_t memory_total = 0, memory_free = 0;  // bytes
  bool supported = false;           // cc_major >= kMinComputeMajor
  std::string note;                 // why not supported, empty when supported
};

// True when this runtime was built with the CUDA path.
bool compiled();
// The GPUs the driver reports; empty (with `why` set) when the build has no CUDA, there is
// no driver, or no device. Never throws.
std::vector<DeviceInfo> list_devices(std::string* why = nullptr);
// The CUDA runtime version the binary was built against, e.g. "13.0"; "" without CUDA.
std::string runtime_version();

// Whether the CUDA kernels can train a model of this shape (the attention kernels take head
// sizes that are multiples of 8 up to 256); when not, `why` says what they refuse. False
// without CUDA.
bool supports_model(const ModelConfig& cfg, std::string* why = nullptr);

}  // namespace lora::cuda

namespace lora {
class TrainEngine;
}

namespace lora::cuda {

struct CudaTrainOptions {
  int device = 0;
  // Checkpointed layer inputs go to pinned host memory while the forward runs on and come
  // back one layer ahead in backward (run.json compute.offload_activations).
  bool offload_activations = false;
  int64_t lm_head_chunk = 1024;   // target rows per LM-head + cross-entropy chunk
};

// The CUDA engine for `model` and `lora` (which must outlive it): uploads the frozen base
// (quantized as loaded) and the adapter. Throws InputError (code "device") when the build
// has no CUDA or the device is missing/unsupported, OutOfMemoryError when the model does not
// fit.
std::unique_ptr<TrainEngine> make_cuda_engine(const Model& model, LoraState& lora, const CudaTrainOptions& opt);

// Device bytes a run needs: the base as held on the device, the LoRA weights, their bf16
// copies, gradients and AdamW moments, and the activations of one micro-batch of `tokens`
// tokens (with or without per-layer checkpointing / offload), the LM-head chunk and the
// dequantization scratch. Used to refuse a run that cannot fit before loading anything.
// Host arithmetic only: it needs no GPU and never touches the driver.
uint64_t estimate_device_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                               const CudaTrainOptions& opt);

// The same estimate by part (`lora-runtime estimate`), every tensor at the allocator's size
// class; total() == estimate_device_bytes.
struct DeviceEstimate {
  uint64_t base = 0;            // frozen base as the device holds it (device_model_allocated_bytes)
  uint64_t lora = 0;            // adapter: fp32 weights, gradients, 2 moments, bf16 copy
  uint64_t layer_inputs = 0;    // fp32 layer inputs kept for backward (L + 1, or 2 with offload)
  uint64_t activations = 0;     // saved activations of the kept layers (L, or 1 with checkpointing)
  uint64_t dequant = 0;         // one dequantized weight, quantized bases only
  uint64_t lm_head = 0;         // target rows and the LM head + cross-entropy chunk
  uint64_t scratch = 0;         // batch, final norm, backward scratch, attention backward workspace
  uint64_t gemm_workspace = 0;  // the GEMM backend's workspace
  uint64_t total() const {
    return base + lora + layer_inputs + activations + dequant + lm_head + scratch + gemm_workspace;
  }
};
// All zero in a build without CUDA.
DeviceEstimate estimate_device(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                               const CudaTrainOptions& opt);

}  // namespace lora::cuda
