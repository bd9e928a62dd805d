// The runtime's events (DESIGN.md "Events"): one JSON object a line on stdout and in
// RUN_DIR/events.jsonl, `"v": 1` on every line, the kind in `type`. Every line is validated
// before use; fields beyond the contract are kept (newer runtimes may add some).

export const EVENTS_VERSION = 1;

export interface MemoryStats {
  used: number;
  peak: number;
  device_used: number;
  device_total: number;
}

/** `device.index` and `compute_capability` ("9.0") are there when kind is cuda. */
export interface HelloEvent { v: 1; type: 'hello'; runtime: string; protocol: number; device: { kind: 'cpu' | 'cuda'; name: string; memory_total: number; index?: number; compute_capability?: string } }
export interface ModelEvent { v: 1; type: 'model'; arch: string; params_total: number; params_trainable: number; quant: string; bytes_base: number; bytes_lora: number; targets: string[] }
export interface PlanEvent { v: 1; type: 'plan'; steps_total: number; tokens_per_step: number; epochs: number; train_tokens: number; eval_tokens: number }
export interface StepEvent { v: 1; type: 'step'; step: number; epoch: number; /** null when the loss is NaN (diverged). */ loss: number | null; lr: number; grad_norm: number | null; tokens_per_s: number; elapsed_s: number; mem: MemoryStats }
export interface EvalEvent { v: 1; type: 'eval'; step: number; loss: number | null }
export interface CheckpointEvent { v: 1; type: 'checkpoint'; step: number; path: string }
export interface LogEvent { v: 1; type: 'log'; level: string; message: string }
export interface ErrorEvent { v: 1; type: 'error'; code: string; message: string; hint?: string; file?: string; line?: number; field?: string }
export interface DoneEvent { v: 1; type: 'done'; status: 'completed' | 'stopped' | 'failed'; step: number; adapter?: string }

export type RuntimeEvent =
  | HelloEvent | ModelEvent | PlanEvent | StepEvent | EvalEvent | CheckpointEvent | LogEvent | ErrorEvent | DoneEvent;
export type RuntimeEventType = RuntimeEvent['type'];

export type ParsedLine =
  | { kind: 'event'; event: RuntimeEvent }
  /** A well-formed event of a type this version does not know: skip it. */
  | { kind: 'unknown'; type: string; value: Record<string, unknown> }
  | { kind: 'invalid'; line: string; reason: string };

type FieldKind = 'number' | 'string' | 'boolean' | 'object' | 'string[]' | 'number?' | 'string?';
const SCHEMAS: Record<RuntimeEventType, Record<string, FieldKind>> = {
  hello: { runtime: 'string', protocol: 'number', device: 'object' },
  model: { arch: 'string', params_total: 'number', params_trainable: 'number', quant: 'string', bytes_base: 'number', bytes_lora: 'number', targets: 'string[]' },
  plan: { steps_total: 'number', tokens_per_step: 'number', epochs: 'number', train_tokens: 'number', eval_tokens: 'number' },
  step: { step: 'number', epoch: 'number', loss: 'number', lr: 'number', grad_norm: 'number', tokens_per_s: 'number', elapsed_s: 'number', mem: 'object' },
  eval: { step: 'number', loss: 'number' },
  checkpoint: { step: 'number', path: 'string' },
  log: { level: 'string', message: 'string' },
  error: { code: 'string', message: 'string', hint: 'string?', file: 'string?', line: 'number?', field: 'string?' },
  done: { status: 'string', step: 'number', adapter: 'string?' },
};

function checkField(obj: Record<string, unknown>, key: string, kind: FieldKind): string | null {
  const v = obj[key];
  const optional = kind.endsWith('?');
  if (v === undefined || (optional && v === null)) return optional ? null : `missing "${key}"`;
  const base = optional ? kind.slice(0, -1) : kind;
  switch (base) {
    case 'number':
      return typeof v === 'number' ? null : `"${key}" must be a number`;
    case 'string':
      return typeof v === 'string' ? null : `"${key}" must be a string`;
    case 'boolean':
      return typeof v === 'boolean' ? null : `"${key}" must be a boolean`;
    case 'object':
      return v && typeof v === 'object' && !Array.isArray(v) ? null : `"${key}" must be an object`;
    case 'string[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'string') ? null : `"${key}" must be a list of strings`;
  }
  return null;
}

/** Validates one parsed JSON value as an event. */
export function validateEvent(value: unknown): ParsedLine {
  const raw = JSON.stringify(value) ?? String(value);
  if (!value || typeof value !== 'object' || Array.isArray(value)) return { kind: 'invalid', line: raw, reason: 'not a JSON object' };
  const obj = value as Record<string, unknown>;
  if (obj.v !== EVENTS_VERSION) return { kind: 'invalid', line: raw, reason: `"v" is ${JSON.stringify(obj.v)}, expected ${EVENTS_VERSION}` };
  if (typeof obj.type !== 'string') return { kind: 'invalid', line: raw, reason: 'missing "type"' };
  const schema = SCHEMAS[obj.type as RuntimeEventType];
  if (!schema) return { kind: 'unknown', type: obj.type, value: obj };
  for (const [key, kind] of Object.entries(schema)) {
    // A diverging run has NaN loss; JSON has no NaN, so it arrives as null.
    if ((obj.type === 'step' || obj.type === 'eval') && (key === 'loss' || key === 'grad_norm') && obj[key] === null) continue;
    const problem = checkField(obj, key, kind);
    if (problem) return { kind: 'invalid', line: raw, reason: `${obj.type} event: ${problem}` };
  }
  if (obj.type === 'step') {
    const mem = obj.mem as Record<string, unknown>;
    for (const k of ['used', 'peak', 'device_used', 'device_total']) {
      if (typeof mem[k] !== 'number') return { kind: 'invalid', line: raw, reason: `step event: "mem.${k}" must be a number` };
    }
  }
  if (obj.type === 'done' && !['completed', 'stopped', 'failed'].includes(obj.status as string)) {
    return { kind: 'invalid', line: raw, reason: `done event: "status" is ${JSON.stringify(obj.status)}` };
  }
  if (obj.type === 'hello') {
    const d = obj.device as Record<string, unknown>;
    if ((d.kind !== 'cpu' && d.kind !== 'cuda') || typeof d.name !== 'string') {
      return { kind: 'invalid', line: raw, reason: 'hello event: "device" must have kind cpu|cuda and a name' };
    }
  }
  return { kind: 'event', event: obj as unknown as RuntimeEvent };
}

/** Parses and validates one line of runtime output. */
export function parseEventLine(line: string): ParsedLine {
  const text = line.trim();
  if (!text) return { kind: 'invalid', line, reason: 'empty line' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { kind: 'invalid', line, reason: `not JSON (${(e as Error).message})` };
  }
  const parsed = validateEvent(value);
  return parsed.kind === 'invalid' ? { ...parsed, line } : parsed;
}

/** Human one-liner for an error event: message, then where and what to do. */
export function formatErrorEvent(e: ErrorEvent): string {
  const where = [e.file, e.line ? `line ${e.line}` : '', e.field ? `field ${e.field}` : ''].filter(Boolean).join(', ');
  return `${e.message}${where ? ` (${where})` : ''}${e.hint ? `\n  hint: ${e.hint}` : ''}`;
}
