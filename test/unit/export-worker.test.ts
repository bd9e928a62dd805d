// "Export Adapter…" runs exportAdapter on a worker thread (src/extension/exportInWorker.ts), so the
// synchronous GGUF/ONNX writing never blocks the extension host. The worker must write the same
// bytes as the in-process call, stream progress, stop promptly on cancel without leaving a
// partial file, and hand errors back as the classes exportCommand.ts tells apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { exportAdapter } from '../../src/core/export/exportAdapter';
import type { ExportProgress } from '../../src/core/export/ggufExport';
import { ExportError } from '../../src/core/export/hfModel';
import { exportOnnx } from '../../src/core/export/onnx';
import { MergeError } from '../../src/core/export/merge';
import { CancellationTokenSource } from '../../src/core/runtime/process';
import { exportAdapterInWorker, exportWorkerPath } from '../../src/extension/exportInWorker';
import { deserializeError, isWorkerToHost, serializeError } from '../../src/extension/exportWorkerProtocol';
import { runtimeWith, tempDir, writeRandomAdapter } from './exportReference';

const merge = runtimeWith('merge');
const repoRoot = path.resolve(__dirname, '..', '..', '..');
const bundledWorker = path.join(repoRoot, 'dist', 'exportWorker.js');

function fixture(prefix: string, size: { layers: number; hidden: number }): { dir: string; modelDir: string; adapterDir: string } {
  const dir = tempDir(prefix);
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { ...size, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
  return { dir, modelDir, adapterDir };
}

/** Every file under `dir`, relative, sorted. */
function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
}

const isCancelled = (e: unknown) => e instanceof MergeError && e.cancelled;

test('the worker is found beside the running module (out/src/extension under tsc)', () => {
  assert.equal(exportWorkerPath(), path.join(repoRoot, 'out', 'src', 'extension', 'exportWorker.js'));
  assert.ok(fs.existsSync(exportWorkerPath()));
});

test('gguf-adapter on a worker: the same bytes as in process, progress streamed to the host', async () => {
  const { dir, modelDir, adapterDir } = fixture('export-worker-same-', { layers: 2, hidden: 64 });
  const inProcess = await exportAdapter({ format: 'gguf-adapter', modelDir, adapterDir, outDir: path.join(dir, 'in-process') });
  const progress: ExportProgress[] = [];
  const logs: string[] = [];
  const inWorker = await exportAdapterInWorker({
    format: 'gguf-adapter', modelDir, adapterDir, outDir: path.join(dir, 'worker'),
    onProgress: (p) => progress.push(p), onLog: (l) => logs.push(l),
  });
  assert.deepEqual([inWorker.format, inWorker.dtype, inWorker.outDir], [inProcess.format, inProcess.dtype, path.join(dir, 'worker')]);
  assert.deepEqual(inWorker.files.map((f) => path.basename(f)), inProcess.files.map((f) => path.basename(f)));
  assert.ok(fs.readFileSync(inWorker.files[0]).equals(fs.readFileSync(inProcess.files[0])), 'byte-identical GGUF');
  assert.deepEqual(listFiles(path.join(dir, 'worker')), listFiles(path.join(dir, 'in-process')));
  // One message before the tensors, one per tensor (2 layers x 7 modules x A, B), then 'done'.
  assert.equal(progress.length, 1 + 28 + 1);
  assert.deepEqual([progress[0].phase, progress[0].fraction], ['adapter', 0]);
  assert.deepEqual([progress.at(-1)!.phase, progress.at(-1)!.fraction], ['done', 1]);
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i].fraction >= progress[i - 1].fraction, 'fractions never go back');
  assert.deepEqual(logs, [], 'no runtime is involved in a gguf-adapter export');
});

