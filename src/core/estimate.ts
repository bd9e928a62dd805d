// Memory estimate of a fine-tune before it starts: what the runtime will allocate, part by
// part, so the panel can show a breakdown against the device's free memory.
//
// Notation: L layers, H hidden, I intermediate, nh/nkv attention/KV heads, hd head size,
// V vocab, T = micro_batch × seq_len tokens per micro-batch, r LoRA rank, a = bytes of an
// activation element (4 on CPU, where the runtime computes in fp32).
//
// CPU (calibrated against the runtime's measured peak RSS, test/unit/estimate-runtime.test.ts):
//   base linear   = Σ decoder linear weights × 4, or for nf4/fp4 0.5, int8 1, plus the absmax:
//                   4/B per element (fp32 per block of B), or with double quantization
//                   1/B + 4/(256·B) (8-bit absmax, one fp32 scale per 256 blocks)
//   base other    = embeddings, LM head, norms, biases in fp32
//   dequant       = the largest linear weight in fp32 (dequantized one weight at a time)
//   LoRA          = P = Σ_targets L × r × (in + out);  P × (4 master + 4 grad + 8 AdamW m,v)
//                   (SGD: P × 8)
//   activations   = per token and layer the runtime keeps (model/forward.hpp LayerActs):
//                   A = a × (3H + 2 + 2·nh·hd + 2·nkv·hd + nh + 3I + Σ_targets r)
//                       + Σ_targets in × (a + 1) when dropout > 0
//                   Without checkpointing: T × (L × A + (L + 1)·H·a)
//                   With checkpointing:    T × (A + (L + 1)·H·a)
//   backward      = T × a × (4H + 2·nh·hd + 2·nkv·hd + 3I)
//   logits chunk  = c × V × 4 + 2 × c × H × 4, c = min(1024, 16 MiB / (4V)) target tokens
//   overhead      = the process's code, libraries and thread stacks (8 MiB, measured)
//
// CUDA: the runtime's own accounting (cuda::estimate_device in native-runtime/src/cuda/
// engine.cpp, forward.cpp visit_buffers, device_model.cpp device_model_bytes), buffer by
// buffer with the same precisions and the caching allocator's size classes, plus the 0.5 GiB
// the trainer reserves for the CUDA context before comparing with free GPU memory; see
// cudaParts below and docs/estimate.md. test/native/estimate.test.ts checks it against
// `lora-runtime estimate`.
import { ModelInspection, TargetModuleInfo, targetShapes } from './model/inspect';
import { DTYPE_BYTES } from './model/dtype';

export interface EstimateInput {
  /** The CUDA branch also reads architecture (GPT-2, also told by its c_attn module),
   *  tieWordEmbeddings and maxPositionEmbeddings (GPT-2's position table) when given. */
  model: Pick<ModelInspection, 'layers' | 'hidden' | 'intermediate' | 'heads' | 'kvHeads' | 'headDim' | 'vocab' |
    'targets' | 'paramsLinear' | 'paramsOther' | 'dtype'> &
    Partial<Pick<ModelInspection, 'architecture' | 'tieWordEmbeddings' | 'maxPositionEmbeddings'>>;
  lora: { r: number; targets: readonly string[]; dropout: number };
  quant: { type: 'none' | 'nf4' | 'fp4' | 'int8'; doubleQuant: boolean; blockSize: number };
  train: { seqLen: number; microBatch: number; gradCheckpointing: boolean; optimizer: 'adamw' | 'sgd' };
  /** Where it runs: CPU (RAM) or a CUDA GPU (VRAM). */
  device: 'cpu' | 'cuda';
  /** compute.dtype. Neither path's memory depends on it: the CPU computes in fp32 and the
   *  CUDA path in bf16 with fp32 LoRA states whatever is asked. */
  dtype: 'fp32' | 'bf16' | 'fp16';
  /** compute.offloadActivations (CUDA with checkpointing only): the layer inputs wait in
   *  pinned host memory, 2 stay on the device instead of L + 1. */
  offloadActivations?: boolean;
}

