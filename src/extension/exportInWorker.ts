// exportAdapter on a worker thread. The GGUF and ONNX writers are synchronous (reading
// safetensors, converting, quantizing to q8_0, protobuf encoding): for a 7B model that is minutes
// of work, and on the extension host's thread it would freeze every extension for as long.
// Same promise, progress, runtime log lines and errors as exportAdapter; the worker is gone when
// the promise settles.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ExportAdapterOptions, ExportAdapterResult } from '../core/export/exportAdapter';
import { ExportError } from '../core/export/hfModel';
import { MergeError } from '../core/export/merge';
import { ExportWorkerData, HostToWorker, deserializeError, isWorkerToHost } from './exportWorkerProtocol';

/** Beside this module: dist/exportWorker.js next to the bundle dist/extension.js, or
 *  out/src/extension/exportWorker.js when running from tsc's output (the tests). */
export function exportWorkerPath(): string {
  return path.join(__dirname, 'exportWorker.js');
}

/** How long a cancelled export may take to reach its next cancellation check (the next tensor, or
 *  the end of a merge, which gets SIGTERM and then SIGKILL after 5 s) before the worker is
 *  terminated. A terminated worker can leave a temporary `*.tmp-*` file in the output folder. */
const CANCEL_GRACE_MS = 15_000;

export function exportAdapterInWorker(opts: ExportAdapterOptions, workerFile = exportWorkerPath()): Promise<ExportAdapterResult> {
  const { token, onProgress, onLog, ...options } = opts;
  if (token?.isCancellationRequested) return Promise.reject(new MergeError('cancelled', undefined, true));
  if (!fs.existsSync(workerFile)) {
    return Promise.reject(new ExportError(workerFile, undefined, 'the export worker is missing',
      'reinstall LoRA Studio; in a checkout, build it with node scripts/build-webview.mjs (or npx tsc -p . for out/)'));
  }
  return new Promise<ExportAdapterResult>((resolve, reject) => {
    const cancelFlag = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
    const data: ExportWorkerData = { options, cancelFlag };
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
      graceTimer ??= setTimeout(() => settle(() => reject(new MergeError('cancelled', undefined, true))), CANCEL_GRACE_MS);
    });
    worker.on('message', (m: unknown) => {
      if (!isWorkerToHost(m)) {
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
