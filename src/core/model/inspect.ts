// Model folder inspection from config.json and safetensors headers only (no weights read):
// architecture, sizes, parameter counts, the LoRA target modules present with their shapes.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DTYPE_BYTES, SafetensorsDType } from './dtype';
import { ModelWeights, SafetensorsError, numel, readModelWeights } from './safetensors';

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'GPT2LMHeadModel'] as const;
const MODULE_PATHS: Record<string, string> = {
  q_proj: 'self_attn.q_proj', k_proj: 'self_attn.k_proj', v_proj: 'self_attn.v_proj', o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj', up_proj: 'mlp.up_proj', down_proj: 'mlp.down_proj',
};

export class ModelInspectError extends Error {
  constructor(readonly file: string, readonly field: string | undefined, detail: string, readonly hint?: string) {
    super(`${file}${field ? ` (${field})` : ''}: ${detail}${hint ? `. ${hint}` : ''}`);
    this.name = 'ModelInspectError';
  }
}

export interface TargetModuleInfo {
  /** HF module name as PEFT's target_modules matches it, e.g. "q_proj", GPT-2's "c_attn". */
  name: string;
  inFeatures: number;
  outFeatures: number;
  /** Layers that have this module. */
  layers: number;
  /** Weight parameters over all layers. */
  params: number;
  /** GPT-2's "c_proj" selects two modules per layer (attn.c_proj, mlp.c_proj): each one's
   *  shape. inFeatures/outFeatures above are the first part's. Absent for one module. */
  parts?: { path: string; inFeatures: number; outFeatures: number }[];
}

/** The (in, out) of every module a target selects in one layer. */
export function targetShapes(t: TargetModuleInfo): { inFeatures: number; outFeatures: number }[] {
  return t.parts ?? [{ inFeatures: t.inFeatures, outFeatures: t.outFeatures }];
}

export interface ModelInspection {
  dir: string;
  architecture: string;
  modelType: string;
  supported: boolean;
  /** Why the runtime cannot train it, when not supported. */
  unsupportedReason?: string;
  layers: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  ropeTheta: number;
  ropeScaling: Record<string, unknown> | null;
  /** The dtype most of the weight bytes are stored in. */
  dtype: SafetensorsDType;
  torchDtype: string | null;
  paramsTotal: number;
  /** Parameters in the decoder layers' linear weights (the ones quantization applies to). */
  paramsLinear: number;
  /** Everything else: embeddings, LM head, norms, biases. */
  paramsOther: number;
  bytes: number;
  targets: TargetModuleInfo[];
  files: string[];
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  /** Mismatches between config.json and the tensors (missing tensors, shapes); empty when consistent. */
  warnings: string[];
}

function readJson(file: string, what: string, hint: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ModelInspectError(file, undefined, code === 'ENOENT' ? `${what} not found` : (e as Error).message, hint);
  }
  try {
    const v = JSON.parse(text.replace(/^\uFEFF/, ''));
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new ModelInspectError(file, undefined, `not valid JSON (${(e as Error).message})`, 'Restore the file from the model repository');
  }
}