test('gguf-model on a worker: lora-runtime merge runs from the worker, the merged GGUF equals the in-process one', { skip: merge.skip }, async () => {
  const { dir, modelDir, adapterDir } = fixture('export-worker-merge-', { layers: 1, hidden: 32 });
  const runtimePath = merge.runtime!;
  const inProcess = await exportAdapter({ format: 'gguf-model', dtype: 'f32', modelDir, adapterDir, outDir: path.join(dir, 'in-process'), runtimePath });
  const phases = new Set<string>();
  const inWorker = await exportAdapterInWorker({
    format: 'gguf-model', dtype: 'f32', modelDir, adapterDir, outDir: path.join(dir, 'worker'), runtimePath, onProgress: (p) => phases.add(p.phase),
  });
  assert.deepEqual([...phases], ['merge', 'model', 'done']);
  assert.deepEqual(inWorker.files.map((f) => path.basename(f)), inProcess.files.map((f) => path.basename(f)));
  for (let i = 0; i < inWorker.files.length; i++) {
    assert.ok(fs.readFileSync(inWorker.files[i]).equals(fs.readFileSync(inProcess.files[i])), path.basename(inWorker.files[i]));
  }
  assert.deepEqual(listFiles(path.join(dir, 'worker')), listFiles(path.join(dir, 'in-process')), 'the temporary merge folder is gone');
});

test('the bundled dist/exportWorker.js writes the same file (it carries no vscode import)',
  { skip: !fs.existsSync(bundledWorker) && 'dist/exportWorker.js is not built (node scripts/build-webview.mjs)' }, async () => {
    const { dir, modelDir, adapterDir } = fixture('export-worker-dist-', { layers: 1, hidden: 32 });
    const inProcess = await exportAdapter({ format: 'gguf-adapter', modelDir, adapterDir, outDir: path.join(dir, 'in-process') });
    const bundled = await exportAdapterInWorker({ format: 'gguf-adapter', modelDir, adapterDir, outDir: path.join(dir, 'bundled') }, bundledWorker);
    assert.ok(fs.readFileSync(bundled.files[0]).equals(fs.readFileSync(inProcess.files[0])));
  });

test('in process: a cancel between tensors stops the GGUF writer and leaves no file', async () => {
  // The regression this guards: the writers ran to the end whatever the token said.
  const { dir, modelDir, adapterDir } = fixture('export-cancel-core-', { layers: 2, hidden: 64 });
  const out = path.join(dir, 'out');
  const cts = new CancellationTokenSource();
  let tensorsWritten = 0;
  await assert.rejects(exportAdapter({
    format: 'ollama', dtype: 'q8_0', modelDir, adapterDir, outDir: out, token: cts.token,
    onProgress: (p) => {
      if (p.phase !== 'model' || p.fraction === 0) return;
      tensorsWritten++;
      if (tensorsWritten === 3) cts.cancel();
    },
  }), isCancelled);
  assert.equal(tensorsWritten, 3, 'the writer stops at the next tensor');
  assert.deepEqual(listFiles(out), []);
});

