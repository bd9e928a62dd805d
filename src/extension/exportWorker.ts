// The worker_threads entry for the synchronous model writing the extension must keep off its
// own thread (bundled as dist/exportWorker.js; started by exportInWorker.ts). It runs the job it
// was started with, "Export Adapter…" (exportAdapter) or Try Adapter's preparation
// (preparePlayground: merge + two ONNX exports), and posts progress, runtime log lines and the
// result or the error back to the host. No `vscode` import here or below: a worker thread cannot
// load the editor's API; and prepare.ts is imported directly, not core/playground's index, which
// would load onnxruntime-node for nothing.
import { parentPort, workerData } from 'node:worker_threads';
import { type ExportAdapterResult, exportAdapter } from '../core/export/exportAdapter';
import type { ExportProgress } from '../core/export/ggufExport';
import { type PrepareProgress, type PreparedModels, preparePlayground } from '../core/playground/prepare';
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
  const hooks = {
    token,
    onProgress: (progress: ExportProgress | PrepareProgress) => post({ type: 'progress', progress }),
    onLog: (line: string) => post({ type: 'log', line }),
  };
  const job = data.job;
  const work: Promise<ExportAdapterResult | PreparedModels> = job.kind === 'export'
    ? exportAdapter({ ...job.options, ...hooks })
    : preparePlayground({ ...job.options, ...hooks });
  work.then(
    (result) => post({ type: 'done', result }),
    (e: unknown) => post({ type: 'failed', error: serializeError(e) }),
  );
}

run();
