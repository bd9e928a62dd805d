// TrainConfig: what a user chooses for a fine-tune (the CLI's --config file, the panel's form),
// with defaults, presets, field-level validation, and the conversion to DESIGN.md's run.json.
// Ranges mirror the runtime's run.json validation (native-runtime/src/train/run_config.cpp),
// so a config that passes here is not rejected by the runtime for a range.
import * as path from 'node:path';

export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];
export const ATTENTION_TARGETS: readonly LoraTarget[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
export type QuantType = 'none' | 'nf4' | 'fp4' | 'int8';
export type ScheduleName = 'constant' | 'linear' | 'cosine';
export type OptimizerName = 'adamw' | 'sgd';
export type ComputeDtype = 'fp32' | 'bf16' | 'fp16';
export type DataFormat = 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text';
export type TemplateChoice = 'model' | 'llama3' | 'chatml' | 'mistral' | 'gemma' | 'alpaca';

export interface TrainConfig {
  /** HF model folder. */
  model: string;
  /** Dataset file (.jsonl, .json or .csv). */
  data: string;
  dataOptions: {
    evalData: string | null;
    /** Fraction of rows held out for eval when there is no evalData (0 = none). */
    evalSplit: number;
    format: DataFormat;
    template: TemplateChoice;
    trainOn: 'completion' | 'all';
    assistantTurns: 'all' | 'last';
    overLength: 'truncate' | 'drop';
    foldSystemIntoUser: boolean;
  };
  lora: { r: number; alpha: number; dropout: number; rslora: boolean; targets: string[]; initAdapter: string | null };
  quant: { type: QuantType; doubleQuant: boolean; blockSize: number };
  train: {
    seqLen: number;
    microBatch: number;
    gradAccum: number;
    epochs: number;
    maxSteps: number | null;
    optimizer: OptimizerName;
    lr: number;
    schedule: ScheduleName;
    warmupSteps: number;
    weightDecay: number;
    maxGradNorm: number;
    gradCheckpointing: boolean;
    seed: number;
    evalEvery: number;
    saveEvery: number;
    earlyStoppingPatience: number;
  };
  /** offloadActivations (CUDA only): checkpointed layer inputs wait in pinned host memory
   *  between forward and backward, for less GPU memory at the same results. Optional so that
   *  configs written before it existed stay valid; absent means false. */
  compute: { device: string; dtype: ComputeDtype; threads: number; offloadActivations?: boolean };
}

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends (infer U)[] ? U[] : T[K] extends object | null ? DeepPartial<T[K]> | T[K] : T[K] };

export function defaultConfig(): TrainConfig {
  return {
    model: '',
    data: '',
    dataOptions: {
      evalData: null, evalSplit: 0.05, format: 'auto', template: 'model', trainOn: 'completion',
      assistantTurns: 'all', overLength: 'truncate', foldSystemIntoUser: false,
    },
    lora: { r: 16, alpha: 32, dropout: 0.05, rslora: false, targets: [...LORA_TARGETS], initAdapter: null },
    quant: { type: 'nf4', doubleQuant: true, blockSize: 64 },
    train: {
      seqLen: 2048, microBatch: 1, gradAccum: 8, epochs: 1, maxSteps: null, optimizer: 'adamw', lr: 2e-4,
      schedule: 'cosine', warmupSteps: 10, weightDecay: 0, maxGradNorm: 1, gradCheckpointing: true, seed: 42,
      evalEvery: 50, saveEvery: 100, earlyStoppingPatience: 0,
    },
    compute: { device: 'auto', dtype: 'bf16', threads: 0, offloadActivations: false },
  };
}

export interface Preset {
  id: string;
  label: string;
  description: string;
  overrides: DeepPartial<TrainConfig>;
}