export interface EstimatePart {
  key: 'base_linear' | 'base_other' | 'dequant' | 'lora' | 'activations' | 'backward' | 'logits' | 'overhead';
  label: string;
  bytes: number;
  detail: string;
}

export interface MemoryEstimate {
  parts: EstimatePart[];
  totalBytes: number;
  trainableParams: number;
  totalParams: number;
  /** Bytes of the base weights before and after quantization (linear + other). */
  baseBytesUnquantized: number;
  baseBytesQuantized: number;
  /** Activation bytes with and without checkpointing, whichever is chosen (on CUDA the saved
   *  activations and the kept layer inputs, offload applied to the checkpointed figure). */
  activationsWithCheckpointing: number;
  activationsWithoutCheckpointing: number;
}

export const CPU_PROCESS_BYTES = 8 * 1024 * 1024;
/** What the trainer keeps free for the CUDA context on top of its estimate (trainer.cpp
 *  kContextReserve): the context is not allocated through the runtime's allocator. */
export const CUDA_CONTEXT_RESERVE_BYTES = 512 * 1024 * 1024;
/** cuBLASLt's workspace (native-runtime/src/cuda/gemm.cpp kWorkspaceBytes). */
export const CUDA_GEMM_WORKSPACE_BYTES = 32 * 1024 * 1024;
/** Target rows per LM-head + cross-entropy chunk on CUDA (CudaTrainOptions::lm_head_chunk). */
export const CUDA_LM_HEAD_CHUNK = 1024;

/** Bytes per weight element under a quantization, including the absmax storage. */
export function quantBytesPerElement(type: EstimateInput['quant']['type'], doubleQuant: boolean, blockSize: number, unquantized: number): number {
  if (type === 'none') return unquantized;
  const payload = type === 'int8' ? 1 : 0.5;
  const absmax = doubleQuant ? 1 / blockSize + 4 / (256 * blockSize) : 4 / blockSize;
  return payload + absmax;
}

export function logitsChunkTokens(vocab: number, tokens: number): number {
  return Math.max(1, Math.min(1024, Math.floor((16 << 20) / (vocab * 4)), tokens));
}

/** Whether the runtime's CUDA kernels take this model's shape: the attention kernels need a
 *  head size that is a multiple of 8 up to 256 (the runtime's cuda::supports_model);
 *  `compute.device: auto` trains any other model on the CPU. */
export function gpuCanTrain(model: Pick<ModelInspection, 'headDim'>): boolean {
  return model.headDim > 0 && model.headDim % 8 === 0 && model.headDim <= 256;
}

export function estimateMemory(inp: EstimateInput): MemoryEstimate {
  return inp.device === 'cuda' ? estimateCuda(inp) : estimateCpu(inp);
}

// GPT-2's c_proj selects two modules per layer: count each (targetShapes).
const shapesOf = (t: TargetModuleInfo) => targetShapes(t);
const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

function loraParams(inp: EstimateInput): number {
  const chosen = inp.model.targets.filter((t) => inp.lora.targets.includes(t.name));
  return chosen.reduce((s, t) => s + shapesOf(t).reduce((u, x) => u + t.layers * inp.lora.r * (x.inFeatures + x.outFeatures), 0), 0);
}