export function inspectModel(dir: string): ModelInspection {
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) {
    throw new ModelInspectError(abs, undefined, 'model folder not found', 'Pick a Hugging Face model folder containing config.json');
  }
  const cfgFile = path.join(abs, 'config.json');
  const cfg = readJson(cfgFile, 'config.json', 'Pick a Hugging Face model folder (it has config.json next to the *.safetensors files)');
  const archs = cfg.architectures;
  const architecture = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : '';
  const modelType = typeof cfg.model_type === 'string' ? cfg.model_type : '';
  const sizeField = (key: string, fallback?: number): number => {
    const v = cfg[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelInspectError(cfgFile, key, 'is missing', 'The config.json is incomplete; restore it from the model repository');
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ModelInspectError(cfgFile, key, `must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  // GPT-2 names its sizes differently (GPT2Config), with defaults for every one of them.
  const gpt2 = architecture === 'GPT2LMHeadModel' || (!architecture && modelType === 'gpt2');
  const hidden = gpt2 ? sizeField('n_embd', 768) : sizeField('hidden_size');
  const layers = gpt2 ? sizeField('n_layer', 12) : sizeField('num_hidden_layers');
  const heads = gpt2 ? sizeField('n_head', 12) : sizeField('num_attention_heads');
  const kvHeads = gpt2 ? heads : sizeField('num_key_value_heads', heads);
  const headDim = gpt2 ? Math.floor(hidden / heads) : sizeField('head_dim', Math.floor(hidden / heads));
  const intermediate = gpt2 ? sizeField('n_inner', 4 * hidden) : sizeField('intermediate_size');
  const vocab = sizeField('vocab_size', gpt2 ? 50257 : undefined);
  const maxPositions = gpt2 ? sizeField('n_positions', 1024)
    : typeof cfg.max_position_embeddings === 'number' ? cfg.max_position_embeddings : 0;
  if (heads % kvHeads !== 0) throw new ModelInspectError(cfgFile, 'num_key_value_heads', `${kvHeads} does not divide num_attention_heads ${heads}`);

  let weights: ModelWeights;
  try {
    weights = readModelWeights(abs);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new ModelInspectError(e.file, e.field, e.detail, e.hint);
    throw e;
  }

  const warnings: string[] = [];
  const dtypeBytes = new Map<SafetensorsDType, number>();
  let paramsTotal = 0;
  let paramsLinear = 0;
  for (const t of weights.tensors.values()) {
    const n = numel(t.shape);
    paramsTotal += n;
    dtypeBytes.set(t.dtype, (dtypeBytes.get(t.dtype) ?? 0) + n * DTYPE_BYTES[t.dtype]);
    if (/^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\.weight$/.test(t.name)) paramsLinear += n;
    else if (/^(transformer\.)?h\.\d+\.(attn|mlp)\.c_(attn|proj|fc)\.weight$/.test(t.name)) paramsLinear += n;
  }
  const dtype = [...dtypeBytes.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';

  const expected: Record<string, [number, number]> = {
    q_proj: [heads * headDim, hidden], k_proj: [kvHeads * headDim, hidden], v_proj: [kvHeads * headDim, hidden],
    o_proj: [hidden, heads * headDim], gate_proj: [intermediate, hidden], up_proj: [intermediate, hidden], down_proj: [hidden, intermediate],
  };
  const targets: TargetModuleInfo[] = gpt2 ? gpt2Targets(weights, layers, hidden, intermediate, warnings) : [];
  for (const [name, sub] of Object.entries(gpt2 ? {} : MODULE_PATHS)) {
    let present = 0;
    let shape: number[] | null = null;
    for (let i = 0; i < layers; i++) {
      const t = weights.tensors.get(`model.layers.${i}.${sub}.weight`);
      if (!t) continue;
      present++;
      if (t.shape.length !== 2 || t.shape[0] !== expected[name][0] || t.shape[1] !== expected[name][1]) {
        warnings.push(`model.layers.${i}.${sub}.weight has shape [${t.shape.join(', ')}], config.json implies [${expected[name].join(', ')}]`);
      }
      shape ??= t.shape;
    }
    if (present === 0) continue;
    if (present < layers) warnings.push(`${name} is present in ${present} of ${layers} layers`);
    const [out, inn] = shape!.length === 2 ? shape! : expected[name];
    targets.push({ name, inFeatures: inn, outFeatures: out, layers: present, params: present * inn * out });
  }
  const embedName = gpt2 ? (weights.tensors.has('wte.weight') ? 'wte.weight' : 'transformer.wte.weight') : 'model.embed_tokens.weight';
  if (!weights.tensors.has(embedName)) warnings.push(`${embedName} is missing`);
  // GPT2Config ties the LM head unless told otherwise; the Llama family's configs do not.
  const tie = gpt2 ? cfg.tie_word_embeddings !== false : cfg.tie_word_embeddings === true;
  if (!tie && !weights.tensors.has('lm_head.weight')) warnings.push('lm_head.weight is missing and tie_word_embeddings is false');

  let supported: boolean = (SUPPORTED_ARCHITECTURES as readonly string[]).includes(architecture);
  let unsupportedReason: string | undefined;
  if (!supported) {
    unsupportedReason = `architecture ${architecture || '(none)'} is not supported; the runtime trains ${SUPPORTED_ARCHITECTURES.join(', ')}`;
  } else if (gpt2 && typeof cfg.activation_function === 'string' && !['gelu_new', 'gelu_pytorch_tanh'].includes(cfg.activation_function)) {
    supported = false;
    unsupportedReason = `activation_function ${cfg.activation_function} is not supported; the runtime implements GPT-2's gelu_new`;
  } else if (!['F32', 'F16', 'BF16'].includes(dtype)) {
    supported = false;
    unsupportedReason = `weights are stored as ${dtype}; the runtime loads F32, F16 and BF16 checkpoints (dequantize pre-quantized checkpoints first)`;
  }

  const tokCfgFile = path.join(abs, 'tokenizer_config.json');
  let hasChatTemplate = false;
  if (fs.existsSync(tokCfgFile)) {
    try {
      const tc = JSON.parse(fs.readFileSync(tokCfgFile, 'utf8'));
      hasChatTemplate = typeof tc.chat_template === 'string' || Array.isArray(tc.chat_template);
    } catch {
      warnings.push('tokenizer_config.json is not valid JSON');
    }
  }
  if (!hasChatTemplate && fs.existsSync(path.join(abs, 'chat_template.jinja'))) hasChatTemplate = true;

  return {
    dir: abs,
    architecture,
    modelType,
    supported,
    unsupportedReason,
    layers, hidden, intermediate, heads, kvHeads, headDim, vocab,
    maxPositionEmbeddings: maxPositions,
    tieWordEmbeddings: tie,
    ropeTheta: typeof cfg.rope_theta === 'number' ? cfg.rope_theta : 10000,
    ropeScaling: cfg.rope_scaling && typeof cfg.rope_scaling === 'object' ? (cfg.rope_scaling as Record<string, unknown>) : null,
    dtype,
    torchDtype: typeof cfg.torch_dtype === 'string' ? cfg.torch_dtype : null,
    paramsTotal,
    paramsLinear,
    paramsOther: paramsTotal - paramsLinear,
    bytes: weights.totalBytes,
    targets,
    files: weights.files.map((f) => path.basename(f.file)),
    hasTokenizer: fs.existsSync(path.join(abs, 'tokenizer.json')),
    hasChatTemplate,
    warnings,
  };
}

/** GPT-2's Conv1D modules, weights stored [in, out], as PEFT names them: c_attn, c_proj
 *  (attn.c_proj and mlp.c_proj together, as PEFT's suffix match selects both), c_fc. */
function gpt2Targets(weights: ModelWeights, layers: number, hidden: number, inner: number, warnings: string[]): TargetModuleInfo[] {
  const prefix = weights.tensors.has('wte.weight') ? '' : 'transformer.';
  const groups: [string, [string, number, number][]][] = [
    ['c_attn', [['attn.c_attn', hidden, 3 * hidden]]],
    ['c_proj', [['attn.c_proj', hidden, hidden], ['mlp.c_proj', inner, hidden]]],
    ['c_fc', [['mlp.c_fc', hidden, inner]]],
  ];
  const out: TargetModuleInfo[] = [];
  for (const [name, parts] of groups) {
    let present = 0;
    let params = 0;
    for (let i = 0; i < layers; i++) {
      let all = true;
      for (const [sub, inn, o] of parts) {
        const key = `${prefix}h.${i}.${sub}.weight`;
        const t = weights.tensors.get(key);
        if (!t) { all = false; continue; }
        if (t.shape.length !== 2 || t.shape[0] !== inn || t.shape[1] !== o) {
          warnings.push(`${key} has shape [${t.shape.join(', ')}], config.json implies [${inn}, ${o}] (Conv1D: [in, out])`);
        }
        params += inn * o;
      }
      if (all) present++;
    }
    if (present === 0) continue;
    if (present < layers) warnings.push(`${name} is present in ${present} of ${layers} layers`);
    const info: TargetModuleInfo = { name, inFeatures: parts[0][1], outFeatures: parts[0][2], layers: present, params };
    if (parts.length > 1) info.parts = parts.map(([p, inn, o]) => ({ path: p, inFeatures: inn, outFeatures: o }));
    out.push(info);
  }
  return out;
}

/** Trainable LoRA parameters for rank r on the given modules: r × (in + out) per module per layer. */
export function loraParamCount(model: Pick<ModelInspection, 'targets'>, r: number, targets: readonly string[]): number {
  let n = 0;
  for (const t of model.targets) {
    if (!targets.includes(t.name)) continue;
    for (const s of targetShapes(t)) n += t.layers * r * (s.inFeatures + s.outFeatures);
  }
  return n;
}

/** One-line human summary, e.g. "LlamaForCausalLM · 2 layers · hidden 64 · 0.14M params · F32 · 0.5 MB". */
export function describeModel(m: ModelInspection): string {
  const params = m.paramsTotal >= 1e9 ? `${(m.paramsTotal / 1e9).toFixed(2)}B` : `${(m.paramsTotal / 1e6).toFixed(2)}M`;
  return `${m.architecture} · ${m.layers} layers · hidden ${m.hidden} · heads ${m.heads}/${m.kvHeads} · vocab ${m.vocab} · ${params} params · ${m.dtype} · ${formatBytes(m.bytes)}`;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}
