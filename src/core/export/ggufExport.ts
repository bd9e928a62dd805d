// GGUF export for llama.cpp and Ollama:
// - a PEFT LoRA adapter as a GGUF LoRA file, laid out as llama.cpp's convert_lora_to_gguf.py
//   writes it (general.type=adapter, adapter.type=lora, adapter.lora.alpha, tensors
//   blk.N.<module>.weight.lora_a [r, in] / .lora_b [out, r] in numpy order);
// - an HF Llama-family folder (base or merged) as a GGUF model (f32 or f16), as
//   convert_hf_to_gguf.py writes it, tokenizer included;
// - an Ollama Modelfile (FROM the model, ADAPTER the LoRA).
// llama.cpp runs Llama with interleaved ("normal") RoPE, so the rows of q_proj/k_proj are
// permuted from HF's rotate_half order, and so are the rows of the q/k LoRA B matrices
// (B A's rows are the outputs, A is untouched). Qwen2 runs with NEOX RoPE: no permutation.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SafetensorsError, SafetensorsHeader, readSafetensorsHeader, readTensorF32 } from '../model/safetensors';
import { GgmlType, GgufTensor, GgufValue, Q8_0_BLOCK, gv, writeGguf } from './gguf';
import { ExportError, HfModel, HfModelConfig, openHfModel, permuteRowsForGguf, readHfConfig, readJson, ropeFreqFactors, throwIfCancelled } from './hfModel';
import type { CancellationToken } from '../runtime/process';

export type GgufOutType = 'f32' | 'f16';
/** Model precision: adapters are f32 or f16; models may also be Q8_0. */
export type GgufModelOutType = GgufOutType | 'q8_0';

export interface ExportProgress {
  phase: string;
  /** 0..1 within the whole export. */
  fraction: number;
  message: string;
}
export type ProgressCallback = (p: ExportProgress) => void;

/** HF module name -> llama.cpp tensor base name. */
export const GGUF_MODULE_NAMES: Readonly<Record<string, string>> = {
  q_proj: 'attn_q', k_proj: 'attn_k', v_proj: 'attn_v', o_proj: 'attn_output',
  gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down',
};
const MODULE_PARENT: Readonly<Record<string, string>> = {
  q_proj: 'self_attn', k_proj: 'self_attn', v_proj: 'self_attn', o_proj: 'self_attn',
  gate_proj: 'mlp', up_proj: 'mlp', down_proj: 'mlp',
};

/** The GGUF architecture name and whether llama.cpp wants the Q/K rows permuted. */
export function ggufArchitecture(cfg: Pick<HfModelConfig, 'arch'>): { name: string; permuteQk: boolean } {
  return cfg.arch === 'qwen2' ? { name: 'qwen2', permuteQk: false } : { name: 'llama', permuteQk: true };
}

function moduleShape(cfg: HfModelConfig, module: string): [number, number] {
  const q = cfg.heads * cfg.headDim;
  const kv = cfg.kvHeads * cfg.headDim;
  switch (module) {
    case 'q_proj': return [q, cfg.hidden];
    case 'k_proj': return [kv, cfg.hidden];
    case 'v_proj': return [kv, cfg.hidden];
    case 'o_proj': return [cfg.hidden, q];
    case 'gate_proj': return [cfg.intermediate, cfg.hidden];
    case 'up_proj': return [cfg.intermediate, cfg.hidden];
    case 'down_proj': return [cfg.hidden, cfg.intermediate];
  }
  throw new Error(`unknown module ${module}`);
}

function qkHeads(cfg: HfModelConfig, module: string): number | null {
  if (module === 'q_proj') return cfg.heads;
  if (module === 'k_proj') return cfg.kvHeads;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Adapter

export interface AdapterInfo {
  dir: string;
  r: number;
  alpha: number;
  rslora: boolean;
  targets: string[];
  header: SafetensorsHeader;
  baseModel: string | null;
  /** (layer, module) pairs present in the file. */
  modules: { layer: number; module: string; a: string; b: string }[];
}

const ADAPTER_KEY = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])\.weight$/;

