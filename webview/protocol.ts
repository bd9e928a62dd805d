// The message contract between the extension host and the training panel.
// Both sides import this file and validate every message they receive with the parsers
// below before acting on it: a webview is untrusted input to the host, and a stale or
// compromised host message must not put the panel into an impossible state.
// This module is pure (no DOM, no Node, no vscode) so it bundles into both.

export const PROTOCOL_VERSION = 1;

export type QuantType = 'none' | 'nf4' | 'fp4' | 'int8';
export type Schedule = 'constant' | 'linear' | 'cosine';
export const QUANT_TYPES: readonly QuantType[] = ['none', 'nf4', 'fp4', 'int8'];
export const SCHEDULES: readonly Schedule[] = ['constant', 'linear', 'cosine'];
export const ALL_LINEAR_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
export const ATTENTION_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];

/** What the form edits. The host turns it into the core TrainConfig and run.json. */
export interface PanelConfig {
  model: string;
  data: string;
  preset: string;
  lora: { r: number; alpha: number; dropout: number; rslora: boolean; targets: string[] };
  quant: { type: QuantType; doubleQuant: boolean };
  train: {
    lr: number;
    schedule: Schedule;
    warmupSteps: number;
    epochs: number;
    maxSteps: number | null;
    seqLen: number;
    microBatch: number;
    gradAccum: number;
    evalSplit: number;
    gradCheckpointing: boolean;
    saveEvery: number;
  };
}

export interface PresetInfo { id: string; label: string; description: string; config: PanelConfig }
export interface CachedModel { path: string; repoId: string; arch: string; sizeBytes: number }
export interface DeviceInfo { name: string; kind: 'cpu' | 'cuda'; memoryTotal: number; memoryFree: number }

export interface ModelSummary {
  path: string;
  arch: string;
  layers: number;
  hidden: number;
  paramsTotal: number;
  sizeBytes: number;
  dtype: string;
  targets: string[];
}

export interface DiagnosticInfo {
  severity: 'error' | 'warning' | 'info';
  code: string;
  message: string;
  line?: number;
  row?: number;
  hint?: string;
}

export interface DatasetSummaryInfo {
  path: string;
  format: string;
  rows: number;
  errors: number;
  warnings: number;
  diagnostics: DiagnosticInfo[];
}

export interface PreviewSegment { text: string; trained: boolean }
export interface PreviewRowInfo { row: number; segments: PreviewSegment[] }

export interface EstimatePart { label: string; bytes: number }
export interface EstimateInfo {
  parts: EstimatePart[];
  totalBytes: number;
  deviceName: string | null;
  deviceFreeBytes: number | null;
  trainableParams: number;
  totalParams: number;
}

/** The runtime events the charts use (DESIGN.md section 2, "Events"), as received. */
export type ChartEvent =
  | { type: 'plan'; steps_total: number; tokens_per_step: number; epochs: number }
  | { type: 'step'; step: number; loss: number; lr: number; tokens_per_s: number; elapsed_s: number;
      mem: { used: number; peak: number; device_used: number; device_total: number } }
  | { type: 'eval'; step: number; loss: number }
  | { type: 'done'; status: 'completed' | 'stopped' | 'failed'; step: number; adapter?: string }
  | { type: 'error'; message: string; hint?: string };

export type RunStatus = 'running' | 'completed' | 'stopped' | 'failed';

/** One run's loss curves for Compare Runs (already downsampled by the host). */
export interface CompareRun { id: string; label: string; status: string; steps: number[]; loss: number[]; evalSteps: number[]; evalLoss: number[] }
/** A config field that differs between the compared runs, one display value per run. */
export interface CompareDiff { field: string; values: string[] }

/** Generation settings of the playground ("Try Adapter"). */
export interface PlaygroundSettings { temperature: number; topP: number; maxTokens: number; system?: string }
export type PlaygroundSide = 'base' | 'adapter';
export const PLAYGROUND_MAX_TOKENS = 4096;
export const PLAYGROUND_MAX_PROMPT = 32_768;

