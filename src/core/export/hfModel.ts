// What the exporters need from an HF Llama-family folder (base or merged): the resolved
// hyperparameters from config.json, fp32 tensor reads by HF name, and the RoPE inverse
// frequencies exactly as transformers computes them (incl. llama3 and linear scaling).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ModelWeights, SafetensorsError, SafetensorsHeader, numel, readModelWeights, readTensorF32 } from '../model/safetensors';
import type { CancellationToken } from '../runtime/process';

export class ExportError extends Error {
  constructor(readonly file: string, readonly field: string | undefined, readonly detail: string, readonly hint?: string) {
    super(`${file}${field ? ` (${field})` : ''}: ${detail}${hint ? `. ${hint}` : ''}`);
    this.name = 'ExportError';
  }
}

/** The exporters call this between tensors (and ONNX layers), so a cancel takes effect within one
 *  tensor's work and the atomic writers remove their temporary files on the way out. exportAdapter
 *  reports it to its callers as a cancelled MergeError, like a cancelled merge. */
export function throwIfCancelled(token: CancellationToken | undefined, file: string): void {
  if (token?.isCancellationRequested) throw new ExportError(file, undefined, 'export cancelled');
}

export type HfArch = 'llama' | 'mistral' | 'qwen2';

export interface RopeScaling {
  type: 'llama3' | 'linear';
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositions?: number;
}

export interface HfModelConfig {
  arch: HfArch;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  tie: boolean;
  /** q/k/v carry biases (Qwen2). */
  qkvBias: boolean;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositions: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  raw: Record<string, unknown>;
}

const ARCHS: Record<string, HfArch> = { LlamaForCausalLM: 'llama', MistralForCausalLM: 'mistral', Qwen2ForCausalLM: 'qwen2' };

export function readJson(file: string, hint: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new ExportError(file, undefined, 'file not found', hint);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ExportError(file, undefined, `not valid JSON (${(e as Error).message})`, hint);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ExportError(file, undefined, 'is not a JSON object', hint);
  return v as Record<string, unknown>;
}