export function readAdapter(adapterDir: string): AdapterInfo {
  const dir = path.resolve(adapterDir);
  const cfgFile = path.join(dir, 'adapter_config.json');
  const cfg = readJson(cfgFile, 'Pick a PEFT adapter folder (adapter_config.json next to adapter_model.safetensors)');
  if (cfg.peft_type !== undefined && cfg.peft_type !== 'LORA') {
    throw new ExportError(cfgFile, 'peft_type', `${JSON.stringify(cfg.peft_type)} is not a LoRA adapter`, 'Only LoRA adapters can be exported');
  }
  if (cfg.use_dora === true) throw new ExportError(cfgFile, 'use_dora', 'DoRA adapters are not supported by llama.cpp', 'Train a plain LoRA adapter');
  const r = cfg.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) throw new ExportError(cfgFile, 'r', `must be a positive integer, got ${JSON.stringify(r)}`);
  const alpha = cfg.lora_alpha ?? r;
  if (typeof alpha !== 'number' || !(alpha > 0)) throw new ExportError(cfgFile, 'lora_alpha', `must be a positive number, got ${JSON.stringify(alpha)}`);
  if (cfg.alpha_pattern && typeof cfg.alpha_pattern === 'object' && Object.keys(cfg.alpha_pattern).length) {
    throw new ExportError(cfgFile, 'alpha_pattern', 'per-module alpha is not supported by the GGUF LoRA format', 'Use one lora_alpha for all modules');
  }
  if (cfg.rank_pattern && typeof cfg.rank_pattern === 'object' && Object.keys(cfg.rank_pattern).length) {
    throw new ExportError(cfgFile, 'rank_pattern', 'per-module rank is not supported by this exporter', 'Use one r for all modules');
  }
  const file = path.join(dir, 'adapter_model.safetensors');
  let header: SafetensorsHeader;
  try {
    header = readSafetensorsHeader(file);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new ExportError(e.file, e.field, e.detail, e.hint);
    throw e;
  }
  const pairs = new Map<string, { layer: number; module: string; a?: string; b?: string }>();
  for (const t of header.tensors) {
    const m = ADAPTER_KEY.exec(t.name);
    if (!m || MODULE_PARENT[m[3]] !== m[2]) {
      throw new ExportError(file, t.name, 'is not a LoRA weight of a Llama attention/MLP projection',
        'Expected base_model.model.model.layers.N.{self_attn,mlp}.<module>.lora_{A,B}.weight (no modules_to_save, no .default.)');
    }
    const key = `${m[1]}.${m[3]}`;
    const p = pairs.get(key) ?? { layer: Number(m[1]), module: m[3] };
    if (m[4] === 'A') p.a = t.name; else p.b = t.name;
    pairs.set(key, p);
  }
  const modules: AdapterInfo['modules'] = [];
  for (const p of pairs.values()) {
    if (!p.a || !p.b) throw new ExportError(file, `layers.${p.layer}.${p.module}`, `has lora_${p.a ? 'A' : 'B'} but not lora_${p.a ? 'B' : 'A'}`, 'The adapter file is incomplete');
    modules.push({ layer: p.layer, module: p.module, a: p.a, b: p.b });
  }
  if (!modules.length) throw new ExportError(file, undefined, 'has no LoRA weights');
  modules.sort((x, y) => x.layer - y.layer || Object.keys(GGUF_MODULE_NAMES).indexOf(x.module) - Object.keys(GGUF_MODULE_NAMES).indexOf(y.module));
  return {
    dir, r, alpha, rslora: cfg.use_rslora === true,
    targets: [...new Set(modules.map((m) => m.module))],
    header,
    baseModel: typeof cfg.base_model_name_or_path === 'string' ? cfg.base_model_name_or_path : null,
    modules,
  };
}

export interface AdapterGgufOptions {
  adapterDir: string;
  /** The HF base model folder; its config gives head counts for the Q/K permutation and the
   *  shape checks. Defaults to the adapter's base_model_name_or_path when that is a folder. */
  modelDir?: string;
  out: string;
  outType?: GgufOutType;
  name?: string;
  onProgress?: ProgressCallback;
  /** Checked between tensors; a cancelled export leaves no file. */
  token?: CancellationToken;
}