export type HostMessage =
  | { type: 'init'; version: number; trusted: boolean; untrustedReason?: string; presets: PresetInfo[];
      config: PanelConfig; cachedModels: CachedModel[]; device: DeviceInfo | null }
  | { type: 'trust'; trusted: boolean; untrustedReason?: string }
  | { type: 'model'; model: ModelSummary | null; error?: string; hint?: string }
  | { type: 'dataset'; dataset: DatasetSummaryInfo | null; error?: string }
  | { type: 'preview'; rows: PreviewRowInfo[]; error?: string }
  | { type: 'estimate'; estimate: EstimateInfo | null; error?: string }
  | { type: 'config'; config: PanelConfig }
  | { type: 'runStarted'; runId: string; label: string; live: boolean }
  | { type: 'events'; runId: string; events: ChartEvent[] }
  | { type: 'runEnded'; runId: string; status: RunStatus; adapter?: string; message?: string; hint?: string }
  | { type: 'downloadProgress'; repoId: string; file: string; bytes: number; totalBytes: number; done: boolean; error?: string }
  | { type: 'notice'; level: 'info' | 'warning' | 'error'; message: string; hint?: string }
  | { type: 'compare'; runs: CompareRun[]; diff: CompareDiff[] }
  | { type: 'playgroundInit'; run: string; model: string; adapter: string; settings: PlaygroundSettings; pinnedCount: number }
  /** The host is preparing models or generating (busy), or went idle; level error carries a failure. */
  | { type: 'playgroundStatus'; busy: boolean; level: 'info' | 'error'; message: string; hint?: string }
  /** A new answer starts: both columns are cleared and show this prompt. */
  | { type: 'playgroundStart'; prompt: string }
  /** Text appended to one column, with that column's running token count and decode speed. */
  | { type: 'playgroundTokens'; side: PlaygroundSide; text: string; tokens: number; tokensPerS: number }
  | { type: 'playgroundDone'; side: PlaygroundSide; tokens: number; tokensPerS: number; stopReason: 'eos' | 'max_tokens' | 'cancelled' };

export type PanelMessage =
  | { type: 'ready' }
  | { type: 'pickModel' }
  | { type: 'pickDataset' }
  | { type: 'selectCachedModel'; path: string }
  | { type: 'downloadModel'; repoId: string }
  | { type: 'configChanged'; config: PanelConfig }
  | { type: 'start'; config: PanelConfig }
  | { type: 'stop' }
  | { type: 'revealAdapter'; runId: string }
  | { type: 'showLog' }
  | { type: 'generate'; prompt: string; settings: PlaygroundSettings }
  | { type: 'cancelGeneration' }
  | { type: 'runPinned'; settings: PlaygroundSettings }
  /** The panel dropped a host message that failed validation; the host logs it. */
  | { type: 'rejected'; error: string };

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

// --- validation helpers -------------------------------------------------------------------
// Each checker throws a ProtocolError naming the JSON path, caught once in the parsers.

class ProtocolError extends Error {}

type Obj = Record<string, unknown>;

function obj(v: unknown, at: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ProtocolError(`${at}: expected an object`);
  return v as Obj;
}
function str(o: Obj, k: string, at: string, maxLen = 4096): string {
  const v = o[k];
  if (typeof v !== 'string') throw new ProtocolError(`${at}.${k}: expected a string`);
  if (v.length > maxLen) throw new ProtocolError(`${at}.${k}: longer than ${maxLen} characters`);
  return v;
}
function optStr(o: Obj, k: string, at: string, maxLen = 4096): string | undefined {
  return o[k] === undefined ? undefined : str(o, k, at, maxLen);
}
function num(o: Obj, k: string, at: string, min = -Infinity, max = Infinity): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ProtocolError(`${at}.${k}: expected a finite number`);
  if (v < min || v > max) throw new ProtocolError(`${at}.${k}: ${v} is outside [${min}, ${max}]`);
  return v;
}
/** Losses and norms may legitimately be NaN/Infinity in a diverging run; JSON carries them as null. */
function numOrNaN(o: Obj, k: string, at: string): number {
  const v = o[k];
  if (v === null) return NaN;
  if (typeof v !== 'number') throw new ProtocolError(`${at}.${k}: expected a number`);
  return v;
}
function int(o: Obj, k: string, at: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = num(o, k, at, min, max);
  if (!Number.isInteger(v)) throw new ProtocolError(`${at}.${k}: expected an integer`);
  return v;
}
function bool(o: Obj, k: string, at: string): boolean {
  const v = o[k];
  if (typeof v !== 'boolean') throw new ProtocolError(`${at}.${k}: expected true or false`);
  return v;
}
function oneOf<T extends string>(o: Obj, k: string, at: string, allowed: readonly T[]): T {
  const v = str(o, k, at);
  if (!(allowed as readonly string[]).includes(v)) throw new ProtocolError(`${at}.${k}: "${v}" is not one of ${allowed.join(', ')}`);
  return v as T;
}
function arr<T>(o: Obj, k: string, at: string, each: (v: unknown, at: string) => T, maxLen = 100_000): T[] {
  const v = o[k];
  if (!Array.isArray(v)) throw new ProtocolError(`${at}.${k}: expected an array`);
  if (v.length > maxLen) throw new ProtocolError(`${at}.${k}: more than ${maxLen} items`);
  return v.map((x, i) => each(x, `${at}.${k}[${i}]`));
}
function nullable<T>(v: unknown, at: string, parse: (v: unknown, at: string) => T): T | null {
  return v === null ? null : parse(v, at);
}
const MODULE_NAME = /^[A-Za-z_][A-Za-z0-9_.]{0,63}$/;