function estimateCpu(inp: EstimateInput): MemoryEstimate {
  const m = inp.model;
  const a = 4;
  const T = inp.train.microBatch * inp.train.seqLen;
  const L = m.layers, H = m.hidden, I = m.intermediate;
  const qDim = m.heads * m.headDim, kvDim = m.kvHeads * m.headDim;
  const chosen = m.targets.filter((t) => inp.lora.targets.includes(t.name));

  const linearUnq = 4;
  const perElem = quantBytesPerElement(inp.quant.type, inp.quant.doubleQuant, inp.quant.blockSize, linearUnq);
  const baseLinear = Math.ceil(m.paramsLinear * perElem);
  const otherBytes = 4;
  const baseOther = m.paramsOther * otherBytes;
  const largest = m.targets.reduce((mx, t) => Math.max(mx, ...shapesOf(t).map((s) => s.inFeatures * s.outFeatures)), 0);
  const dequant = largest * 4;

  const P = loraParams(inp);
  const loraBytes = P * (inp.train.optimizer === 'adamw' ? 16 : 8);

  const loraActs = chosen.reduce((s, t) => s + shapesOf(t).length, 0) * inp.lora.r;
  const dropoutCopies = inp.lora.dropout > 0
    ? chosen.reduce((s, t) => s + shapesOf(t).reduce((u, x) => u + x.inFeatures, 0), 0) * (a + 1) : 0;
  const perTokenLayer = a * (3 * H + 2 + 2 * qDim + 2 * kvDim + m.heads + 3 * I + loraActs) + dropoutCopies;
  const layerInputs = (L + 1) * H * a;
  const actsNoCkpt = T * (L * perTokenLayer + layerInputs);
  const actsCkpt = T * (perTokenLayer + layerInputs);
  const activations = inp.train.gradCheckpointing ? actsCkpt : actsNoCkpt;
  const backward = T * a * (4 * H + 2 * qDim + 2 * kvDim + 3 * I);
  const c = logitsChunkTokens(m.vocab, T);
  const logits = c * m.vocab * 4 + 2 * c * H * 4;
  const overhead = CPU_PROCESS_BYTES;

  const parts: EstimatePart[] = [
    { key: 'base_linear', label: 'Base weights (linear layers)', bytes: baseLinear,
      detail: `${m.paramsLinear.toLocaleString('en-US')} params × ${perElem.toFixed(4)} B (${inp.quant.type}${inp.quant.type !== 'none' && inp.quant.doubleQuant ? ' + double quant' : ''})` },
    { key: 'base_other', label: 'Base weights (embeddings, head, norms)', bytes: baseOther,
      detail: `${m.paramsOther.toLocaleString('en-US')} params × ${otherBytes} B` },
    { key: 'dequant', label: 'Dequantization scratch', bytes: dequant, detail: `largest linear weight ${largest.toLocaleString('en-US')} elements` },
    { key: 'lora', label: `LoRA weights, gradients, ${inp.train.optimizer === 'adamw' ? 'AdamW states' : 'SGD'}`, bytes: loraBytes,
      detail: `${P.toLocaleString('en-US')} params × ${inp.train.optimizer === 'adamw' ? 16 : 8} B` },
    { key: 'activations', label: `Activations (${inp.train.gradCheckpointing ? 'with' : 'without'} checkpointing)`, bytes: activations,
      detail: `${T} tokens × ${L} layers; the other choice would need ${mib(inp.train.gradCheckpointing ? actsNoCkpt : actsCkpt)}` },
    { key: 'backward', label: 'Backward scratch', bytes: backward, detail: `${T} tokens, one layer` },
    { key: 'logits', label: 'Logits chunk', bytes: logits, detail: `${c} tokens × vocab ${m.vocab} × fp32` },
    { key: 'overhead', label: 'Process overhead', bytes: overhead, detail: 'runtime binary, thread stacks' },
  ];
  const total = parts.reduce((s, p) => s + p.bytes, 0);
  return {
    parts,
    totalBytes: total,
    trainableParams: P,
    totalParams: m.paramsLinear + m.paramsOther,
    baseBytesUnquantized: m.paramsLinear * linearUnq + baseOther,
    baseBytesQuantized: baseLinear + baseOther,
    activationsWithCheckpointing: actsCkpt,
    activationsWithoutCheckpointing: actsNoCkpt,
  };
}

/** The runtime's caching allocator hands out size classes: 512 B steps below 1 MiB, 2 MiB
 *  steps above (native-runtime/src/cuda/memory.cpp). The workspace is counted rounded. */
export function allocatorRounded(bytes: number): number {
  if (bytes <= 0) return 0;
  const step = bytes < 2 ** 20 ? 512 : 2 * 2 ** 20;
  return Math.ceil(bytes / step) * step;
}

/** Device bytes of one decoder linear weight [out, in] as the runtime's allocator counts
 *  them: bf16 when unquantized; else the codes (2 per byte for 4-bit) and an fp32 absmax per
 *  block of B, or with double quantization a uint8 absmax per block and an fp32 scale per 256
 *  blocks (upload_quantized's arrays), each rounded to its size class. */