export const PRESETS: readonly Preset[] = [
  {
    id: 'qlora-default',
    label: 'QLoRA (recommended)',
    description: 'NF4 base with double quantization, LoRA r=16 on all linear layers, lr 2e-4 cosine: the QLoRA paper\'s recipe.',
    overrides: { quant: { type: 'nf4', doubleQuant: true }, lora: { r: 16, alpha: 32, dropout: 0.05, targets: [...LORA_TARGETS] }, train: { lr: 2e-4, schedule: 'cosine' } },
  },
  {
    id: 'all-linear',
    label: 'LoRA, all linear layers',
    description: 'Unquantized base (needs the most memory), LoRA on q,k,v,o,gate,up,down.',
    overrides: { quant: { type: 'none', doubleQuant: false }, lora: { r: 16, alpha: 32, targets: [...LORA_TARGETS] } },
  },
  {
    id: 'attention-only',
    label: 'LoRA, attention only',
    description: 'LoRA on q,k,v,o only: fewer trainable parameters, the original LoRA paper\'s setting.',
    overrides: { lora: { r: 16, alpha: 32, targets: [...ATTENTION_TARGETS] } },
  },
  {
    id: 'cpu-quick',
    label: 'Quick CPU test',
    description: 'Short sequences and few steps so a tiny model trains on a CPU in about a minute.',
    overrides: {
      quant: { type: 'none', doubleQuant: false },
      lora: { r: 8, alpha: 16, dropout: 0 },
      train: { seqLen: 256, microBatch: 4, gradAccum: 1, lr: 1e-3, warmupSteps: 5, evalEvery: 20, saveEvery: 50, gradCheckpointing: false },
      compute: { device: 'cpu', dtype: 'fp32' },
    },
  },
];

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge: objects merge, arrays and scalars replace, undefined keeps the base. */
export function mergeConfig<T>(base: T, overrides: DeepPartial<T> | undefined): T {
  if (!overrides) return structuredClone(base);
  const out = structuredClone(base) as Record<string, unknown>;
  for (const [k, v] of Object.entries(overrides as Record<string, unknown>)) {
    if (v === undefined) continue;
    const cur = out[k];
    out[k] = isPlainObject(v) && isPlainObject(cur) ? mergeConfig(cur, v) : structuredClone(v);
  }
  return out as T;
}

export function findPreset(id: string): Preset | undefined {
  return PRESETS.find((p) => p.id === id);
}

/**
 * The defaults and presets name the Llama family's modules. On a model with other module
 * names (GPT-2: c_attn, c_proj, c_fc) a Llama-only list is carried over by intent: the
 * attention set becomes the model's attention module (c_attn, PEFT's default for gpt2),
 * a list with MLP modules becomes every module of the model. Lists that already use the
 * model's names, or mix names, are returned unchanged for validateConfig to judge.
 */
export function targetsForModel(targets: readonly string[], modelTargets: readonly string[]): string[] {
  const llamaOnly = targets.length > 0 && targets.every((t) => (LORA_TARGETS as readonly string[]).includes(t));
  if (!llamaOnly || targets.some((t) => modelTargets.includes(t)) || !modelTargets.includes('c_attn')) return [...targets];
  const mlp = targets.some((t) => t === 'gate_proj' || t === 'up_proj' || t === 'down_proj');
  return mlp ? [...modelTargets] : ['c_attn'];
}

export function applyPreset(base: TrainConfig, presetId: string): TrainConfig {
  const p = findPreset(presetId);
  if (!p) throw new ConfigError([{ field: 'preset', message: `unknown preset "${presetId}"`, hint: `use one of ${PRESETS.map((x) => x.id).join(', ')}` }]);
  return mergeConfig(base, p.overrides);
}

export interface ConfigIssue {
  /** Dotted path of the field, e.g. "lora.r". */
  field: string;
  message: string;
  hint?: string;
  severity?: 'error' | 'warning';
}

export class ConfigError extends Error {
  constructor(readonly issues: ConfigIssue[], readonly source?: string) {
    super(issues.map((i) => `${source ? `${source}: ` : ''}${i.field}: ${i.message}${i.hint ? ` (${i.hint})` : ''}`).join('\n'));
    this.name = 'ConfigError';
  }
}

export interface ValidateContext {
  /** Target modules the model has (from inspect); checks lora.targets when given. */
  modelTargets?: readonly string[];
  /** Smallest in/out feature size among the targeted layers; r must not exceed it. */
  minTargetDim?: number;
  /** Whether the runtime can train on a GPU here (`lora-runtime --version`'s `cuda`: built
   *  with CUDA and a supported GPU present); cuda:N devices are refused without it. */
  cuda?: boolean;
}