// --- shapes -------------------------------------------------------------------------------

export function parsePanelConfig(v: unknown, at = 'config'): PanelConfig {
  const o = obj(v, at);
  const l = obj(o.lora, `${at}.lora`);
  const q = obj(o.quant, `${at}.quant`);
  const t = obj(o.train, `${at}.train`);
  const targets = arr(l, 'targets', `${at}.lora`, (x, p) => {
    if (typeof x !== 'string' || !MODULE_NAME.test(x)) throw new ProtocolError(`${p}: not a module name`);
    return x;
  }, 64);
  if (new Set(targets).size !== targets.length) throw new ProtocolError(`${at}.lora.targets: a module is listed twice`);
  const maxSteps = t.maxSteps === null ? null : int(t, 'maxSteps', `${at}.train`, 1);
  return {
    model: str(o, 'model', at),
    data: str(o, 'data', at),
    preset: str(o, 'preset', at, 64),
    lora: {
      r: int(l, 'r', `${at}.lora`, 1, 4096),
      alpha: num(l, 'alpha', `${at}.lora`, 0, 1e6),
      dropout: num(l, 'dropout', `${at}.lora`, 0, 0.99),
      rslora: bool(l, 'rslora', `${at}.lora`),
      targets,
    },
    quant: { type: oneOf(q, 'type', `${at}.quant`, QUANT_TYPES), doubleQuant: bool(q, 'doubleQuant', `${at}.quant`) },
    train: {
      lr: num(t, 'lr', `${at}.train`, 0, 1),
      schedule: oneOf(t, 'schedule', `${at}.train`, SCHEDULES),
      warmupSteps: int(t, 'warmupSteps', `${at}.train`, 0),
      epochs: num(t, 'epochs', `${at}.train`, 0, 10_000),
      maxSteps,
      seqLen: int(t, 'seqLen', `${at}.train`, 8, 1 << 20),
      microBatch: int(t, 'microBatch', `${at}.train`, 1, 4096),
      gradAccum: int(t, 'gradAccum', `${at}.train`, 1, 65536),
      evalSplit: num(t, 'evalSplit', `${at}.train`, 0, 0.5),
      gradCheckpointing: bool(t, 'gradCheckpointing', `${at}.train`),
      saveEvery: int(t, 'saveEvery', `${at}.train`, 0),
    },
  };
}

/** Problems a user can fix in the form; empty when the config can start a run. */
export function configProblems(c: PanelConfig): string[] {
  const out: string[] = [];
  if (!c.model) out.push('Choose a model folder.');
  if (!c.data) out.push('Choose a dataset file.');
  if (c.lora.targets.length === 0) out.push('Select at least one target module.');
  if (c.train.maxSteps === null && c.train.epochs <= 0) out.push('Set epochs above 0 or a maximum number of steps.');
  if (c.train.lr <= 0) out.push('The learning rate must be above 0.');
  return out;
}

function parseChartEvent(v: unknown, at: string): ChartEvent {
  const o = obj(v, at);
  const type = str(o, 'type', at, 32);
  switch (type) {
    case 'plan':
      return { type, steps_total: int(o, 'steps_total', at), tokens_per_step: num(o, 'tokens_per_step', at, 0), epochs: num(o, 'epochs', at, 0) };
    case 'step': {
      const m = obj(o.mem, `${at}.mem`);
      return {
        type, step: int(o, 'step', at), loss: numOrNaN(o, 'loss', at), lr: num(o, 'lr', at, 0),
        tokens_per_s: num(o, 'tokens_per_s', at, 0), elapsed_s: num(o, 'elapsed_s', at, 0),
        mem: { used: num(m, 'used', `${at}.mem`, 0), peak: num(m, 'peak', `${at}.mem`, 0),
               device_used: num(m, 'device_used', `${at}.mem`, 0), device_total: num(m, 'device_total', `${at}.mem`, 0) },
      };
    }
    case 'eval':
      return { type, step: int(o, 'step', at), loss: numOrNaN(o, 'loss', at) };
    case 'done': {
      const adapter = optStr(o, 'adapter', at);
      return { type, status: oneOf(o, 'status', at, ['completed', 'stopped', 'failed'] as const), step: int(o, 'step', at),
               ...(adapter !== undefined ? { adapter } : {}) };
    }
    case 'error': {
      const hint = optStr(o, 'hint', at);
      return { type, message: str(o, 'message', at), ...(hint !== undefined ? { hint } : {}) };
    }
    default:
      throw new ProtocolError(`${at}.type: "${type}" is not a chart event`);
  }
}

