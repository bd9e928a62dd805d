#pragma once
// Forward and backward of the decoder (Llama family or GPT-2) on the device, the twin of
// model/forward.cpp layer by layer. The residual stream, its gradient and every gradient
// accumulator are fp32; every GEMM input is bf16 (normalised activations, attention
// outputs, the bf16 copies of the LoRA weights, the base weights dequantized into one
// scratch matrix right before each use).
//
// Activation checkpointing keeps only each layer's fp32 input and recomputes the layer in
// backward. With offload, those inputs leave the device as soon as they are written: they
// are copied to pinned host memory on the context's copy stream while the next layer runs,
// and come back one layer ahead of the backward that needs them, so the device holds two
// layer inputs instead of L + 1. Offload applies to checkpointed runs only (without
// checkpointing every layer's activations stay on the device anyway).
#include <cstdint>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/cross_entropy.hpp"
#include "cuda/device_model.hpp"
#include "cuda/memory.hpp"
#include "model/forward.hpp"

namespace lora::cuda {

struct ForwardOptions {
  bool offload_activations = false;
  int64_t lm_head_chunk = 1024;   // target rows per LM-head + cross-entropy chunk
};

// One layer's saved activations (GPT-2 reuses the fields as model/forward.hpp's LayerActs:
// xn/xn2 are the LayerNorm outputs, g the c_fc output, hs = gelu(g), u unused).
struct DeviceLayerActs {
  DeviceArray<bf16> xn, q, k, v, att, xn2, g, u, hs;
  DeviceArray<float> rstd1, rstd2, mean1, mean2, lse, x1;
  DeviceArray<bf16> lora_h[kNumModules], lora_u[kNumModules];
};

// Buffers reused across calls; they grow to the largest batch seen and are freed with the
// workspace. Not copyable (owns CUDA events, pinned memory and the LM-head workspace).
struct DeviceWorkspace {
  DeviceWorkspace() = default;
  ~DeviceWorkspace();
  DeviceWorkspace(const DeviceWorkspace&) = delete;
  DeviceWorkspace& operator=(const DeviceWorkspace&) = delete;

  // The micro-batch: token ids, positions, document starts (N each), and the target rows.
  DeviceArray<int32_t> tokens, pos, doc_start, head_targets;
  DeviceArray<int64_t> head_index;
  std::vector<int64_t> host_index;
  std::vector<int32_t> host_targets;

  // Layer inputs: L + 1 of (N, C) fp32; 2 with offload or in a forward-only pass.
  std::vector<DeviceArray<float>> xs;
  std::vector<DeviceLayerActs> acts;   // one per layer, or one when recomputing
  DeviceArray<bf16> w_scratch;         // the dequantized weight in use (quantized bases only)
  DeviceArray<bf16> xf;                // final norm output (N, C)
  DeviceArray<float> rstdf, meanf;     // (N)
  DeviceArray<bf16> qkv;               // GPT-2's fused c_attn output (N, 3C)
  DeviceArray<float> recompute_out;    // the discarded output of a recomputed layer

  // Backward: the residual gradient flows through the layers in place in `dres`.
  DeviceArray<float> dres, dxn, dtmp, lora_dh;
  DeviceArray<bf16> dy_bf, dtmp_bf, dg, du, dq, dk, dv, dqkv, lora_du;
  DeviceArray<uint8_t> attn_ws;
  DeviceArray<bf16> head_x;            // (n, C) final-norm outputs of the target rows
  DeviceArray<float> head_dx;          // (n, C)
  LmHeadWorkspace* head_ws = nullptr;

  // Offload: pinned host copies of the layer inputs and the events that order the copies.
  float* host_xs = nullptr;
  size_t host_xs_floats = 0;
  std::vector<cudaEvent_t> ev_stored;   // layer l's input is on the host
  std::vector<cudaEvent_t> ev_loaded;   // layer l's input is back on the device
  std::vector<cudaEvent_t> ev_ready;    // layer l's input is written (forward) / its slot is free (backward)
};

// Forward + backward of one micro-batch: accumulates d(summed token loss)/d(A, B) into
// lora.grads and returns the summed loss over the batch's targets. Dropout masks are the
// CPU's (same keys), so both paths drop the same elements.
double forward_backward(const DeviceModel& model, DeviceLoraState& lora, const Batch& batch, const DropoutKey& key,
                        bool checkpointing, const ForwardOptions& opt, DeviceWorkspace& ws);

// Summed loss over the batch's targets without dropout; `lora` may be null (base model).
double forward_loss(const DeviceModel& model, DeviceLoraState* lora, const Batch& batch, const ForwardOptions& opt,
                    DeviceWorkspace& ws);

// Device bytes the workspace holds for one forward+backward over `tokens` tokens (of which
// at most `tokens` are targets), as forward_backward allocates them, by what they hold; see
// forward.cpp. Each buffer is rounded to the allocator's size class.
struct WorkspaceBytes {
  uint64_t layer_inputs = 0;  // xs: the fp32 layer inputs kept for backward
  uint64_t activations = 0;   // acts: the saved activations of every kept layer
  uint64_t dequant = 0;       // w_scratch: one dequantized weight (quantized bases)
  uint64_t lm_head = 0;       // target rows, their final-norm outputs and gradients, the LM-head workspace
  uint64_t scratch = 0;       // the batch, final norm, backward scratch, attention backward workspace
  uint64_t total() const { return layer_inputs + activations + dequant + lm_head + scratch; }
};
WorkspaceBytes device_workspace_parts(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                                      const ForwardOptions& opt);
uint64_t device_workspace_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                                const ForwardOptions& opt);

}  // namespace lora::cuda