export function deviceLinearBytes(numel: number, q: EstimateInput['quant']): number {
  const R = allocatorRounded;
  if (q.type === 'none') return R(numel * 2);
  const codes = q.type === 'int8' ? numel : Math.ceil(numel / 2);
  const blocks = Math.ceil(numel / q.blockSize);
  return R(codes) + (q.doubleQuant ? R(blocks) + R(Math.ceil(blocks / 256) * 4) : R(blocks * 4));
}

/** The fp32 vectors of the base on the device (norms, biases, RoPE's inverse frequencies),
 *  each rounded to its size class. The inspection gives their total, not their list: the list
 *  is rebuilt from the architecture (GPT-2: LayerNorm weights and biases and a bias on every
 *  linear; the Llama family: two RMSNorm weights per layer, then no biases, q/k/v biases
 *  (Qwen2) or q/k/v/o biases (attention_bias)); null for a total that matches none of these. */
function deviceVectorBytes(m: EstimateInput['model'], gpt2: boolean, vectors: number): number | null {
  const R = allocatorRounded;
  const L = m.layers, C = m.hidden, I = m.intermediate, Dq = m.heads * m.headDim, Dkv = m.kvHeads * m.headDim;
  const sum = (xs: number[]) => xs.reduce((s, x) => s + x, 0);
  if (gpt2) {
    const perLayer = [C, C, C, C, 3 * C, C, I, C];
    return vectors === L * sum(perLayer) + 2 * C ? L * sum(perLayer.map((x) => R(x * 4))) + 2 * R(C * 4) : null;
  }
  const invFreq = R(Math.floor(m.headDim / 2) * 4);
  const norms = (2 * L + 1) * R(C * 4);
  const biases = vectors - (2 * L + 1) * C;
  for (const list of [[], [Dq, Dkv, Dkv], [Dq, Dkv, Dkv, C]]) {
    if (biases === L * sum(list)) return norms + invFreq + L * sum(list.map((x) => R(x * 4)));
  }
  return null;
}

/** The CUDA workspace of one forward + backward over T tokens, every token a target (the
 *  worst case the runtime sizes for), buffer by buffer as visit_buffers in
 *  native-runtime/src/cuda/forward.cpp allocates it. */
function cudaWorkspace(inp: EstimateInput, T: number, checkpointing: boolean, gpt2: boolean, quantized: boolean) {
  const m = inp.model;
  const N = T, n = T, C = m.hidden, I = m.intermediate, L = m.layers, Hq = m.heads, Hkv = m.kvHeads, D = m.headDim;
  const Dq = Hq * D, Dkv = Hkv * D, r = inp.lora.r;
  const R = allocatorRounded;
  // One entry per module the adapter targets (GPT-2's c_proj is two).
  const modules = m.targets.filter((t) => inp.lora.targets.includes(t.name)).flatMap((t) => shapesOf(t));
  const withLora = modules.length > 0 && r > 0;
  const dropout = inp.lora.dropout > 0;
  const offload = checkpointing && inp.offloadActivations === true && L > 1;

  const layerInputs = (offload ? 2 : L + 1) * R(N * C * 4);
  let act = R(N * C * 2) + R(N * Dq * 2) + 2 * R(N * Dkv * 2) + R(N * Dq * 2) + R(N * Hq * 4) + R(N * C * 4) +
    R(N * C * 2) + 2 * R(N * 4) + (gpt2 ? 2 * R(N * 4) : R(N * I * 2)) + 2 * R(N * I * 2);
  let maxIn = 0;
  if (withLora) {
    for (const x of modules) {
      act += R(N * r * 2) + (dropout ? R(N * x.inFeatures * 2) : 0);
      maxIn = Math.max(maxIn, x.inFeatures);
    }
  }
  const activations = (checkpointing ? 1 : L) * act;
  const largest = m.targets.reduce((mx, t) => Math.max(mx, ...shapesOf(t).map((s) => s.inFeatures * s.outFeatures)), 0);
  const dequant = quantized ? R(largest * 2) : 0;

  const align = (b: number) => Math.ceil(b / 256) * 256;
  const attnWs = align(N * Hq * D * 4) + align(N * Hq * 4) + (Hq !== Hkv ? 2 * align(N * Hkv * D * 4) : 0);
  const wide = Math.max(I, Dq);
  const scratch = 3 * R(N * 4) /* tokens, pos, doc_start */ + R(N * C * 2) + R(N * 4) /* final norm */ +
    (gpt2 ? R(N * 4) + R(N * 3 * C * 2) : 0) +
    (checkpointing ? R(N * C * 4) : 0) /* recomputed layer's output */ +
    2 * R(N * C * 4) + R(N * wide * 4) + R(N * C * 2) + R(N * wide * 2) + R(N * I * 2) + (gpt2 ? 0 : R(N * I * 2)) +
    R(N * Dq * 2) + 2 * R(N * Dkv * 2) + (gpt2 ? R(N * 3 * C * 2) : 0) +
    (withLora ? R(N * r * 2) + (dropout ? R(N * maxIn * 4) : 0) : 0) + R(attnWs);
  // Target ids and rows, their final-norm outputs and gradients, and the LM-head workspace:
  // min(chunk, n) rows of fp32 logits over V padded to 8, a loss per row, one fp64 total.
  const rows = Math.max(1, Math.min(n, CUDA_LM_HEAD_CHUNK));
  const lmHead = R(n * 4) + R(n * 8) + R(n * C * 2) + R(n * C * 4) +
    R(rows * Math.ceil(m.vocab / 8) * 8 * 4) + R(rows * 4) + R(8);
  return { layerInputs, activations, dequant, scratch, lmHead, offload };
}