function parsePreset(v: unknown, at: string): PresetInfo {
  const o = obj(v, at);
  return { id: str(o, 'id', at, 64), label: str(o, 'label', at, 200), description: str(o, 'description', at, 2000),
           config: parsePanelConfig(o.config, `${at}.config`) };
}
function parseCachedModel(v: unknown, at: string): CachedModel {
  const o = obj(v, at);
  return { path: str(o, 'path', at), repoId: str(o, 'repoId', at, 300), arch: str(o, 'arch', at, 100), sizeBytes: num(o, 'sizeBytes', at, 0) };
}
function parseDevice(v: unknown, at: string): DeviceInfo {
  const o = obj(v, at);
  return { name: str(o, 'name', at, 300), kind: oneOf(o, 'kind', at, ['cpu', 'cuda'] as const),
           memoryTotal: num(o, 'memoryTotal', at, 0), memoryFree: num(o, 'memoryFree', at, 0) };
}
function parseModelSummary(v: unknown, at: string): ModelSummary {
  const o = obj(v, at);
  return {
    path: str(o, 'path', at), arch: str(o, 'arch', at, 100), layers: int(o, 'layers', at), hidden: int(o, 'hidden', at),
    paramsTotal: num(o, 'paramsTotal', at, 0), sizeBytes: num(o, 'sizeBytes', at, 0), dtype: str(o, 'dtype', at, 32),
    targets: arr(o, 'targets', at, (x, p) => {
      if (typeof x !== 'string' || !MODULE_NAME.test(x)) throw new ProtocolError(`${p}: not a module name`);
      return x;
    }, 64),
  };
}
function parseDiagnostic(v: unknown, at: string): DiagnosticInfo {
  const o = obj(v, at);
  const d: DiagnosticInfo = { severity: oneOf(o, 'severity', at, ['error', 'warning', 'info'] as const), code: str(o, 'code', at, 100),
                              message: str(o, 'message', at) };
  if (o.line !== undefined) d.line = int(o, 'line', at, 1);
  if (o.row !== undefined) d.row = int(o, 'row', at, 0);
  const hint = optStr(o, 'hint', at);
  if (hint !== undefined) d.hint = hint;
  return d;
}
function parseDataset(v: unknown, at: string): DatasetSummaryInfo {
  const o = obj(v, at);
  return { path: str(o, 'path', at), format: str(o, 'format', at, 64), rows: int(o, 'rows', at), errors: int(o, 'errors', at),
           warnings: int(o, 'warnings', at), diagnostics: arr(o, 'diagnostics', at, parseDiagnostic, 1000) };
}
function parsePreviewRow(v: unknown, at: string): PreviewRowInfo {
  const o = obj(v, at);
  return { row: int(o, 'row', at), segments: arr(o, 'segments', at, (s, p) => {
    const so = obj(s, p);
    return { text: str(so, 'text', p, 1 << 20), trained: bool(so, 'trained', p) };
  }, 10_000) };
}
function parseEstimate(v: unknown, at: string): EstimateInfo {
  const o = obj(v, at);
  const deviceName = o.deviceName === null ? null : str(o, 'deviceName', at, 300);
  const deviceFreeBytes = o.deviceFreeBytes === null ? null : num(o, 'deviceFreeBytes', at, 0);
  return {
    parts: arr(o, 'parts', at, (p, pa) => { const po = obj(p, pa); return { label: str(po, 'label', pa, 100), bytes: num(po, 'bytes', pa, 0) }; }, 32),
    totalBytes: num(o, 'totalBytes', at, 0), deviceName, deviceFreeBytes,
    trainableParams: num(o, 'trainableParams', at, 0), totalParams: num(o, 'totalParams', at, 0),
  };
}