/** Returns every problem with the config (errors and warnings); empty when it is fine. */
export function validateConfig(c: TrainConfig, ctx: ValidateContext = {}): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const err = (field: string, message: string, hint?: string) => issues.push({ field, message, hint, severity: 'error' });
  const warn = (field: string, message: string, hint?: string) => issues.push({ field, message, hint, severity: 'warning' });
  const int = (field: string, v: unknown, min: number, max: number, hint?: string) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) err(field, `must be an integer, got ${JSON.stringify(v)}`, hint ?? `use an integer from ${min} to ${max}`);
    else if (v < min || v > max) err(field, `is ${v}, outside ${min}..${max}`, hint ?? `use an integer from ${min} to ${max}`);
  };
  const num = (field: string, v: unknown, min: number, max: number, minExclusive: boolean, maxExclusive: boolean, hint: string) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) return err(field, `must be a number, got ${JSON.stringify(v)}`, hint);
    if (v < min || (minExclusive && v === min) || v > max || (maxExclusive && v === max)) err(field, `is ${v}, out of range`, hint);
  };
  const oneOf = <T extends string>(field: string, v: unknown, options: readonly T[]) => {
    if (typeof v !== 'string' || !options.includes(v as T)) err(field, `is ${JSON.stringify(v)}, not a valid choice`, `use one of ${options.join(', ')}`);
  };
  const bool = (field: string, v: unknown) => {
    if (typeof v !== 'boolean') err(field, `must be true or false, got ${JSON.stringify(v)}`);
  };

  if (typeof c.model !== 'string' || c.model.trim() === '') err('model', 'is missing', 'choose an HF model folder containing config.json and *.safetensors');
  if (typeof c.data !== 'string' || c.data.trim() === '') err('data', 'is missing', 'choose a dataset file (.jsonl, .json or .csv)');

  const d = c.dataOptions;
  if (d.evalData !== null && (typeof d.evalData !== 'string' || d.evalData === '')) err('dataOptions.evalData', 'must be a file path or null');
  num('dataOptions.evalSplit', d.evalSplit, 0, 0.5, false, false, 'use a fraction from 0 (no eval) to 0.5, e.g. 0.05');
  if (d.evalData && d.evalSplit > 0) warn('dataOptions.evalSplit', 'is ignored because evalData is set');
  oneOf('dataOptions.format', d.format, ['auto', 'messages', 'alpaca', 'prompt_completion', 'text'] as const);
  oneOf('dataOptions.template', d.template, ['model', 'llama3', 'chatml', 'mistral', 'gemma', 'alpaca'] as const);
  oneOf('dataOptions.trainOn', d.trainOn, ['completion', 'all'] as const);
  oneOf('dataOptions.assistantTurns', d.assistantTurns, ['all', 'last'] as const);
  oneOf('dataOptions.overLength', d.overLength, ['truncate', 'drop'] as const);
  bool('dataOptions.foldSystemIntoUser', d.foldSystemIntoUser);

  const l = c.lora;
  int('lora.r', l.r, 1, 4096, 'use a rank from 1 to 4096; 8 to 64 is typical');
  if (ctx.minTargetDim !== undefined && Number.isInteger(l.r) && l.r > ctx.minTargetDim) {
    err('lora.r', `is ${l.r}, larger than the smallest targeted layer dimension ${ctx.minTargetDim}`, `use r <= ${ctx.minTargetDim}`);
  }
  num('lora.alpha', l.alpha, 0, 1e6, true, false, 'use a positive number, commonly 2 × r');
  num('lora.dropout', l.dropout, 0, 1, false, true, 'use a value in [0, 1), e.g. 0.05');
  bool('lora.rslora', l.rslora);
  if (!Array.isArray(l.targets) || l.targets.length === 0) {
    err('lora.targets', 'must list at least one module', `e.g. ${ATTENTION_TARGETS.join(', ')}`);
  } else {
    const seen = new Set<string>();
    for (const t of l.targets) {
      if (typeof t !== 'string') { err('lora.targets', `contains ${JSON.stringify(t)}, not a module name`); continue; }
      if (seen.has(t)) err('lora.targets', `lists "${t}" twice`, 'list each module once');
      seen.add(t);
      const known = ctx.modelTargets ?? LORA_TARGETS;
      if (!known.includes(t)) {
        err('lora.targets', `names "${t}", which ${ctx.modelTargets ? 'this model does not have' : 'is not a supported module'}`, `choose from ${known.join(', ')}`);
      }
    }
  }
  if (l.initAdapter !== null && (typeof l.initAdapter !== 'string' || l.initAdapter === '')) err('lora.initAdapter', 'must be an adapter folder or null');

  const q = c.quant;
  oneOf('quant.type', q.type, ['none', 'nf4', 'fp4', 'int8'] as const);
  bool('quant.doubleQuant', q.doubleQuant);
  int('quant.blockSize', q.blockSize, 16, 4096, 'use 64 (QLoRA), or another power of two from 16 to 4096');
  if (Number.isInteger(q.blockSize) && q.blockSize > 0 && (q.blockSize & (q.blockSize - 1)) !== 0) {
    err('quant.blockSize', `is ${q.blockSize}, not a power of two`, 'use 64 (QLoRA), or another power of two from 16 to 4096');
  }

  const t = c.train;
  int('train.seqLen', t.seqLen, 2, 1 << 20);
  int('train.microBatch', t.microBatch, 1, 4096);
  int('train.gradAccum', t.gradAccum, 1, 1 << 16);
  int('train.epochs', t.epochs, 1, 100000);
  if (t.maxSteps !== null) int('train.maxSteps', t.maxSteps, 1, 2 ** 40, 'use a positive step count, or null to train for the given epochs');
  oneOf('train.optimizer', t.optimizer, ['adamw', 'sgd'] as const);
  num('train.lr', t.lr, 0, 10, true, false, 'use a positive learning rate; 1e-4 to 3e-4 is typical for LoRA');
  if (typeof t.lr === 'number' && t.lr > 0.01 && t.lr <= 10) warn('train.lr', `is ${t.lr}, unusually high for LoRA`, 'training may diverge; 1e-4 to 1e-3 is typical');
  oneOf('train.schedule', t.schedule, ['constant', 'linear', 'cosine'] as const);
  int('train.warmupSteps', t.warmupSteps, 0, 2 ** 40);
  num('train.weightDecay', t.weightDecay, 0, 10, false, false, 'use a value from 0 to 10, usually 0 or 0.01');
  num('train.maxGradNorm', t.maxGradNorm, 0, 1e9, false, false, 'use a positive norm, or 0 to turn clipping off');
  bool('train.gradCheckpointing', t.gradCheckpointing);
  int('train.seed', t.seed, 0, 2 ** 53);
  int('train.evalEvery', t.evalEvery, 0, 2 ** 40, 'use a step interval, or 0 to turn periodic eval off');
  int('train.saveEvery', t.saveEvery, 0, 2 ** 40, 'use a step interval, or 0 to turn periodic checkpoints off');
  int('train.earlyStoppingPatience', t.earlyStoppingPatience, 0, 1 << 20);
  const hasEval = d.evalData !== null || d.evalSplit > 0;
  if (t.earlyStoppingPatience > 0 && !hasEval) err('train.earlyStoppingPatience', 'needs an eval set', 'set dataOptions.evalData or evalSplit, or earlyStoppingPatience to 0');
  if (t.earlyStoppingPatience > 0 && t.evalEvery === 0) err('train.earlyStoppingPatience', 'needs periodic eval', 'set train.evalEvery > 0, or earlyStoppingPatience to 0');

  const k = c.compute;
  if (typeof k.device !== 'string' || !/^(auto|cpu|cuda:\d+)$/.test(k.device)) {
    err('compute.device', `is ${JSON.stringify(k.device)}`, 'use "auto", "cpu" or "cuda:N"');
  } else if (k.device.startsWith('cuda:') && ctx.cuda === false) {
    err('compute.device', `asks for ${k.device}, but the runtime cannot use a GPU here (built without CUDA, or no GPU of compute capability 8.0 or newer)`,
      'use "auto" or "cpu"; `lora-runtime devices` lists the GPUs the driver reports');
  }
  oneOf('compute.dtype', k.dtype, ['fp32', 'bf16', 'fp16'] as const);
  int('compute.threads', k.threads, 0, 1024, 'use 0 for all cores, or a thread count');
  if (k.offloadActivations !== undefined) bool('compute.offloadActivations', k.offloadActivations);
  return issues;
}