function estimateCuda(inp: EstimateInput): MemoryEstimate {
  const m = inp.model;
  const T = inp.train.microBatch * inp.train.seqLen;
  const L = m.layers, C = m.hidden;
  // GPT-2 (the inspection's architecture may be empty for a config that only names model_type).
  const gpt2 = m.architecture === 'GPT2LMHeadModel' || m.targets.some((t) => t.name === 'c_attn');
  const quantized = inp.quant.type !== 'none';

  // Base: every tensor as uploaded, at the allocator's size classes (device_model_allocated_bytes).
  const baseLinear = m.targets.reduce((s, t) => s + t.layers * shapesOf(t).reduce((u, x) => u + deviceLinearBytes(x.inFeatures * x.outFeatures, inp.quant), 0), 0);
  // Embeddings, the LM head unless tied, GPT-2's position table: bf16. Norms and biases
  // (everything else that is not a decoder linear) and RoPE's inverse frequencies: fp32.
  const tied = m.tieWordEmbeddings ?? gpt2;
  const R = allocatorRounded;
  const positions = gpt2 ? (m.maxPositionEmbeddings ?? 1024) : 0;
  const tables = m.vocab * C * (tied ? 1 : 2) + positions * C;
  let vectors = Math.max(0, m.paramsOther - tables);
  let vectorBytes = deviceVectorBytes(m, gpt2, vectors);
  // A tied checkpoint may still store lm_head.weight, which the runtime does not load.
  const untiedHead = tied && vectorBytes === null ? deviceVectorBytes(m, gpt2, vectors - m.vocab * C) : null;
  if (untiedHead !== null) {
    vectors -= m.vocab * C;
    vectorBytes = untiedHead;
  }
  // An unrecognised list: the total, unrounded (plus RoPE's frequencies).
  vectorBytes ??= vectors * 4 + (gpt2 ? 0 : Math.floor(m.headDim / 2) * 4);
  const baseOther = R(m.vocab * C * 2) * (tied ? 1 : 2) + R(positions * C * 2) + vectorBytes;

  // Adapter: fp32 weights, gradients and both AdamW moments (allocated for SGD too), and the
  // bf16 copy the GEMMs read (device_lora_allocated_bytes).
  const P = loraParams(inp);
  const loraBytes = 4 * R(P * 4) + R(P * 2);

  const ws = cudaWorkspace(inp, T, inp.train.gradCheckpointing, gpt2, quantized);
  const wsCkpt = cudaWorkspace(inp, T, true, gpt2, quantized);
  const wsFull = cudaWorkspace(inp, T, false, gpt2, quantized);
  const activations = ws.layerInputs + ws.activations;
  const overhead = CUDA_GEMM_WORKSPACE_BYTES + CUDA_CONTEXT_RESERVE_BYTES;
  const ckpt = inp.train.gradCheckpointing;
  const actLabel = ckpt ? (ws.offload ? 'with checkpointing, inputs offloaded' : 'with checkpointing') : 'without checkpointing';
  const kept = ckpt ? (ws.offload ? '1 layer recomputed, 2 layer inputs on the GPU' : `1 layer recomputed, ${L + 1} layer inputs`) : `${L} layers, ${L + 1} layer inputs`;

  const parts: EstimatePart[] = [
    { key: 'base_linear', label: 'Base weights (linear layers)', bytes: baseLinear,
      detail: `${m.paramsLinear.toLocaleString('en-US')} params, ${quantized ? `${inp.quant.type}${inp.quant.doubleQuant ? ' + double quant' : ''} codes and scales` : 'bf16'}` },
    { key: 'base_other', label: 'Base weights (embeddings, head, norms)', bytes: baseOther,
      detail: `${tables.toLocaleString('en-US')} embedding/head params × 2 B, ${vectors.toLocaleString('en-US')} norm/bias params × 4 B` },
    { key: 'dequant', label: 'Dequantization scratch', bytes: ws.dequant, detail: quantized ? 'the largest linear weight in bf16' : 'none: the base is bf16' },
    { key: 'lora', label: 'LoRA weights, gradients, optimizer states', bytes: loraBytes,
      detail: `${P.toLocaleString('en-US')} params × 18 B (fp32 weights, gradients, 2 moments; bf16 copy)` },
    { key: 'activations', label: `Activations (${actLabel})`, bytes: activations,
      detail: `${T} tokens, ${kept}; ${ckpt ? `without checkpointing ${mib(wsFull.layerInputs + wsFull.activations)}` : `with checkpointing ${mib(wsCkpt.layerInputs + wsCkpt.activations)}`}` },
    { key: 'backward', label: 'Backward scratch', bytes: ws.scratch, detail: `${T} tokens, one layer's gradients, attention workspace` },
    { key: 'logits', label: 'LM head chunk', bytes: ws.lmHead, detail: `${Math.min(T, CUDA_LM_HEAD_CHUNK)} tokens × vocab ${m.vocab} × fp32` },
    { key: 'overhead', label: 'CUDA context and GEMM workspace', bytes: overhead,
      detail: `${mib(CUDA_CONTEXT_RESERVE_BYTES)} the runtime keeps free for the context, ${mib(CUDA_GEMM_WORKSPACE_BYTES)} cuBLASLt workspace` },
  ];
  const total = parts.reduce((s, p) => s + p.bytes, 0);
  const baseLinearUnq = m.targets.reduce((s, t) => s + t.layers * shapesOf(t).reduce((u, x) => u + R(x.inFeatures * x.outFeatures * 2), 0), 0);
  return {
    parts,
    totalBytes: total,
    trainableParams: P,
    totalParams: m.paramsLinear + m.paramsOther,
    baseBytesUnquantized: baseLinearUnq + baseOther,
    baseBytesQuantized: baseLinear + baseOther,
    activationsWithCheckpointing: wsCkpt.layerInputs + wsCkpt.activations,
    activationsWithoutCheckpointing: wsFull.layerInputs + wsFull.activations,
  };
}

/** Training FLOPs per token: forward (2 per weight) and backward through the frozen base
 *  (2 per weight, input gradients only), LoRA forward/backward with weight gradients
 *  (6 per LoRA parameter), attention scores and values (forward 4·T·hd·nh per layer, backward 2×),
 *  and the LM head (2·H·V forward + 2·H·V input gradient, over target tokens). */
export function flopsPerToken(m: EstimateInput['model'], loraParams: number, seqLen: number): number {
  const linear = m.paramsLinear;
  const attn = 3 * 4 * seqLen * m.headDim * m.heads * m.layers * 0.5; // causal: half the scores
  const head = 4 * m.hidden * m.vocab;
  return 4 * linear + 6 * loraParams + attn + head;
}
