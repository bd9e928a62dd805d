// An independent, deliberately plain Llama forward pass (float64 accumulation, no cache) used
// as the reference the exported ONNX graph and the GGUF files run in llama.cpp are compared to.
// It follows transformers' LlamaForCausalLM: RMSNorm, rotate_half RoPE, GQA, SwiGLU, optional
// q/k/v bias, tied head; a PEFT adapter is applied as W + (alpha / r) B A (alpha / sqrt(r) for rsLoRA).
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { openHfModel, scaledInvFreq } from '../../src/core/export/hfModel';
import { readSafetensorsHeader, readTensorF32, TensorToWrite, writeSafetensors } from '../../src/core/model/safetensors';
import { Rng, hashString } from '../../src/core/fixtures/rng';
import { bundledRuntimePath } from '../../src/core/runtime/locate';

export const MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
const PARENT: Record<string, string> = { q_proj: 'self_attn', k_proj: 'self_attn', v_proj: 'self_attn', o_proj: 'self_attn', gate_proj: 'mlp', up_proj: 'mlp', down_proj: 'mlp' };

/** Writes a PEFT adapter with random A and (unlike a fresh one) non-zero B, so it changes outputs. */
export function writeRandomAdapter(dir: string, modelDir: string, opts: { r: number; alpha: number; rslora?: boolean; targets?: readonly string[]; seed?: number }): void {
  const m = openHfModel(modelDir);
  const c = m.config;
  const targets = opts.targets ?? MODULES;
  const dims: Record<string, [number, number]> = {
    q_proj: [c.heads * c.headDim, c.hidden], k_proj: [c.kvHeads * c.headDim, c.hidden], v_proj: [c.kvHeads * c.headDim, c.hidden],
    o_proj: [c.hidden, c.heads * c.headDim], gate_proj: [c.intermediate, c.hidden], up_proj: [c.intermediate, c.hidden], down_proj: [c.hidden, c.intermediate],
  };
  const tensors: TensorToWrite[] = [];
  for (let l = 0; l < c.layers; l++) {
    for (const mod of targets) {
      const [out, inp] = dims[mod];
      const base = `base_model.model.model.layers.${l}.${PARENT[mod]}.${mod}`;
      for (const [which, shape] of [['A', [opts.r, inp]], ['B', [out, opts.r]]] as const) {
        const name = `${base}.lora_${which}.weight`;
        const rng = new Rng(opts.seed ?? 1, hashString(name));
        const v = new Float32Array(shape[0] * shape[1]);
        for (let i = 0; i < v.length; i++) v[i] = 0.05 * rng.normal();
        tensors.push({ name, dtype: 'F32', shape: [...shape], data: v });
      }
    }
  }
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({
    peft_type: 'LORA', task_type: 'CAUSAL_LM', r: opts.r, lora_alpha: opts.alpha, lora_dropout: 0, target_modules: [...targets],
    bias: 'none', use_rslora: opts.rslora ?? false, use_dora: false, modules_to_save: null, fan_in_fan_out: false,
    base_model_name_or_path: path.resolve(modelDir),
  }, null, 2));
}

type Mat = Float64Array;