export interface AdapterGgufResult {
  file: string;
  bytes: number;
  tensors: number;
  /** The alpha written: llama.cpp scales by alpha / r, so rsLoRA's alpha / sqrt(r) is
   *  expressed as alpha * sqrt(r). */
  alpha: number;
}

function resolveBaseModel(adapter: AdapterInfo, modelDir: string | undefined): string {
  if (modelDir) return path.resolve(modelDir);
  if (adapter.baseModel && fs.existsSync(path.join(adapter.baseModel, 'config.json'))) return adapter.baseModel;
  throw new ExportError(path.join(adapter.dir, 'adapter_config.json'), 'base_model_name_or_path',
    `${JSON.stringify(adapter.baseModel)} is not a local model folder`, 'Pass the base model folder (modelDir / --model)');
}

export function exportAdapterGguf(opts: AdapterGgufOptions): AdapterGgufResult {
  const adapter = readAdapter(opts.adapterDir);
  const cfg = readHfConfig(resolveBaseModel(adapter, opts.modelDir));
  const arch = ggufArchitecture(cfg);
  const type = opts.outType === 'f16' ? GgmlType.F16 : GgmlType.F32;
  const alpha = adapter.rslora ? adapter.alpha * Math.sqrt(adapter.r) : adapter.alpha;
  const shapeOf = (name: string) => adapter.header.tensors.find((t) => t.name === name)!.shape;

  const tensors: GgufTensor[] = [];
  for (const m of adapter.modules) {
    if (m.layer >= cfg.layers) {
      throw new ExportError(adapter.header.file, m.a, `layer ${m.layer} does not exist in a ${cfg.layers}-layer model`, 'The adapter was trained on a different base model');
    }
    const [out, inp] = moduleShape(cfg, m.module);
    const aShape = shapeOf(m.a);
    const bShape = shapeOf(m.b);
    if (aShape.length !== 2 || aShape[1] !== inp || bShape.length !== 2 || bShape[0] !== out || aShape[0] !== bShape[1]) {
      throw new ExportError(adapter.header.file, m.a,
        `lora_A [${aShape.join(', ')}] / lora_B [${bShape.join(', ')}] do not fit ${m.module} [${out}, ${inp}] of the base model`,
        'The adapter was trained on a different base model');
    }
    const rank = aShape[0];
    if (rank !== adapter.r) {
      throw new ExportError(adapter.header.file, m.a, `rank ${rank} differs from adapter_config.json's r = ${adapter.r}`,
        'llama.cpp scales every module by alpha / its own rank; export an adapter with one rank');
    }
    const base = `blk.${m.layer}.${GGUF_MODULE_NAMES[m.module]}.weight`;
    const heads = arch.permuteQk ? qkHeads(cfg, m.module) : null;
    tensors.push({ name: `${base}.lora_a`, shape: [rank, inp], type, data: () => readTensorF32(adapter.header, m.a) });
    tensors.push({
      name: `${base}.lora_b`, shape: [out, rank], type,
      data: () => {
        const b = readTensorF32(adapter.header, m.b);
        return heads === null ? b : permuteRowsForGguf(b, out, rank, heads);
      },
    });
  }
  const meta = new Map<string, GgufValue>([
    ['general.architecture', gv.str(arch.name)],
    ['general.type', gv.str('adapter')],
    ['general.name', gv.str(opts.name ?? path.basename(adapter.dir))],
    ['general.alignment', gv.u32(32)],
    ['adapter.type', gv.str('lora')],
    ['adapter.lora.alpha', gv.f32(alpha)],
  ]);
  opts.onProgress?.({ phase: 'adapter', fraction: 0, message: `Writing ${tensors.length} LoRA tensors to ${opts.out}` });
  const bytes = writeGguf(opts.out, meta, tensors, (p) =>
    opts.onProgress?.({ phase: 'adapter', fraction: (p.index + 1) / p.count, message: p.tensor }), opts.token);
  return { file: opts.out, bytes, tensors: tensors.length, alpha };
}

// ---------------------------------------------------------------------------------------------
// Model