export function hasErrors(issues: readonly ConfigIssue[]): boolean {
  return issues.some((i) => i.severity !== 'warning');
}

/** Reads a user config (a partial TrainConfig, e.g. from `--config FILE`) over the defaults.
 *  Unknown keys are errors, so a typo never silently falls back to a default. */
export function parseConfig(json: unknown, source = 'config', base: TrainConfig = defaultConfig()): TrainConfig {
  if (!isPlainObject(json)) throw new ConfigError([{ field: '(root)', message: 'must be a JSON object' }], source);
  const issues: ConfigIssue[] = [];
  let preset: string | undefined;
  const input = { ...json };
  if ('preset' in input) {
    if (typeof input.preset !== 'string' || !findPreset(input.preset)) {
      issues.push({ field: 'preset', message: `unknown preset ${JSON.stringify(input.preset)}`, hint: `use one of ${PRESETS.map((p) => p.id).join(', ')}` });
    } else {
      preset = input.preset;
    }
    delete input.preset;
  }
  checkKeys(input, base as unknown as Record<string, unknown>, '', issues);
  if (issues.length) throw new ConfigError(issues, source);
  const withPreset = preset ? applyPreset(base, preset) : base;
  return mergeConfig(withPreset, input as DeepPartial<TrainConfig>);
}

