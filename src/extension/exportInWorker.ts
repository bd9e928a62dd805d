// exportAdapter and preparePlayground on a worker thread. The GGUF and ONNX writers are
// synchronous (reading safetensors, converting, quantizing to q8_0, protobuf encoding): for a 7B
// model that is minutes of work, and on the extension host's thread it would freeze every
// extension for as long. Each function keeps the promise, progress, runtime log lines and errors
// of the core call it stands for; the worker is gone when the promise settles.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ExportAdapterOptions, ExportAdapterResult } from '../core/export/exportAdapter';
import { ExportError } from '../core/export/hfModel';
import { MergeError } from '../core/export/merge';
import { PlaygroundError, type PrepareOptions, type PreparedModels } from '../core/playground/prepare';
import type { CancellationToken } from '../core/runtime/process';
import { ExportWorkerData, HostToWorker, WorkerJob, WorkerJobKind, WorkerJobTypes, deserializeError, isWorkerToHost } from './exportWorkerProtocol';

/** Beside this module: dist/exportWorker.js next to the bundle dist/extension.js, or
 *  out/src/extension/exportWorker.js when running from tsc's output (the tests). */
export function exportWorkerPath(): string {
  return path.join(__dirname, 'exportWorker.js');
}

/** How long a cancelled job may take to reach its next cancellation check (the next tensor or ONNX
 *  layer, or the end of a merge, which gets SIGTERM and then SIGKILL after 5 s) before the worker
 *  is terminated. A terminated worker can leave a temporary `*.tmp-*` file or folder behind. */
const CANCEL_GRACE_MS = 15_000;

const BUILD_HINT = 'reinstall LoRA Studio; in a checkout, build it with node scripts/build-webview.mjs (or npx tsc -p . for out/)';

export function exportAdapterInWorker(opts: ExportAdapterOptions, workerFile = exportWorkerPath()): Promise<ExportAdapterResult> {
  const { token, onProgress, onLog, ...options } = opts;
  return runInWorker({ kind: 'export', options }, { token, onProgress, onLog }, workerFile, {
    cancelled: () => new MergeError('cancelled', undefined, true),
    missingWorker: (file) => new ExportError(file, undefined, 'the export worker is missing', BUILD_HINT),
  });
}

/** preparePlayground off the host's thread: the merge is spawned from the worker, and both ONNX
 *  exports are written there. Rejects with PlaygroundError('cancelled') when cancelled. */
export function preparePlaygroundInWorker(opts: PrepareOptions, workerFile = exportWorkerPath()): Promise<PreparedModels> {
  const { token, onProgress, onLog, ...options } = opts;
  return runInWorker({ kind: 'playground', options }, { token, onProgress, onLog }, workerFile, {
    cancelled: () => new PlaygroundError('cancelled'),
    missingWorker: (file) => new PlaygroundError(`the export worker is missing (${file})`, BUILD_HINT),
  });
}

interface JobHooks<K extends WorkerJobKind> {
  token?: CancellationToken;
  onProgress?: (p: WorkerJobTypes[K]['progress']) => void;
  onLog?: (line: string) => void;
}

/** The errors a job reports as its own core call would. */
interface JobErrors {
  cancelled: () => Error;
  missingWorker: (file: string) => Error;
}

function runInWorker<K extends WorkerJobKind>(job: WorkerJob & { kind: K }, hooks: JobHooks<K>, workerFile: string, errors: JobErrors): Promise<WorkerJobTypes[K]['result']> {
  const { token, onProgress, onLog } = hooks;
  if (token?.isCancellationRequested) return Promise.reject(errors.cancelled());
  if (!fs.existsSync(workerFile)) return Promise.reject(errors.missingWorker(workerFile));
  return new Promise<WorkerJobTypes[K]['result']>((resolve, reject) => {
    const cancelFlag = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
    const data: ExportWorkerData = { job, cancelFlag };
    const worker = new Worker(workerFile, { workerData: data });
    let settled = false;
    let graceTimer: NodeJS.Timeout | undefined;
    let subscription: { dispose(): unknown } | undefined;
    const settle = (finish: () => void) => {
      if (settled) return;
      settled = true;
      subscription?.dispose();
      clearTimeout(graceTimer);
      void worker.terminate();
      finish();
    };
    subscription = token?.onCancellationRequested(() => {
      Atomics.store(new Int32Array(cancelFlag), 0, 1);
      worker.postMessage({ type: 'cancel' } satisfies HostToWorker);
      graceTimer ??= setTimeout(() => settle(() => reject(errors.cancelled())), CANCEL_GRACE_MS);
    });
    worker.on('message', (m: unknown) => {
      if (!isWorkerToHost(m, job.kind)) {
        settle(() => reject(new Error(`the export worker sent a message this version does not know: ${JSON.stringify(m).slice(0, 200)}`)));
        return;
      }
      switch (m.type) {
        case 'progress':
          onProgress?.(m.progress);
          break;
        case 'log':
          onLog?.(m.line);
          break;
        case 'done':
          settle(() => resolve(m.result));
          break;
        case 'failed':
          settle(() => reject(deserializeError(m.error)));
          break;
      }
    });
    worker.on('error', (e) => settle(() => reject(e)));
    worker.on('exit', (code) => settle(() => reject(new Error(`the export worker stopped (exit code ${code}) before it finished`))));
  });
}