/** llama.cpp token types. */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface GgufVocab {
  tokens: string[];
  tokenTypes: number[];
  merges: string[];
  pre: string;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
  addBos: boolean;
  chatTemplate: string | null;
}

/** llama.cpp's pre-tokenizer name for a tokenizer.json pre_tokenizer (the regex decides how
 *  text is split before BPE merges). */
function preTokenizerName(pre: unknown, arch: HfModelConfig['arch']): string {
  const p = pre as Record<string, unknown> | null;
  if (p && p.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  const text = JSON.stringify(p ?? null);
  if (text.includes("(?i:'s|'t|'re|'ve|'m|'ll|'d)") && text.includes('\\\\p{N}{1,3}')) return 'llama-bpe';
  if (arch === 'qwen2' && text.includes("(?i:'s|'t|'re|'ve|'m|'ll|'d)")) return 'qwen2';
  return 'default';
}

export function readGgufVocab(modelDir: string, cfg: HfModelConfig): GgufVocab {
  const tokFile = path.join(modelDir, 'tokenizer.json');
  const tok = readJson(tokFile, 'The model folder needs its tokenizer.json (copy it from the base model)');
  const model = tok.model as Record<string, unknown> | undefined;
  if (!model || model.type !== 'BPE') {
    throw new ExportError(tokFile, 'model.type', `${JSON.stringify(model?.type)} tokenizers are not supported by this exporter`,
      'Only byte-level BPE tokenizers (Llama 3, Qwen2, GPT-2 style) are exported; use llama.cpp\'s convert_hf_to_gguf.py for SentencePiece models');
  }
  const vocab = model.vocab as Record<string, number>;
  if (!vocab || typeof vocab !== 'object') throw new ExportError(tokFile, 'model.vocab', 'is missing');
  const size = cfg.vocab;
  const tokens: (string | undefined)[] = new Array(size);
  const types: number[] = new Array(size).fill(TOKEN_TYPE.NORMAL);
  for (const [t, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || id < 0) throw new ExportError(tokFile, `model.vocab.${t}`, `id ${id} is not a non-negative integer`);
    if (id >= size) throw new ExportError(tokFile, `model.vocab.${t}`, `id ${id} is outside vocab_size ${size}`, 'config.json vocab_size must cover every token id');
    tokens[id] = t;
  }
  const added = Array.isArray(tok.added_tokens) ? tok.added_tokens as { id: number; content: string; special?: boolean }[] : [];
  for (const a of added) {
    if (!Number.isInteger(a.id) || a.id < 0 || a.id >= size) throw new ExportError(tokFile, 'added_tokens', `id ${a.id} of ${JSON.stringify(a.content)} is outside vocab_size ${size}`);
    tokens[a.id] = a.content;
    types[a.id] = a.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
  }
  for (let i = 0; i < size; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.UNUSED;
    }
  }
  const rawMerges = Array.isArray(model.merges) ? model.merges : [];
  const merges = rawMerges.map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2) return `${m[0]} ${m[1]}`;
    throw new ExportError(tokFile, `model.merges[${i}]`, 'is neither "a b" nor ["a", "b"]');
  });
  const tcFile = path.join(modelDir, 'tokenizer_config.json');
  const tc = fs.existsSync(tcFile) ? readJson(tcFile, 'Restore tokenizer_config.json from the model repository') : {};
  const idOf = (v: unknown): number | null => {
    const s = typeof v === 'string' ? v : v && typeof v === 'object' ? (v as { content?: unknown }).content : undefined;
    if (typeof s !== 'string') return null;
    const hit = added.find((a) => a.content === s);
    return hit ? hit.id : typeof vocab[s] === 'number' ? vocab[s] : null;
  };
  let chatTemplate: string | null = null;
  if (typeof tc.chat_template === 'string') chatTemplate = tc.chat_template;
  else if (Array.isArray(tc.chat_template)) {
    const def = (tc.chat_template as { name?: string; template?: string }[]).find((t) => t.name === 'default');
    chatTemplate = def?.template ?? null;
  }
  return {
    tokens: tokens as string[],
    tokenTypes: types,
    merges,
    pre: preTokenizerName(tok.pre_tokenizer, cfg.arch),
    bosTokenId: idOf(tc.bos_token) ?? cfg.bosTokenId,
    eosTokenId: idOf(tc.eos_token) ?? cfg.eosTokenId,
    padTokenId: idOf(tc.pad_token),
    addBos: tc.add_bos_token === true,
    chatTemplate,
  };
}

