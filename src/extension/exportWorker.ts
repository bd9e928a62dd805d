// The worker_threads entry of "Export Adapter…" (bundled as dist/exportWorker.js; started by
// exportInWorker.ts). It runs exportAdapter with the options it was started with and posts
// progress, runtime log lines and the result or the error back to the host. No `vscode` import
// here or below: a worker thread cannot load the editor's API.
import { parentPort, workerData } from 'node:worker_threads';
import { exportAdapter } from '../core/export/exportAdapter';
import { CancellationToken, CancellationTokenSource } from '../core/runtime/process';
import { ExportWorkerData, WorkerToHost, isHostToWorker, serializeError } from './exportWorkerProtocol';

function run(): void {
  const port = parentPort;
  if (!port) throw new Error('exportWorker.js runs as a worker thread started by exportInWorker.ts, not on its own');
  const data = workerData as ExportWorkerData;
  const flag = new Int32Array(data.cancelFlag);
  // The synchronous writers poll the shared flag between tensors; the message wakes the
  // listeners (a running `lora-runtime merge`), which only an idle event loop can serve anyway.
  const source = new CancellationTokenSource();
  const token: CancellationToken = {
    get isCancellationRequested() {
      return Atomics.load(flag, 0) !== 0 || source.token.isCancellationRequested;
    },
    onCancellationRequested: (listener) => source.token.onCancellationRequested(listener),
  };
  port.on('message', (m: unknown) => {
    if (isHostToWorker(m)) source.cancel();
  });
  const post = (m: WorkerToHost) => port.postMessage(m);
  exportAdapter({
    ...data.options,
    token,
    onProgress: (progress) => post({ type: 'progress', progress }),
    onLog: (line) => post({ type: 'log', line }),
  }).then(
    (result) => post({ type: 'done', result }),
    (e: unknown) => post({ type: 'failed', error: serializeError(e) }),
  );
}

run();