/** logits[position][vocab] for one sequence of token ids at positions 0..n-1. */
export function referenceLogits(modelDir: string, tokens: readonly number[], adapterDir?: string): Float64Array[] {
  const model = openHfModel(modelDir);
  const c = model.config;
  const { hidden: E, heads: H, kvHeads: KV, headDim: D, intermediate: F, vocab: V } = c;
  const n = tokens.length;
  let scale = 0;
  let adapterHeader: ReturnType<typeof readSafetensorsHeader> | null = null;
  if (adapterDir) {
    const ac = JSON.parse(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
    scale = ac.use_rslora ? ac.lora_alpha / Math.sqrt(ac.r) : ac.lora_alpha / ac.r;
    adapterHeader = readSafetensorsHeader(path.join(adapterDir, 'adapter_model.safetensors'));
  }
  const weight = (layer: number, mod: string, out: number, inp: number): Mat => {
    const w = Float64Array.from(model.read(`model.layers.${layer}.${PARENT[mod]}.${mod}.weight`, [out, inp]));
    const base = `base_model.model.model.layers.${layer}.${PARENT[mod]}.${mod}`;
    if (adapterHeader && adapterHeader.tensors.some((t) => t.name === `${base}.lora_A.weight`)) {
      const a = readTensorF32(adapterHeader, `${base}.lora_A.weight`);
      const b = readTensorF32(adapterHeader, `${base}.lora_B.weight`);
      const r = a.length / inp;
      for (let o = 0; o < out; o++) {
        for (let k = 0; k < r; k++) {
          const bv = b[o * r + k] * scale;
          for (let i = 0; i < inp; i++) w[o * inp + i] += bv * a[k * inp + i];
        }
      }
    }
    return w;
  };
  // y[t][out] = x[t] . W[out] (+ bias)
  const linear = (x: Mat, w: Mat, out: number, inp: number, bias?: Float32Array): Mat => {
    const y = new Float64Array(n * out);
    for (let t = 0; t < n; t++) {
      for (let o = 0; o < out; o++) {
        let s = bias ? bias[o] : 0;
        for (let i = 0; i < inp; i++) s += x[t * inp + i] * w[o * inp + i];
        y[t * out + o] = s;
      }
    }
    return y;
  };
  const rms = (x: Mat, w: Float32Array): Mat => {
    const y = new Float64Array(x.length);
    for (let t = 0; t < n; t++) {
      let ss = 0;
      for (let i = 0; i < E; i++) ss += x[t * E + i] ** 2;
      const inv = 1 / Math.sqrt(ss / E + c.rmsNormEps);
      for (let i = 0; i < E; i++) y[t * E + i] = x[t * E + i] * inv * w[i];
    }
    return y;
  };
  const invFreq = scaledInvFreq(c);
  const rope = (x: Mat, heads: number) => {
    for (let t = 0; t < n; t++) {
      for (let h = 0; h < heads; h++) {
        const o = t * heads * D + h * D;
        for (let i = 0; i < D / 2; i++) {
          const ang = t * invFreq[i];
          const cs = Math.cos(ang), sn = Math.sin(ang);
          const x1 = x[o + i], x2 = x[o + i + D / 2];
          x[o + i] = x1 * cs - x2 * sn;
          x[o + i + D / 2] = x2 * cs + x1 * sn;
        }
      }
    }
  };
  const emb = model.read('model.embed_tokens.weight', [V, E]);
  let x: Mat = new Float64Array(n * E);
  tokens.forEach((tok, t) => { for (let i = 0; i < E; i++) x[t * E + i] = emb[tok * E + i]; });
  for (let l = 0; l < c.layers; l++) {
    const p = `model.layers.${l}`;
    const h = rms(x, model.read(`${p}.input_layernorm.weight`, [E]));
    const bias = (m: string, size: number) => (c.qkvBias ? model.read(`${p}.self_attn.${m}.bias`, [size]) : undefined);
    const q = linear(h, weight(l, 'q_proj', H * D, E), H * D, E, bias('q_proj', H * D));
    const k = linear(h, weight(l, 'k_proj', KV * D, E), KV * D, E, bias('k_proj', KV * D));
    const v = linear(h, weight(l, 'v_proj', KV * D, E), KV * D, E, bias('v_proj', KV * D));
    rope(q, H);
    rope(k, KV);
    const ctx = new Float64Array(n * H * D);
    for (let hh = 0; hh < H; hh++) {
      const kvh = Math.floor(hh / (H / KV));
      for (let t = 0; t < n; t++) {
        const scores = new Float64Array(t + 1);
        let mx = -Infinity;
        for (let s = 0; s <= t; s++) {
          let d = 0;
          for (let i = 0; i < D; i++) d += q[t * H * D + hh * D + i] * k[s * KV * D + kvh * D + i];
          scores[s] = d / Math.sqrt(D);
          mx = Math.max(mx, scores[s]);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) sum += (scores[s] = Math.exp(scores[s] - mx));
        for (let s = 0; s <= t; s++) {
          for (let i = 0; i < D; i++) ctx[t * H * D + hh * D + i] += (scores[s] / sum) * v[s * KV * D + kvh * D + i];
        }
      }
    }
    const o = linear(ctx, weight(l, 'o_proj', E, H * D), E, H * D);
    x = x.map((val, i) => val + o[i]);
    const h2 = rms(x, model.read(`${p}.post_attention_layernorm.weight`, [E]));
    const g = linear(h2, weight(l, 'gate_proj', F, E), F, E);
    const u = linear(h2, weight(l, 'up_proj', F, E), F, E);
    const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
    const d = linear(act, weight(l, 'down_proj', E, F), E, F);
    x = x.map((val, i) => val + d[i]);
  }
  const xn = rms(x, model.read('model.norm.weight', [E]));
  const head = Float64Array.from(model.has('lm_head.weight') ? model.read('lm_head.weight', [V, E]) : emb);
  const logits = linear(xn, head, V, E);
  return Array.from({ length: n }, (_, t) => logits.subarray(t * V, (t + 1) * V));
}

/** The runtime binary when it offers `command` (per its usage text), else a skip reason. */
export function runtimeWith(command: string): { runtime: string; skip: false } | { runtime: null; skip: string } {
  const runtime = process.env.LORA_STUDIO_RUNTIME || bundledRuntimePath(path.resolve(__dirname, '..', '..', '..'));
  if (!fs.existsSync(runtime)) return { runtime: null, skip: `lora-runtime not built (${runtime}); run npm run build:native` };
  const r = spawnSync(runtime, ['--help'], { encoding: 'utf8', timeout: 30_000 });
  const usage = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (!new RegExp(`^\\s*lora-runtime ${command}\\b`, 'm').test(usage)) {
    return { runtime: null, skip: `this lora-runtime has no "${command}" command yet (not in its --help usage)` };
  }
  return { runtime, skip: false };
}

/** `lora-runtime logits`: the runtime's own logits for one sequence. */
export function runtimeLogits(runtime: string, modelDir: string, tokens: readonly number[], adapterDir?: string): number[][] {
  const args = ['logits', '--model', modelDir, '--tokens', tokens.join(','), '--quant', 'none'];
  if (adapterDir) args.push('--adapter', adapterDir);
  const r = spawnSync(runtime, args, { encoding: 'utf8', timeout: 180_000, killSignal: 'SIGKILL', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`lora-runtime ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
  const lines = r.stdout.trim().split('\n');
  const parsed = JSON.parse(lines[lines.length - 1]) as { logits: number[][] };
  return parsed.logits;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

const tempDirs: string[] = [];
process.on('exit', () => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh temporary folder, removed when the test process exits. */
export function tempDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}