export interface ModelGgufOptions {
  modelDir: string;
  out: string;
  outType?: GgufModelOutType;
  name?: string;
  onProgress?: ProgressCallback;
  /** Checked between tensors; a cancelled export leaves no file. */
  token?: CancellationToken;
}

export interface ModelGgufResult {
  file: string;
  bytes: number;
  tensors: number;
  architecture: string;
}

/** The GGUF model tensors in convert_hf_to_gguf.py's order, read lazily from the HF folder. */
export function modelGgufTensors(model: HfModel, outType: GgufModelOutType): GgufTensor[] {
  const cfg = model.config;
  const arch = ggufArchitecture(cfg);
  const big = outType === 'f16' ? GgmlType.F16 : outType === 'q8_0' ? GgmlType.Q8_0 : GgmlType.F32;
  const tensors: GgufTensor[] = [];
  const add = (name: string, hfName: string, shape: number[], permuteHeads: number | null = null) => {
    // Norms, biases and rope factors stay f32 like convert_hf_to_gguf.py does for 1-D tensors;
    // a matrix whose rows do not split into Q8_0 blocks falls back to f16, as it does there too.
    let type = shape.length === 1 ? GgmlType.F32 : big;
    if (type === GgmlType.Q8_0 && shape[shape.length - 1] % Q8_0_BLOCK !== 0) type = GgmlType.F16;
    tensors.push({
      name, shape, type,
      data: () => {
        const v = model.read(hfName, shape);
        return permuteHeads === null ? v : permuteRowsForGguf(v, shape[0], shape.length === 2 ? shape[1] : 1, permuteHeads);
      },
    });
  };
  add('token_embd.weight', 'model.embed_tokens.weight', [cfg.vocab, cfg.hidden]);
  if (cfg.ropeScaling?.type === 'llama3') {
    const factors = ropeFreqFactors(cfg);
    tensors.push({ name: 'rope_freqs.weight', shape: [factors.length], type: GgmlType.F32, data: () => factors });
  }
  for (let i = 0; i < cfg.layers; i++) {
    const p = `model.layers.${i}`;
    add(`blk.${i}.attn_norm.weight`, `${p}.input_layernorm.weight`, [cfg.hidden]);
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']) {
      const shape = moduleShape(cfg, m);
      const heads = arch.permuteQk ? qkHeads(cfg, m) : null;
      add(`blk.${i}.${GGUF_MODULE_NAMES[m]}.weight`, `${p}.${MODULE_PARENT[m]}.${m}.weight`, shape, heads);
      if (cfg.qkvBias && (m === 'q_proj' || m === 'k_proj' || m === 'v_proj')) {
        add(`blk.${i}.${GGUF_MODULE_NAMES[m]}.bias`, `${p}.self_attn.${m}.bias`, [shape[0]], heads);
      }
    }
    add(`blk.${i}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`, [cfg.hidden]);
  }
  add('output_norm.weight', 'model.norm.weight', [cfg.hidden]);
  // A tied model has no lm_head; llama.cpp then reuses token_embd, as convert_hf_to_gguf.py expects.
  if (!cfg.tie || model.has('lm_head.weight')) add('output.weight', 'lm_head.weight', [cfg.vocab, cfg.hidden]);
  return tensors;
}

/** llama_ftype: 0 = ALL_F32, 1 = MOSTLY_F16, 7 = MOSTLY_Q8_0. */
const FILE_TYPE: Record<GgufModelOutType, number> = { f32: 0, f16: 1, q8_0: 7 };

