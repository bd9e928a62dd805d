// The contract between the extension host and the export worker (exportWorker.ts): what the
// worker starts with, the messages both ways (discriminated on `type`, checked on receipt), and
// how an error crosses the thread boundary. Structured clone keeps only plain data, so
// ExportError and MergeError travel as their fields and are rebuilt as the same classes on the
// host side, where exportCommand.ts tells them apart.
import type { ExportAdapterOptions, ExportAdapterResult } from '../core/export/exportAdapter';
import type { ExportProgress } from '../core/export/ggufExport';
import { ExportError } from '../core/export/hfModel';
import { MergeError } from '../core/export/merge';

/** The export's options without what cannot be cloned into a worker (callbacks, the token). */
export type WorkerExportOptions = Omit<ExportAdapterOptions, 'token' | 'onProgress' | 'onLog'>;

export interface ExportWorkerData {
  options: WorkerExportOptions;
  /** One Int32 the host sets to 1 on cancel. Shared memory rather than only a message: the GGUF
   *  and ONNX writers run synchronously, and the worker reads no message until they return. */
  cancelFlag: SharedArrayBuffer;
}

export type HostToWorker = { type: 'cancel' };

export type WorkerToHost =
  | { type: 'progress'; progress: ExportProgress }
  | { type: 'log'; line: string }
  | { type: 'done'; result: ExportAdapterResult }
  | { type: 'failed'; error: SerializedError };

export interface SerializedError {
  kind: 'export' | 'merge' | 'other';
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

export function isWorkerToHost(m: unknown): m is WorkerToHost {
  if (!isObject(m)) return false;
  switch (m.type) {
    case 'progress':
      return isObject(m.progress) && typeof m.progress.phase === 'string' && typeof m.progress.fraction === 'number' && typeof m.progress.message === 'string';
    case 'log':
      return typeof m.line === 'string';
    case 'done':
      return isObject(m.result) && typeof m.result.format === 'string' && typeof m.result.outDir === 'string'
        && typeof m.result.dtype === 'string' && Array.isArray(m.result.files) && m.result.files.every((f) => typeof f === 'string');
    case 'failed':
      return isObject(m.error) && ['export', 'merge', 'other'].includes(m.error.kind as string)
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
  if (e instanceof Error) {
    const extra = e as Error & { file?: unknown; field?: unknown; hint?: unknown };
    const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
    return { kind: 'other', name: e.name, message: e.message, stack: e.stack, file: str(extra.file), field: str(extra.field), hint: str(extra.hint) };
  }
  return { kind: 'other', name: 'Error', message: String(e) };
}

/** The host-side error for a worker's failure: ExportError and MergeError as themselves, any
 *  other error as an Error with the same name, message and hint. */
export function deserializeError(s: SerializedError): Error {
  let e: Error;
  if (s.kind === 'export') {
    e = new ExportError(s.file ?? '', s.field, s.detail ?? s.message, s.hint);
  } else if (s.kind === 'merge') {
    e = new MergeError(s.detail ?? s.message, s.hint, s.cancelled === true);
  } else {
    e = Object.assign(new Error(s.message), { file: s.file, field: s.field, hint: s.hint });
    e.name = s.name;
  }
  if (s.stack) e.stack = s.stack;
  return e;
}
