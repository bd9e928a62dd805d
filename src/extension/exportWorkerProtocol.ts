// The contract between the extension host and the export worker (exportWorker.ts): the job the
// worker starts with ("Export Adapter…" or the Try Adapter preparation), the messages both ways
// (discriminated on `type`, checked on receipt against the job's own progress and result
// shapes), and how an error crosses the thread boundary. Structured clone keeps only plain data,
// so ExportError, MergeError and PlaygroundError travel as their fields and are rebuilt as the
// same classes on the host side, where exportCommand.ts and playground.ts tell them apart.
import type { ExportAdapterOptions, ExportAdapterResult } from '../core/export/exportAdapter';
import type { ExportProgress } from '../core/export/ggufExport';
import { ExportError } from '../core/export/hfModel';
import { MergeError } from '../core/export/merge';
import { PREPARE_PHASES, PlaygroundError, type PrepareOptions, type PrepareProgress, type PreparedModels } from '../core/playground/prepare';

/** The export's options without what cannot be cloned into a worker (callbacks, the token). */
export type WorkerExportOptions = Omit<ExportAdapterOptions, 'token' | 'onProgress' | 'onLog'>;
/** The same for the playground's preparation (merge + two ONNX exports). */
export type WorkerPrepareOptions = Omit<PrepareOptions, 'token' | 'onProgress' | 'onLog'>;

/** What each job takes, reports and returns. */
export interface WorkerJobTypes {
  export: { options: WorkerExportOptions; progress: ExportProgress; result: ExportAdapterResult };
  playground: { options: WorkerPrepareOptions; progress: PrepareProgress; result: PreparedModels };
}
export type WorkerJobKind = keyof WorkerJobTypes;
export type WorkerJob<K extends WorkerJobKind = WorkerJobKind> = { [J in K]: { kind: J; options: WorkerJobTypes[J]['options'] } }[K];

export interface ExportWorkerData {
  job: WorkerJob;
  /** One Int32 the host sets to 1 on cancel. Shared memory rather than only a message: the GGUF
   *  and ONNX writers run synchronously, and the worker reads no message until they return. */
  cancelFlag: SharedArrayBuffer;
}

export type HostToWorker = { type: 'cancel' };

export type WorkerToHost<K extends WorkerJobKind = WorkerJobKind> =
  | { type: 'progress'; progress: WorkerJobTypes[K]['progress'] }
  | { type: 'log'; line: string }
  | { type: 'done'; result: WorkerJobTypes[K]['result'] }
  | { type: 'failed'; error: SerializedError };

export interface SerializedError {
  kind: 'export' | 'merge' | 'playground' | 'other';
  name: string;
  message: string;
  stack?: string;
  file?: string;
  field?: string;
  detail?: string;
  hint?: string;
  cancelled?: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
const optionalString = (v: unknown): boolean => v === undefined || typeof v === 'string';

export function isHostToWorker(m: unknown): m is HostToWorker {
  return isObject(m) && m.type === 'cancel';
}

const isProgress: { [K in WorkerJobKind]: (p: Record<string, unknown>) => boolean } = {
  export: (p) => typeof p.phase === 'string' && typeof p.fraction === 'number' && typeof p.message === 'string',
  playground: (p) => (PREPARE_PHASES as readonly unknown[]).includes(p.phase) && typeof p.message === 'string',
};

const isResult: { [K in WorkerJobKind]: (r: Record<string, unknown>) => boolean } = {
  export: (r) => typeof r.format === 'string' && typeof r.outDir === 'string' && typeof r.dtype === 'string'
    && Array.isArray(r.files) && r.files.every((f) => typeof f === 'string'),
  playground: (r) => typeof r.baseOnnx === 'string' && typeof r.adapterOnnx === 'string' && typeof r.mergedDir === 'string'
    && isObject(r.rebuilt) && ['merged', 'base', 'adapter'].every((k) => typeof (r.rebuilt as Record<string, unknown>)[k] === 'boolean'),
};

/** A message from a worker running a `kind` job: progress and result must have that job's shape. */
export function isWorkerToHost<K extends WorkerJobKind>(m: unknown, kind: K): m is WorkerToHost<K> {
  if (!isObject(m)) return false;
  switch (m.type) {
    case 'progress':
      return isObject(m.progress) && isProgress[kind](m.progress);
    case 'log':
      return typeof m.line === 'string';
    case 'done':
      return isObject(m.result) && isResult[kind](m.result);
    case 'failed':
      return isObject(m.error) && ['export', 'merge', 'playground', 'other'].includes(m.error.kind as string)
        && typeof m.error.name === 'string' && typeof m.error.message === 'string'
        && ['stack', 'file', 'field', 'detail', 'hint'].every((k) => optionalString((m.error as Record<string, unknown>)[k]));
    default:
      return false;
  }
}

export function serializeError(e: unknown): SerializedError {
  if (e instanceof ExportError) {
    return { kind: 'export', name: e.name, message: e.message, stack: e.stack, file: e.file, field: e.field, detail: e.detail, hint: e.hint };
  }
  if (e instanceof MergeError) {
    return { kind: 'merge', name: e.name, message: e.message, stack: e.stack, detail: e.detail, hint: e.hint, cancelled: e.cancelled };
  }
  if (e instanceof PlaygroundError) {
    return { kind: 'playground', name: e.name, message: e.message, stack: e.stack, detail: e.detail, hint: e.hint };
  }
  if (e instanceof Error) {
    const extra = e as Error & { file?: unknown; field?: unknown; hint?: unknown };
    const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
    return { kind: 'other', name: e.name, message: e.message, stack: e.stack, file: str(extra.file), field: str(extra.field), hint: str(extra.hint) };
  }
  return { kind: 'other', name: 'Error', message: String(e) };
}

/** The host-side error for a worker's failure: ExportError, MergeError and PlaygroundError as
 *  themselves, any other error as an Error with the same name, message and hint. */
export function deserializeError(s: SerializedError): Error {
  let e: Error;
  if (s.kind === 'export') {
    e = new ExportError(s.file ?? '', s.field, s.detail ?? s.message, s.hint);
  } else if (s.kind === 'merge') {
    e = new MergeError(s.detail ?? s.message, s.hint, s.cancelled === true);
  } else if (s.kind === 'playground') {
    e = new PlaygroundError(s.detail ?? s.message, s.hint);
  } else {
    e = Object.assign(new Error(s.message), { file: s.file, field: s.field, hint: s.hint });
    e.name = s.name;
  }
  if (s.stack) e.stack = s.stack;
  return e;
}