export function modelGgufMetadata(model: HfModel, outType: GgufModelOutType, name: string): Map<string, GgufValue> {
  const cfg = model.config;
  const a = ggufArchitecture(cfg).name;
  const vocab = readGgufVocab(model.dir, cfg);
  const meta = new Map<string, GgufValue>([
    ['general.architecture', gv.str(a)],
    ['general.type', gv.str('model')],
    ['general.name', gv.str(name)],
    ['general.alignment', gv.u32(32)],
    ['general.file_type', gv.u32(FILE_TYPE[outType])],
    [`${a}.vocab_size`, gv.u32(cfg.vocab)],
    [`${a}.context_length`, gv.u32(cfg.maxPositions)],
    [`${a}.embedding_length`, gv.u32(cfg.hidden)],
    [`${a}.block_count`, gv.u32(cfg.layers)],
    [`${a}.feed_forward_length`, gv.u32(cfg.intermediate)],
    [`${a}.rope.dimension_count`, gv.u32(cfg.headDim)],
    [`${a}.attention.head_count`, gv.u32(cfg.heads)],
    [`${a}.attention.head_count_kv`, gv.u32(cfg.kvHeads)],
    [`${a}.attention.key_length`, gv.u32(cfg.headDim)],
    [`${a}.attention.value_length`, gv.u32(cfg.headDim)],
    [`${a}.attention.layer_norm_rms_epsilon`, gv.f32(cfg.rmsNormEps)],
    [`${a}.rope.freq_base`, gv.f32(cfg.ropeTheta)],
  ]);
  if (cfg.ropeScaling?.type === 'linear') {
    meta.set(`${a}.rope.scaling.type`, gv.str('linear'));
    meta.set(`${a}.rope.scaling.factor`, gv.f32(cfg.ropeScaling.factor));
  }
  meta.set('tokenizer.ggml.model', gv.str('gpt2'));
  meta.set('tokenizer.ggml.pre', gv.str(vocab.pre));
  meta.set('tokenizer.ggml.tokens', gv.strs(vocab.tokens));
  meta.set('tokenizer.ggml.token_type', gv.i32s(vocab.tokenTypes));
  meta.set('tokenizer.ggml.merges', gv.strs(vocab.merges));
  if (vocab.bosTokenId !== null) meta.set('tokenizer.ggml.bos_token_id', gv.u32(vocab.bosTokenId));
  if (vocab.eosTokenId !== null) meta.set('tokenizer.ggml.eos_token_id', gv.u32(vocab.eosTokenId));
  if (vocab.padTokenId !== null) meta.set('tokenizer.ggml.padding_token_id', gv.u32(vocab.padTokenId));
  meta.set('tokenizer.ggml.add_bos_token', gv.bool(vocab.addBos));
  if (vocab.chatTemplate) meta.set('tokenizer.chat_template', gv.str(vocab.chatTemplate));
  return meta;
}

export function exportModelGguf(opts: ModelGgufOptions): ModelGgufResult {
  const model = openHfModel(opts.modelDir);
  const outType = opts.outType ?? 'f16';
  const meta = modelGgufMetadata(model, outType, opts.name ?? path.basename(model.dir));
  const tensors = modelGgufTensors(model, outType);
  opts.onProgress?.({ phase: 'model', fraction: 0, message: `Writing ${tensors.length} tensors to ${opts.out}` });
  const bytes = writeGguf(opts.out, meta, tensors, (p) =>
    opts.onProgress?.({ phase: 'model', fraction: p.bytesTotal ? p.bytesWritten / p.bytesTotal : 1, message: p.tensor }), opts.token);
  return { file: opts.out, bytes, tensors: tensors.length, architecture: ggufArchitecture(model.config).name };
}

// ---------------------------------------------------------------------------------------------
// Ollama Modelfile

/** Ollama (Go text/template) equivalents of chat template families we can recognise for sure.
 *  Anything else is left to Ollama, which reads tokenizer.chat_template from the GGUF. */
function ollamaTemplate(chatTemplate: string | null): { template: string; stops: string[] } | null {
  if (!chatTemplate) return null;
  if (chatTemplate.includes('<|start_header_id|>') && chatTemplate.includes('<|eot_id|>')) {
    return {
      template: '{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}' +
        '{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
      stops: ['<|eot_id|>'],
    };
  }
  if (chatTemplate.includes('<|im_start|>') && chatTemplate.includes('<|im_end|>')) {
    return {
      template: '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' +
        '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n',
      stops: ['<|im_end|>'],
    };
  }
  return null;
}