function checkKeys(input: Record<string, unknown>, shape: Record<string, unknown>, prefix: string, issues: ConfigIssue[]): void {
  for (const [k, v] of Object.entries(input)) {
    const field = prefix ? `${prefix}.${k}` : k;
    if (!(k in shape)) {
      issues.push({ field, message: 'is not a known setting', hint: `known here: ${Object.keys(shape).join(', ')}` });
    } else if (isPlainObject(shape[k])) {
      if (!isPlainObject(v)) issues.push({ field, message: 'must be an object' });
      else checkKeys(v, shape[k] as Record<string, unknown>, field, issues);
    }
  }
}

export interface RunJsonPaths {
  /** Absolute model folder. */
  model: string;
  /** Shard paths as they go into run.json (relative to the run folder, or absolute). */
  train: string;
  eval: string | null;
  /** Free-form information for people and tools (the runtime ignores it). */
  meta?: Record<string, unknown>;
}

/** The run.json object of DESIGN.md. */
export function toRunJson(c: TrainConfig, paths: RunJsonPaths): Record<string, unknown> {
  const run: Record<string, unknown> = {
    v: 1,
    model: path.resolve(paths.model),
    data: { train: paths.train, eval: paths.eval },
    lora: {
      r: c.lora.r, alpha: c.lora.alpha, dropout: c.lora.dropout, rslora: c.lora.rslora,
      targets: [...c.lora.targets], init_adapter: c.lora.initAdapter ? path.resolve(c.lora.initAdapter) : null,
    },
    quant: { type: c.quant.type, double_quant: c.quant.type !== 'none' && c.quant.doubleQuant, block_size: c.quant.blockSize },
    train: {
      seq_len: c.train.seqLen, micro_batch: c.train.microBatch, grad_accum: c.train.gradAccum, epochs: c.train.epochs,
      max_steps: c.train.maxSteps, optimizer: c.train.optimizer, lr: c.train.lr, schedule: c.train.schedule,
      warmup_steps: c.train.warmupSteps, weight_decay: c.train.weightDecay, max_grad_norm: c.train.maxGradNorm,
      grad_checkpointing: c.train.gradCheckpointing, seed: c.train.seed, eval_every: paths.eval ? c.train.evalEvery : 0,
      save_every: c.train.saveEvery, early_stopping_patience: paths.eval ? c.train.earlyStoppingPatience : 0,
    },
    // offload_activations only when on: run.json stays as before for everyone else.
    compute: {
      device: c.compute.device, dtype: c.compute.dtype, threads: c.compute.threads,
      ...(c.compute.offloadActivations ? { offload_activations: true } : {}),
    },
  };
  if (paths.meta) run.meta = paths.meta;
  return run;
}