test('in process: a cancel between ONNX layers stops the export and leaves no graph or weights file', () => {
  const dir = tempDir('export-cancel-onnx-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 3, hidden: 32, heads: 4, kvHeads: 2 });
  const out = path.join(dir, 'out');
  const cts = new CancellationTokenSource();
  const layers: string[] = [];
  assert.throws(() => exportOnnx({
    modelDir, outDir: out, externalData: 'always', token: cts.token,
    onProgress: (p) => {
      layers.push(p.message);
      if (layers.length === 2) cts.cancel();
    },
  }), (e: unknown) => e instanceof ExportError && e.detail === 'export cancelled');
  assert.deepEqual(layers, ['Layer 1 of 3', 'Layer 2 of 3']);
  assert.deepEqual(listFiles(out), []);
});

test('on a worker: cancel mid-export rejects as cancelled, the worker stops early, no partial file', async () => {
  const { dir, modelDir, adapterDir } = fixture('export-worker-cancel-', { layers: 6, hidden: 256 });
  const out = path.join(dir, 'out');
  const cts = new CancellationTokenSource();
  const progress: ExportProgress[] = [];
  await assert.rejects(exportAdapterInWorker({
    format: 'ollama', dtype: 'q8_0', modelDir, adapterDir, outDir: out, token: cts.token,
    onProgress: (p) => {
      progress.push(p);
      // The first tensor is written: the worker is inside the synchronous GGUF writer now.
      if (p.phase === 'model' && p.fraction > 0) cts.cancel();
    },
  }), isCancelled);
  assert.ok(progress.some((p) => p.phase === 'model' && p.fraction > 0), 'the cancel came mid-write');
  assert.ok(!progress.some((p) => p.phase === 'adapter' || p.phase === 'done'), 'the export stopped inside the model GGUF');
  assert.deepEqual(listFiles(out), [], 'no GGUF, no temporary file, no Modelfile');
});

test('on a worker: a token cancelled before the start rejects without starting a worker', async () => {
  const cts = new CancellationTokenSource();
  cts.cancel();
  const dir = tempDir('export-worker-precancel-');
  await assert.rejects(exportAdapterInWorker({ format: 'gguf-adapter', modelDir: dir, adapterDir: dir, outDir: path.join(dir, 'out'), token: cts.token }), isCancelled);
  assert.ok(!fs.existsSync(path.join(dir, 'out')));
});

test('on a worker: an input error comes back as the ExportError it was, with its file and hint', async () => {
  const { dir, modelDir, adapterDir } = fixture('export-worker-input-', { layers: 1, hidden: 32 });
  fs.rmSync(path.join(adapterDir, 'adapter_model.safetensors'));
  const opts = { format: 'gguf-adapter' as const, modelDir, adapterDir, outDir: path.join(dir, 'out') };
  const expected = await exportAdapter(opts).then(() => assert.fail('the in-process export must fail'), (e: unknown) => e as ExportError);
  await assert.rejects(exportAdapterInWorker(opts), (e: unknown) => {
    assert.ok(e instanceof ExportError, `an ExportError, got ${String(e)}`);
    assert.equal(e.file, path.join(adapterDir, 'adapter_model.safetensors'));
    assert.equal(e.detail, 'missing from the adapter folder');
    assert.match(e.hint ?? '', /PEFT adapter folder/);
    assert.equal(e.message, expected.message);
    return true;
  });
});

test('a missing worker file is an ExportError that says how to build it', async () => {
  const dir = tempDir('export-worker-missing-');
  const missing = path.join(dir, 'exportWorker.js');
  await assert.rejects(exportAdapterInWorker({ format: 'gguf-adapter', modelDir: dir, adapterDir: dir, outDir: dir }, missing), (e: unknown) => {
    assert.ok(e instanceof ExportError);
    assert.equal(e.file, missing);
    assert.match(e.hint ?? '', /build-webview/);
    return true;
  });
});

test('protocol: errors keep their class and fields across the boundary; malformed messages are refused', () => {
  const exportErr = deserializeError(structuredClone(serializeError(new ExportError('/a/b.json', 'r', 'must be positive', 'fix it'))));
  assert.ok(exportErr instanceof ExportError);
  assert.deepEqual([exportErr.file, exportErr.field, exportErr.detail, exportErr.hint, exportErr.message],
    ['/a/b.json', 'r', 'must be positive', 'fix it', '/a/b.json (r): must be positive. fix it']);
  const mergeErr = deserializeError(structuredClone(serializeError(new MergeError('cancelled', undefined, true))));
  assert.ok(mergeErr instanceof MergeError && mergeErr.cancelled && mergeErr.message === 'cancelled');
  const other = deserializeError(structuredClone(serializeError(Object.assign(new RangeError('too big'), { hint: 'smaller' }))));
  assert.deepEqual([other.name, other.message, (other as Error & { hint?: string }).hint], ['RangeError', 'too big', 'smaller']);
  assert.equal(deserializeError(serializeError('plain text')).message, 'plain text');

  assert.ok(isWorkerToHost({ type: 'progress', progress: { phase: 'model', fraction: 0.5, message: 'x' } }, 'export'));
  assert.ok(isWorkerToHost({ type: 'done', result: { format: 'gguf-adapter', outDir: '/o', dtype: 'f32', files: ['/o/a.gguf'] } }, 'export'));
  assert.ok(!isWorkerToHost({ type: 'progress', progress: { phase: 'model' } }, 'export'));
  assert.ok(!isWorkerToHost({ type: 'done', result: { files: [1] } }, 'export'));
  assert.ok(!isWorkerToHost({ type: 'failed', error: { kind: 'other', name: 'E', message: 'm', hint: 3 } }, 'export'));
  assert.ok(!isWorkerToHost({ type: 'unknown' }, 'export'));
  assert.ok(!isWorkerToHost(null, 'export'));
});