export function readHfConfig(modelDir: string): HfModelConfig {
  const file = path.join(modelDir, 'config.json');
  const cfg = readJson(file, 'Pick a Hugging Face model folder (config.json next to the *.safetensors files)');
  const archName = Array.isArray(cfg.architectures) ? String(cfg.architectures[0]) : '';
  const arch = ARCHS[archName];
  if (!arch) {
    throw new ExportError(file, 'architectures', `${JSON.stringify(archName)} is not supported for export`,
      `Supported: ${Object.keys(ARCHS).join(', ')}`);
  }
  const int = (key: string, fallback?: number): number => {
    const v = cfg[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ExportError(file, key, 'is missing', 'Restore config.json from the model repository');
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ExportError(file, key, `must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = cfg[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !(v > 0)) throw new ExportError(file, key, `must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const hidden = int('hidden_size');
  const heads = int('num_attention_heads');
  const kvHeads = int('num_key_value_heads', heads);
  if (heads % kvHeads !== 0) throw new ExportError(file, 'num_key_value_heads', `${kvHeads} does not divide num_attention_heads ${heads}`);
  const headDim = int('head_dim', Math.floor(hidden / heads));
  if (headDim % 2 !== 0) throw new ExportError(file, 'head_dim', `must be even for RoPE, got ${headDim}`);
  const firstId = (v: unknown): number | null => {
    if (typeof v === 'number' && Number.isInteger(v)) return v;
    if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
    return null;
  };
  return {
    arch,
    hidden,
    layers: int('num_hidden_layers'),
    heads,
    kvHeads,
    headDim,
    intermediate: int('intermediate_size'),
    vocab: int('vocab_size'),
    tie: cfg.tie_word_embeddings === true,
    qkvBias: arch === 'qwen2' || cfg.attention_bias === true,
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling: parseRopeScaling(cfg.rope_scaling, file),
    maxPositions: int('max_position_embeddings', 2048),
    bosTokenId: firstId(cfg.bos_token_id),
    eosTokenId: firstId(cfg.eos_token_id),
    raw: cfg,
  };
}

function parseRopeScaling(v: unknown, file: string): RopeScaling | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw new ExportError(file, 'rope_scaling', 'must be an object or null');
  const r = v as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const factor = r.factor;
  if (typeof factor !== 'number' || !(factor > 0)) throw new ExportError(file, 'rope_scaling.factor', `must be a positive number, got ${JSON.stringify(factor)}`);
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3') {
    const need = (k: string): number => {
      const x = r[k];
      if (typeof x !== 'number' || !(x > 0)) throw new ExportError(file, `rope_scaling.${k}`, `must be a positive number, got ${JSON.stringify(x)}`);
      return x;
    };
    return {
      type: 'llama3', factor,
      lowFreqFactor: need('low_freq_factor'),
      highFreqFactor: need('high_freq_factor'),
      originalMaxPositions: need('original_max_position_embeddings'),
    };
  }
  if (type === 'default') return null;
  throw new ExportError(file, 'rope_scaling.rope_type', `${JSON.stringify(type)} is not supported for export`, 'Supported: llama3, linear');
}

/** The unscaled inverse frequencies, in fp32 like transformers' `_compute_default_rope_parameters`. */
export function baseInvFreq(cfg: Pick<HfModelConfig, 'headDim' | 'ropeTheta'>): Float32Array {
  const half = cfg.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = 1 / Math.fround(Math.pow(cfg.ropeTheta, Math.fround((2 * i) / cfg.headDim)));
  return out;
}

/** Per-frequency divisors that scaling applies (inv_freq / factor), as llama.cpp's rope_freqs
 *  tensor stores them for llama3 and as transformers' llama3/linear rope init computes them. */
export function ropeFreqFactors(cfg: Pick<HfModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float32Array {
  const inv = baseInvFreq(cfg);
  const out = new Float32Array(inv.length).fill(1);
  const s = cfg.ropeScaling;
  if (!s) return out;
  if (s.type === 'linear') return out.fill(s.factor);
  const lowWavelen = s.originalMaxPositions! / s.lowFreqFactor!;
  const highWavelen = s.originalMaxPositions! / s.highFreqFactor!;
  for (let i = 0; i < inv.length; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = s.factor;
    else {
      const smooth = (s.originalMaxPositions! / wavelen - s.lowFreqFactor!) / (s.highFreqFactor! - s.lowFreqFactor!);
      out[i] = 1 / ((1 - smooth) / s.factor + smooth);
    }
  }
  return out;
}

/** inv_freq after scaling: what multiplies position ids in the rotary embedding. */
export function scaledInvFreq(cfg: Pick<HfModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float32Array {
  const inv = baseInvFreq(cfg);
  const f = ropeFreqFactors(cfg);
  return inv.map((x, i) => x / f[i]);
}

export interface HfModel {
  dir: string;
  config: HfModelConfig;
  weights: ModelWeights;
  has(name: string): boolean;
  shape(name: string): number[];
  /** Reads a tensor as fp32 and checks its shape. */
  read(name: string, shape: number[]): Float32Array;
}

export function openHfModel(modelDir: string): HfModel {
  const dir = path.resolve(modelDir);
  const config = readHfConfig(dir);
  let weights: ModelWeights;
  try {
    weights = readModelWeights(dir);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new ExportError(e.file, e.field, e.detail, e.hint);
    throw e;
  }
  const headers = new Map<string, SafetensorsHeader>(weights.files.map((h) => [h.file, h]));
  const entry = (name: string) => {
    const t = weights.tensors.get(name);
    if (!t) throw new ExportError(dir, name, 'tensor is missing from the model weights', 'The folder is not a complete HF Llama-family checkpoint');
    return t;
  };
  return {
    dir, config, weights,
    has: (name) => weights.tensors.has(name),
    shape: (name) => entry(name).shape,
    read(name, shape) {
      const t = entry(name);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new ExportError(t.file, name, `shape [${t.shape.join(', ')}] does not match config.json's [${shape.join(', ')}]`,
          'config.json and the weights disagree');
      }
      if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
        throw new ExportError(t.file, name, `dtype ${t.dtype} cannot be exported`, 'Export needs F32, BF16 or F16 weights (merge a quantized model with lora-runtime merge first)');
      }
      const v = readTensorF32(headers.get(t.file)!, name);
      if (v.length !== numel(shape)) throw new ExportError(t.file, name, 'tensor data size does not match its shape');
      return v;
    },
  };
}

/** llama.cpp's Q/K row order: HF stores each head's rotary pairs as two halves (rotate_half);
 *  GGUF llama interleaves them, so row (h, j, i) of shape (heads, 2, d/2) moves to (h, i, j).
 *  Matches convert_hf_to_gguf.py's LlamaModel.permute. Works on any [rows, cols] matrix whose
 *  rows are head-major outputs (weights, biases with cols = 1, LoRA B). */
export function permuteRowsForGguf(data: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  if (rows % heads !== 0 || (rows / heads) % 2 !== 0) throw new Error(`cannot permute ${rows} rows over ${heads} heads`);
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const src = h * headDim + j * half + i;
        const dst = h * headDim + i * 2 + j;
        out.set(data.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return out;
}

/** The inverse of permuteRowsForGguf (used by tests and by readers of our GGUF files). */
export function unpermuteRowsFromGguf(data: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const orig = h * headDim + j * half + i;
        const perm = h * headDim + i * 2 + j;
        out.set(data.subarray(perm * cols, (perm + 1) * cols), orig * cols);
      }
    }
  }
  return out;
}

export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}
