#pragma once
// Forward and backward of the decoder (Llama family or GPT-2) over a micro-batch of packed rows.
// Frozen weights are dequantized into one scratch matrix right before each use (forward
// and again in backward), so at most one layer-sized fp32 weight exists at a time.
// The LM head and cross-entropy run over chunks of the target tokens only: the full
// (tokens x vocab) logits are never held, and tokens that are not targets cost nothing.
#include <cstdint>
#include <vector>

#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora {

// rows packed rows of seq_len tokens, flattened row-major.
struct Batch {
  int64_t rows = 0, seq_len = 0;
  std::vector<int32_t> tokens;     // input ids
  std::vector<int32_t> targets;    // next-token target of each position, -1 = none
  std::vector<int32_t> pos;        // position (rope, or GPT-2's learned table), restarting at 0 in every document
  std::vector<int32_t> doc_start;  // index within the row of the first token of the document
  int64_t tokens_count() const { return rows * seq_len; }
  int64_t target_count() const;
};

// Identifies the dropout masks of one micro-batch: each module's mask is the counter-based
// stream keyed by (seed, step, micro_batch, layer, module), so recomputation under
// activation checkpointing and a resumed run regenerate exactly the same masks.
struct DropoutKey {
  uint64_t seed = 0, step = 0, micro = 0;
};

// GPT-2 reuses the fields: xn/xn2 are the LayerNorm outputs (with mean1/mean2), g is the
// c_fc output and hs = gelu(g).
struct LayerActs {
  std::vector<float> xn, rstd1, q, k, v, att, lse, x1, xn2, rstd2, g, u, hs;
  std::vector<float> mean1, mean2;
  std::vector<float> lora_h[kNumModules], lora_u[kNumModules];
  std::vector<uint8_t> keep[kNumModules];
};

// Buffers reused across calls (allocation happens on the first call with a given size).
struct Workspace {
  std::vector<std::vector<float>> xs;   // input of every layer, plus the last layer's output
  std::vector<LayerActs> acts;          // one per layer, or a single one when recomputing
  std::vector<float> w;                 // the dequantized weight in use
  std::vector<float> xf, rstdf, meanf;  // final norm output (meanf: GPT-2's LayerNorm)
  std::vector<float> qkv, dqkv;         // GPT-2's fused c_attn output and its gradient
  std::vector<float> recompute_out;
  std::vector<float> dx, dx_next, dx1, dxn, datt, dq, dk, dv, dg, du, dhs, dxf;
  std::vector<float> head_in, head_logits, head_dx;
  std::vector<int32_t> head_targets;
  std::vector<int64_t> head_index;
};

// Forward + backward. Accumulates d(summed token loss)/d(A, B) into lora.grads (the caller
// divides by the step's target count) and returns the summed loss over the batch's targets.
// With `checkpointing`, only each layer's input is kept and the layer is recomputed in
// backward; the gradients are bit-identical to the non-checkpointed path.
double forward_backward(const Model& model, LoraState& lora, const Batch& batch, const DropoutKey& key,
                        bool checkpointing, Workspace& ws);

// Summed loss over the batch's targets, without dropout; `lora` may be null (base model).
double forward_loss(const Model& model, const LoraState* lora, const Batch& batch, Workspace& ws);

// The final normalised hidden states (tokens x hidden), without dropout: for tests that
// compare representations (packing must not change a document's activations).
void forward_hidden(const Model& model, const LoraState* lora, const Batch& batch, Workspace& ws,
                    std::vector<float>& out);

// Bytes of the Workspace for one forward+backward over `tokens` tokens (activations, the
// dequantized weight, the LM-head chunk), to refuse a configuration that cannot fit before
// spending minutes loading and training.
uint64_t workspace_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing);

}  // namespace lora
