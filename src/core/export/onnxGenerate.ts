// Token generation over a graph written by exportOnnx, in onnxruntime-node: the prompt in one
// call, then one token per call through the KV cache; greedy or temperature + top-p sampling;
// stops on EOS or maxTokens. For the playground and the CLI; no vscode import.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { decodeModel } from './onnxProto';
import { Rng } from '../fixtures/rng';

export interface GenerateOptions {
  maxTokens: number;
  /** 0 = greedy (argmax). */
  temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP. */
  topP?: number;
  /** Token ids that end generation (not yielded). Defaults to the model's eos_token_id. */
  stopTokens?: readonly number[];
  seed?: number;
  /** Checked before every step; generation ends quietly when it returns true. */
  cancelled?: () => boolean;
}

export interface GeneratedToken {
  token: number;
  /** Probability of the chosen token under the (temperature-scaled) distribution. */
  probability: number;
}

interface GraphInfo { layers: number; kvHeads: number; headDim: number; vocab: number; eos: number | null }

function readGraphInfo(file: string): GraphInfo {
  // Only the metadata is needed; with external data the protobuf is small, and otherwise
  // it is read once here, before the session maps it.
  const m = decodeModel(fs.readFileSync(file)) as { metadata_props?: { key: string; value: string }[] };
  const props = new Map((m.metadata_props ?? []).map((p) => [p.key, p.value]));
  const int = (k: string): number => {
    const v = Number(props.get(`lora_studio.${k}`));
    if (!Number.isInteger(v) || v <= 0) throw new Error(`${file}: metadata lora_studio.${k} is missing; export the model again with LoRA Studio`);
    return v;
  };
  const eos = props.get('lora_studio.eos_token_id');
  return { layers: int('layers'), kvHeads: int('kv_heads'), headDim: int('head_dim'), vocab: int('vocab'), eos: eos ? Number(eos) : null };
}

export class OnnxGenerator {
  private constructor(private readonly ort: typeof Ort, private readonly session: Ort.InferenceSession, readonly info: GraphInfo) {}

  /** Loads `dir/model.onnx` (or a .onnx file) on the CPU, or on the given execution providers. */
  static async load(fileOrDir: string, opts: { executionProviders?: string[]; threads?: number } = {}): Promise<OnnxGenerator> {
    const file = fileOrDir.endsWith('.onnx') ? fileOrDir : path.join(fileOrDir, 'model.onnx');
    const info = readGraphInfo(file);
    // Loaded on first use, so importing core/export does not load the native ONNX Runtime library.
    const ort = require('onnxruntime-node') as typeof Ort;
    const session = await ort.InferenceSession.create(file, {
      executionProviders: opts.executionProviders ?? ['cpu'],
      ...(opts.threads ? { intraOpNumThreads: opts.threads } : {}),
    });
    return new OnnxGenerator(ort, session, info);
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  /** One forward call; returns the last position's logits and the new cache. */
  private async step(ids: number[], start: number, past: Record<string, Ort.Tensor> | null): Promise<{ logits: Float32Array; present: Record<string, Ort.Tensor> }> {
    const { ort, info } = this;
    const total = start + ids.length;
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((_, i) => BigInt(start + i))), [1, ids.length]),
    };
    const present: Record<string, Ort.Tensor> = {};
    for (let l = 0; l < info.layers; l++) {
      for (const kv of ['key', 'value']) {
        feeds[`past_key_values.${l}.${kv}`] = past?.[`present.${l}.${kv}`]
          ?? new ort.Tensor('float32', new Float32Array(0), [1, info.kvHeads, 0, info.headDim]);
      }
    }
    const out = await this.session.run(feeds);
    for (let l = 0; l < info.layers; l++) {
      for (const kv of ['key', 'value']) present[`present.${l}.${kv}`] = out[`present.${l}.${kv}`];
    }
    const all = out.logits.data as Float32Array;
    return { logits: all.slice((ids.length - 1) * info.vocab, ids.length * info.vocab), present };
  }

  async *generate(prompt: readonly number[], opts: GenerateOptions): AsyncGenerator<GeneratedToken> {
    if (!prompt.length) throw new Error('generate: the prompt has no tokens');
    for (const t of prompt) {
      if (!Number.isInteger(t) || t < 0 || t >= this.info.vocab) throw new Error(`generate: token ${t} is outside the vocabulary (0..${this.info.vocab - 1})`);
    }
    const stop = new Set(opts.stopTokens ?? (this.info.eos !== null ? [this.info.eos] : []));
    const rng = new Rng(opts.seed ?? 0);
    let { logits, present } = await this.step([...prompt], 0, null);
    let pos = prompt.length;
    for (let n = 0; n < opts.maxTokens; n++) {
      if (opts.cancelled?.()) return;
      const choice = pick(logits, opts.temperature ?? 0, opts.topP ?? 1, rng);
      if (stop.has(choice.token)) return;
      yield choice;
      if (n + 1 === opts.maxTokens) return;
      ({ logits, present } = await this.step([choice.token], pos, present));
      pos++;
    }
  }
}

/** Greedy for temperature 0; otherwise softmax(logits / temperature) restricted to the top-p nucleus. */
export function pick(logits: Float32Array, temperature: number, topP: number, rng: Rng): GeneratedToken {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  const t = temperature > 0 ? temperature : 1;
  const probs = new Float64Array(logits.length);
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += (probs[i] = Math.exp((logits[i] - logits[best]) / t));
  for (let i = 0; i < probs.length; i++) probs[i] /= z;
  if (!(temperature > 0)) return { token: best, probability: probs[best] };
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
  const nucleus: number[] = [];
  let mass = 0;
  for (const i of order) {
    nucleus.push(i);
    mass += probs[i];
    if (mass >= topP) break;
  }
  let u = rng.next() * mass;
  for (const i of nucleus) {
    u -= probs[i];
    if (u <= 0) return { token: i, probability: probs[i] };
  }
  const last = nucleus[nucleus.length - 1];
  return { token: last, probability: probs[last] };
}
