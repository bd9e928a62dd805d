// Memory estimate of a fine-tune before it starts: what the runtime will allocate, part by
// part, so the panel can show a breakdown against the device's free memory.
//
// Notation: L layers, H hidden, I intermediate, nh/nkv attention/KV heads, hd head size,
// V vocab, T = micro_batch × seq_len tokens per micro-batch, r LoRA rank, a = bytes of an
// activation element (4 on CPU, where the runtime computes in fp32; 2 for bf16/fp16 on CUDA).
//
//   base linear   = Σ decoder linear weights × bytes/element of the quantization:
//                   none: 4 (CPU) or a (CUDA);  nf4/fp4: 0.5;  int8: 1;  plus the absmax:
//                   4/B per element (fp32 per block of B), or with double quantization
//                   1/B + 4/(256·B) (8-bit absmax, one fp32 scale per 256 blocks)
//   base other    = embeddings, LM head, norms, biases at the checkpoint's dtype (fp32 on CPU)
//   dequant       = the largest linear weight at compute precision: the runtime dequantizes
//                   one weight at a time into a scratch matrix (always on CPU; CUDA when quantized)
//   LoRA          = P = Σ_targets L × r × (in + out);  P × (4 master + 4 grad + 8 AdamW m,v)
//                   (SGD: P × 8)
//   activations   = per token and layer the runtime keeps (model/forward.hpp LayerActs):
//                   A = a × (3H + 2 + 2·nh·hd + 2·nkv·hd + nh + 3I + Σ_targets r)
//                       + Σ_targets in × (a + 1) when dropout > 0 (the dropped-out LoRA input
//                         and its 1-byte mask; without dropout the layer input is reused)
//                   plus every layer's input (L + 1) × H × a.
//                   Without checkpointing: T × (L × A + (L + 1)·H·a)
//                   With checkpointing:    T × (A + (L + 1)·H·a)   (one layer recomputed at a time)
//   backward      = gradient scratch for one layer: T × a × (4H + 2·nh·hd + 2·nkv·hd + 3I)
//   logits chunk  = the LM head runs over chunks of c = min(1024, 16 MiB / (4V)) target tokens:
//                   c × V × 4 (logits, their gradient in place) + 2 × c × H × 4
//   overhead      = CUDA context + cuBLAS workspace allowance (600 MiB), or the process's
//                   code, libraries and thread stacks on CPU (8 MiB, measured)
//   slack         = 5% of the above on CUDA for allocator fragmentation
// test/unit/estimate-runtime.test.ts checks it against the runtime's measured peak RSS on CPU;
// see docs/estimate.md.
import { ModelInspection, TargetModuleInfo, targetShapes } from './model/inspect';
import { DTYPE_BYTES } from './model/dtype';

export interface EstimateInput {
  model: Pick<ModelInspection, 'layers' | 'hidden' | 'intermediate' | 'heads' | 'kvHeads' | 'headDim' | 'vocab' |
    'targets' | 'paramsLinear' | 'paramsOther' | 'dtype'>;
  lora: { r: number; targets: readonly string[]; dropout: number };
  quant: { type: 'none' | 'nf4' | 'fp4' | 'int8'; doubleQuant: boolean; blockSize: number };
  train: { seqLen: number; microBatch: number; gradCheckpointing: boolean; optimizer: 'adamw' | 'sgd' };
  /** Where it runs: CPU (RAM) or a CUDA GPU (VRAM). */
  device: 'cpu' | 'cuda';
  /** Compute dtype on CUDA (the CPU path computes in fp32). */
  dtype: 'fp32' | 'bf16' | 'fp16';
}

export interface EstimatePart {
  key: 'base_linear' | 'base_other' | 'dequant' | 'lora' | 'activations' | 'backward' | 'logits' | 'overhead' | 'slack';
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
  /** Activation bytes with and without checkpointing, whichever is chosen. */
  activationsWithCheckpointing: number;
  activationsWithoutCheckpointing: number;
}

export const CUDA_CONTEXT_BYTES = 600 * 1024 * 1024;
export const CPU_PROCESS_BYTES = 8 * 1024 * 1024;
export const CUDA_SLACK_FRACTION = 0.05;

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

export function estimateMemory(inp: EstimateInput): MemoryEstimate {
  const m = inp.model;
  const cpu = inp.device === 'cpu';
  const a = cpu || inp.dtype === 'fp32' ? 4 : 2;
  const T = inp.train.microBatch * inp.train.seqLen;
  const L = m.layers, H = m.hidden, I = m.intermediate;
  const qDim = m.heads * m.headDim, kvDim = m.kvHeads * m.headDim;
  const chosen = m.targets.filter((t) => inp.lora.targets.includes(t.name));

  const linearUnq = cpu ? 4 : a;
  const perElem = quantBytesPerElement(inp.quant.type, inp.quant.doubleQuant, inp.quant.blockSize, linearUnq);
  const baseLinear = Math.ceil(m.paramsLinear * perElem);
  const otherBytes = cpu ? 4 : DTYPE_BYTES[m.dtype] ?? 2;
  const baseOther = m.paramsOther * otherBytes;
  // GPT-2's c_proj selects two modules per layer: count each (targetShapes).
  const shapesOf = (t: TargetModuleInfo) => targetShapes(t);
  const largest = m.targets.reduce((mx, t) => Math.max(mx, ...shapesOf(t).map((s) => s.inFeatures * s.outFeatures)), 0);
  const dequant = cpu || inp.quant.type !== 'none' ? largest * (cpu ? 4 : a) : 0;

  const P = chosen.reduce((s, t) => s + shapesOf(t).reduce((u, x) => u + t.layers * inp.lora.r * (x.inFeatures + x.outFeatures), 0), 0);
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
  const overhead = cpu ? CPU_PROCESS_BYTES : CUDA_CONTEXT_BYTES;

  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
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
    { key: 'overhead', label: cpu ? 'Process overhead' : 'CUDA context and workspace', bytes: overhead, detail: cpu ? 'runtime binary, thread stacks' : 'allowance' },
  ];
  let total = parts.reduce((s, p) => s + p.bytes, 0);
  if (!cpu) {
    const slack = Math.ceil((total - overhead) * CUDA_SLACK_FRACTION);
    parts.push({ key: 'slack', label: 'Allocator slack', bytes: slack, detail: `${CUDA_SLACK_FRACTION * 100}% for fragmentation` });
    total += slack;
  }
  const unqBytes = m.paramsLinear * linearUnq + baseOther;
  return {
    parts,
    totalBytes: total,
    trainableParams: P,
    totalParams: m.paramsLinear + m.paramsOther,
    baseBytesUnquantized: unqBytes,
    baseBytesQuantized: baseLinear + baseOther,
    activationsWithCheckpointing: actsCkpt,
    activationsWithoutCheckpointing: actsNoCkpt,
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