/** Recovers the training settings of an existing run.json (resume, compare). Dataset settings
 *  are not in run.json; they come from meta.config when the run was created by LoRA Studio. */
export function fromRunJson(run: Record<string, unknown>): TrainConfig {
  const metaConfig = isPlainObject(run.meta) && isPlainObject(run.meta.config) ? (run.meta.config as DeepPartial<TrainConfig>) : undefined;
  const c = mergeConfig(defaultConfig(), metaConfig);
  const get = (o: unknown, k: string): unknown => (isPlainObject(o) ? o[k] : undefined);
  const set = <T>(v: unknown, apply: (x: T) => void) => { if (v !== undefined) apply(v as T); };
  set<string>(run.model, (v) => (c.model = v));
  const lora = run.lora, quant = run.quant, train = run.train, compute = run.compute;
  set<number>(get(lora, 'r'), (v) => (c.lora.r = v));
  set<number>(get(lora, 'alpha'), (v) => (c.lora.alpha = v));
  set<number>(get(lora, 'dropout'), (v) => (c.lora.dropout = v));
  set<boolean>(get(lora, 'rslora'), (v) => (c.lora.rslora = v));
  set<string[]>(get(lora, 'targets'), (v) => (c.lora.targets = v));
  set<string | null>(get(lora, 'init_adapter'), (v) => (c.lora.initAdapter = v));
  set<QuantType>(get(quant, 'type'), (v) => (c.quant.type = v));
  set<boolean>(get(quant, 'double_quant'), (v) => (c.quant.doubleQuant = v));
  set<number>(get(quant, 'block_size'), (v) => (c.quant.blockSize = v));
  const tmap: [string, keyof TrainConfig['train']][] = [
    ['seq_len', 'seqLen'], ['micro_batch', 'microBatch'], ['grad_accum', 'gradAccum'], ['epochs', 'epochs'],
    ['max_steps', 'maxSteps'], ['optimizer', 'optimizer'], ['lr', 'lr'], ['schedule', 'schedule'],
    ['warmup_steps', 'warmupSteps'], ['weight_decay', 'weightDecay'], ['max_grad_norm', 'maxGradNorm'],
    ['grad_checkpointing', 'gradCheckpointing'], ['seed', 'seed'], ['eval_every', 'evalEvery'],
    ['save_every', 'saveEvery'], ['early_stopping_patience', 'earlyStoppingPatience'],
  ];
  for (const [snake, camel] of tmap) set<never>(get(train, snake), (v) => ((c.train as Record<string, unknown>)[camel] = v));
  set<string>(get(compute, 'device'), (v) => (c.compute.device = v));
  set<ComputeDtype>(get(compute, 'dtype'), (v) => (c.compute.dtype = v));
  set<number>(get(compute, 'threads'), (v) => (c.compute.threads = v));
  set<boolean>(get(compute, 'offload_activations'), (v) => (c.compute.offloadActivations = v));
  return c;
}

/** Field-by-field differences between two configs, for comparing runs. */
export function diffConfigs(a: TrainConfig, b: TrainConfig): { field: string; a: unknown; b: unknown }[] {
  const out: { field: string; a: unknown; b: unknown }[] = [];
  const walk = (x: unknown, y: unknown, prefix: string) => {
    if (isPlainObject(x) && isPlainObject(y)) {
      for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) walk(x[k], y[k], prefix ? `${prefix}.${k}` : k);
    } else if (JSON.stringify(x) !== JSON.stringify(y)) {
      out.push({ field: prefix, a: x, b: y });
    }
  };
  walk(a, b, '');
  return out;
}