function quoteModelfile(s: string): string {
  if (s.includes('"""')) throw new Error('template contains """, which a Modelfile cannot quote');
  return `"""${s}"""`;
}

export interface ModelfileOptions {
  /** Path of the base GGUF as Ollama should read it (relative to the Modelfile, or absolute). */
  from: string;
  adapter?: string;
  chatTemplate?: string | null;
  system?: string;
}

export function buildModelfile(opts: ModelfileOptions): string {
  const lines = [`FROM ${opts.from}`];
  if (opts.adapter) lines.push(`ADAPTER ${opts.adapter}`);
  const t = ollamaTemplate(opts.chatTemplate ?? null);
  if (t) {
    lines.push(`TEMPLATE ${quoteModelfile(t.template)}`);
    for (const s of t.stops) lines.push(`PARAMETER stop ${JSON.stringify(s)}`);
  } else if (opts.chatTemplate) {
    lines.push('# The chat template is not a known family; Ollama uses tokenizer.chat_template from the GGUF.');
  } else {
    lines.push('# No chat template: the model is used for plain text completion.');
  }
  if (opts.system) lines.push(`SYSTEM ${quoteModelfile(opts.system)}`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// One call for the extension and the CLI

export interface ExportGgufOptions {
  /** HF model folder: the base (for use with the adapter) or a merged model. */
  modelDir: string;
  /** PEFT adapter folder; when given, an adapter GGUF and a Modelfile with ADAPTER are written. */
  adapterDir?: string;
  outDir: string;
  outType?: GgufModelOutType;
  /** Adapter precision; defaults to f32 (adapters are small). */
  adapterOutType?: GgufOutType;
  /** Skip the model GGUF (e.g. when the base GGUF already exists). */
  skipModel?: boolean;
  name?: string;
  onProgress?: ProgressCallback;
  /** Checked between tensors; files finished before the cancel stay, the one being written is removed. */
  token?: CancellationToken;
}

export interface ExportGgufResult {
  model: ModelGgufResult | null;
  adapter: AdapterGgufResult | null;
  modelfile: string;
}

export function exportGguf(opts: ExportGgufOptions): ExportGgufResult {
  const outDir = path.resolve(opts.outDir);
  fs.mkdirSync(outDir, { recursive: true });
  const name = opts.name ?? path.basename(path.resolve(opts.modelDir));
  const outType = opts.outType ?? 'f16';
  const modelFile = path.join(outDir, `${name}-${outType}.gguf`);
  const report = (phase: string, lo: number, hi: number): ProgressCallback | undefined =>
    opts.onProgress && ((p) => opts.onProgress!({ ...p, phase, fraction: lo + (hi - lo) * p.fraction }));
  const split = opts.adapterDir ? 0.9 : 1;
  const model = opts.skipModel ? null : exportModelGguf({ modelDir: opts.modelDir, out: modelFile, outType, name, onProgress: report('model', 0, split), token: opts.token });
  const adapter = opts.adapterDir
    ? exportAdapterGguf({
      adapterDir: opts.adapterDir, modelDir: opts.modelDir, out: path.join(outDir, `${name}-lora-${opts.adapterOutType ?? 'f32'}.gguf`),
      outType: opts.adapterOutType ?? 'f32', name: `${name}-lora`, onProgress: report('adapter', split, 1), token: opts.token,
    })
    : null;
  const cfg = readHfConfig(opts.modelDir);
  const vocab = readGgufVocab(path.resolve(opts.modelDir), cfg);
  const modelfile = path.join(outDir, 'Modelfile');
  throwIfCancelled(opts.token, modelfile);
  fs.writeFileSync(modelfile, buildModelfile({
    from: `./${path.basename(modelFile)}`,
    adapter: adapter ? `./${path.basename(adapter.file)}` : undefined,
    chatTemplate: vocab.chatTemplate,
  }));
  opts.onProgress?.({ phase: 'done', fraction: 1, message: `Wrote ${modelfile}` });
  return { model, adapter, modelfile };
}