function numbers(o: Obj, k: string, at: string): number[] {
  return arr(o, k, at, (x, p) => {
    if (x === null) return NaN;
    if (typeof x !== 'number') throw new ProtocolError(`${p}: expected a number`);
    return x;
  }, 200_000);
}
function parseCompareRun(v: unknown, at: string): CompareRun {
  const o = obj(v, at);
  const id = str(o, 'id', at, 128);
  if (!RUN_ID.test(id)) throw new ProtocolError(`${at}.id: "${id}" is not a run id`);
  const r = { id, label: str(o, 'label', at, 300), status: str(o, 'status', at, 32), steps: numbers(o, 'steps', at),
              loss: numbers(o, 'loss', at), evalSteps: numbers(o, 'evalSteps', at), evalLoss: numbers(o, 'evalLoss', at) };
  if (r.steps.length !== r.loss.length) throw new ProtocolError(`${at}: steps and loss differ in length`);
  if (r.evalSteps.length !== r.evalLoss.length) throw new ProtocolError(`${at}: evalSteps and evalLoss differ in length`);
  return r;
}

export function parsePlaygroundSettings(v: unknown, at: string): PlaygroundSettings {
  const o = obj(v, at);
  const topP = num(o, 'topP', at, 0, 1);
  if (topP === 0) throw new ProtocolError(`${at}.topP: must be above 0`);
  const system = optStr(o, 'system', at, PLAYGROUND_MAX_PROMPT);
  return { temperature: num(o, 'temperature', at, 0, 2), topP, maxTokens: int(o, 'maxTokens', at, 1, PLAYGROUND_MAX_TOKENS),
           ...(system !== undefined && system.trim() ? { system } : {}) };
}
const SIDES = ['base', 'adapter'] as const;

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
function runId(o: Obj, at: string): string {
  const id = str(o, 'runId', at, 128);
  if (!RUN_ID.test(id)) throw new ProtocolError(`${at}.runId: "${id}" is not a run id`);
  return id;
}
const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

function wrap<T>(fn: () => T): Parsed<T> {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof ProtocolError) return { ok: false, error: e.message };
    throw e;
  }
}

/** Validates a message from the panel (run on the extension host). */
export function parsePanelMessage(v: unknown): Parsed<PanelMessage> {
  return wrap((): PanelMessage => {
    const o = obj(v, 'message');
    const type = str(o, 'type', 'message', 32);
    switch (type) {
      case 'ready': case 'pickModel': case 'pickDataset': case 'stop': case 'showLog': case 'cancelGeneration':
        return { type };
      case 'generate': {
        const prompt = str(o, 'prompt', 'message', PLAYGROUND_MAX_PROMPT);
        if (!prompt.trim()) throw new ProtocolError('message.prompt: empty');
        return { type, prompt, settings: parsePlaygroundSettings(o.settings, 'message.settings') };
      }
      case 'runPinned':
        return { type, settings: parsePlaygroundSettings(o.settings, 'message.settings') };
      case 'selectCachedModel':
        return { type, path: str(o, 'path', 'message') };
      case 'downloadModel': {
        const repoId = str(o, 'repoId', 'message', 200).trim();
        if (!REPO_ID.test(repoId)) throw new ProtocolError(`message.repoId: "${repoId}" is not a Hub model id like org/name`);
        return { type, repoId };
      }
      case 'configChanged': case 'start':
        return { type, config: parsePanelConfig(o.config) };
      case 'revealAdapter':
        return { type, runId: runId(o, 'message') };
      case 'rejected':
        return { type, error: str(o, 'error', 'message', 2000) };
      default:
        throw new ProtocolError(`message.type: "${type}" is not a panel message`);
    }
  });
}

/** Validates a message from the extension host (run in the panel). */
export function parseHostMessage(v: unknown): Parsed<HostMessage> {
  return wrap((): HostMessage => {
    const o = obj(v, 'message');
    const at = 'message';
    const type = str(o, 'type', at, 32);
    const withOpt = <T extends object>(base: T, keys: string[]): T => {
      const out: Obj = { ...(base as Obj) };
      for (const k of keys) { const s = optStr(o, k, at); if (s !== undefined) out[k] = s; }
      return out as T;
    };
    switch (type) {
      case 'init':
        return withOpt({
          type, version: int(o, 'version', at, PROTOCOL_VERSION, PROTOCOL_VERSION), trusted: bool(o, 'trusted', at),
          presets: arr(o, 'presets', at, parsePreset, 64), config: parsePanelConfig(o.config, `${at}.config`),
          cachedModels: arr(o, 'cachedModels', at, parseCachedModel, 1000), device: nullable(o.device, `${at}.device`, parseDevice),
        }, ['untrustedReason']);
      case 'trust':
        return withOpt({ type, trusted: bool(o, 'trusted', at) }, ['untrustedReason']);
      case 'model':
        return withOpt({ type, model: nullable(o.model, `${at}.model`, parseModelSummary) }, ['error', 'hint']);
      case 'dataset':
        return withOpt({ type, dataset: nullable(o.dataset, `${at}.dataset`, parseDataset) }, ['error']);
      case 'preview':
        return withOpt({ type, rows: arr(o, 'rows', at, parsePreviewRow, 100) }, ['error']);
      case 'estimate':
        return withOpt({ type, estimate: nullable(o.estimate, `${at}.estimate`, parseEstimate) }, ['error']);
      case 'config':
        return { type, config: parsePanelConfig(o.config, `${at}.config`) };
      case 'runStarted':
        return { type, runId: runId(o, at), label: str(o, 'label', at, 300), live: bool(o, 'live', at) };
      case 'events':
        return { type, runId: runId(o, at), events: arr(o, 'events', at, parseChartEvent, 200_000) };
      case 'runEnded':
        return withOpt({ type, runId: runId(o, at), status: oneOf(o, 'status', at, ['running', 'completed', 'stopped', 'failed'] as const) },
                       ['adapter', 'message', 'hint']);
      case 'downloadProgress':
        return withOpt({ type, repoId: str(o, 'repoId', at, 200), file: str(o, 'file', at), bytes: num(o, 'bytes', at, 0),
                         totalBytes: num(o, 'totalBytes', at, 0), done: bool(o, 'done', at) }, ['error']);
      case 'notice':
        return withOpt({ type, level: oneOf(o, 'level', at, ['info', 'warning', 'error'] as const), message: str(o, 'message', at) }, ['hint']);
      case 'compare':
        return { type, runs: arr(o, 'runs', at, parseCompareRun, 32), diff: arr(o, 'diff', at, (d, p) => {
          const dobj = obj(d, p);
          return { field: str(dobj, 'field', p, 200), values: arr(dobj, 'values', p, (x, px) => {
            if (typeof x !== 'string') throw new ProtocolError(`${px}: expected a string`);
            return x;
          }, 32) };
        }, 500) };
      case 'playgroundInit':
        return { type, run: str(o, 'run', at, 300), model: str(o, 'model', at), adapter: str(o, 'adapter', at),
                 settings: parsePlaygroundSettings(o.settings, `${at}.settings`), pinnedCount: int(o, 'pinnedCount', at) };
      case 'playgroundStatus':
        return withOpt({ type, busy: bool(o, 'busy', at), level: oneOf(o, 'level', at, ['info', 'error'] as const), message: str(o, 'message', at) }, ['hint']);
      case 'playgroundStart':
        return { type, prompt: str(o, 'prompt', at, PLAYGROUND_MAX_PROMPT) };
      case 'playgroundTokens':
        return { type, side: oneOf(o, 'side', at, SIDES), text: str(o, 'text', at, 1 << 20), tokens: int(o, 'tokens', at),
                 tokensPerS: num(o, 'tokensPerS', at, 0) };
      case 'playgroundDone':
        return { type, side: oneOf(o, 'side', at, SIDES), tokens: int(o, 'tokens', at), tokensPerS: num(o, 'tokensPerS', at, 0),
                 stopReason: oneOf(o, 'stopReason', at, ['eos', 'max_tokens', 'cancelled'] as const) };
      default:
        throw new ProtocolError(`message.type: "${type}" is not a host message`);
    }
  });
}

/**
 * Turns one runtime event (a parsed events.jsonl line, with `event` naming its kind) into
 * the chart shape, or null for events the charts do not use. Invalid chart events are
 * dropped by the caller's validation, so a malformed line never reaches a chart.
 */
export function toChartEvent(raw: unknown): ChartEvent | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const o = raw as Obj;
  const kind = typeof o.event === 'string' ? o.event : typeof o.type === 'string' ? o.type : null;
  if (kind === null || !['plan', 'step', 'eval', 'done', 'error'].includes(kind)) return null;
  const r = wrap(() => parseChartEvent({ ...o, type: kind }, 'event'));
  return r.ok ? r.value : null;
}
