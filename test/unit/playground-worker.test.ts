// Try Adapter's preparation (merge + two ONNX exports) runs on the export worker thread
// (preparePlaygroundInWorker in src/extension/exportInWorker.ts), so the synchronous ONNX writing
// never blocks the extension host. The worker must write the same graphs as the in-process call,
// stream progress, stop promptly on cancel without leaving a partial folder, and hand errors
// back as the classes the playground shows (file and hint included).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { ExportError } from '../../src/core/export/hfModel';
import { PlaygroundError, preparePlayground, type PrepareProgress } from '../../src/core/playground/prepare';
import { runPinnedForRun } from '../../src/core/playground/pinnedRun';
import { CancellationTokenSource } from '../../src/core/runtime/process';
import { preparePlaygroundInWorker } from '../../src/extension/exportInWorker';
import { deserializeError, isWorkerToHost, serializeError } from '../../src/extension/exportWorkerProtocol';
import { tempDir, writeRandomAdapter } from './exportReference';
import { standInCalls, writeMergeStandIn } from './playgroundHelpers';

const repoRoot = path.resolve(__dirname, '..', '..', '..');
const bundledWorker = path.join(repoRoot, 'dist', 'exportWorker.js');

interface Fixture { root: string; modelDir: string; adapterDir: string; runtime: string }

function fixture(prefix: string, size: { layers: number; hidden: number }): Fixture {
  const root = tempDir(prefix);
  const modelDir = path.join(root, 'model');
  writeTinyModel(modelDir, { ...size, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(root, 'run', 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8, seed: 5 });
  // A stand-in `lora-runtime merge` (the same formula in TypeScript), spawned from the worker.
  return { root, modelDir, adapterDir, runtime: writeMergeStandIn(path.join(root, 'lora-runtime')) };
}

/** Every file under `dir`, relative, sorted. */
function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
}

function sameFiles(a: string, b: string): void {
  assert.deepEqual(listFiles(a), listFiles(b));
  for (const f of listFiles(a)) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${f} is byte-identical`);
}

const isCancelled = (e: unknown) => e instanceof PlaygroundError && e.detail === 'cancelled';

test('on a worker: the same ONNX graphs and merged folder as in process, progress streamed, the cache reused', async () => {
  const f = fixture('playground-worker-same-', { layers: 2, hidden: 64 });
  const inProcess = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: path.join(f.root, 'in-process'), runtimePath: f.runtime });
  const cacheDir = path.join(f.root, 'worker');
  const progress: PrepareProgress[] = [];
  const logs: string[] = [];
  const inWorker = await preparePlaygroundInWorker({
    modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: f.runtime,
    onProgress: (p) => progress.push(p), onLog: (l) => logs.push(l),
  });
  assert.deepEqual(inWorker, {
    baseOnnx: path.join(cacheDir, 'base-onnx'), adapterOnnx: path.join(cacheDir, 'adapter-onnx'), mergedDir: path.join(cacheDir, 'merged'),
    rebuilt: { merged: true, base: true, adapter: true },
  });
  sameFiles(inWorker.baseOnnx, inProcess.baseOnnx);
  sameFiles(inWorker.adapterOnnx, inProcess.adapterOnnx);
  sameFiles(inWorker.mergedDir, inProcess.mergedDir);
  assert.deepEqual(fs.readdirSync(cacheDir).filter((n) => n.includes('.tmp-')), [], 'no temporary folders left');
  assert.equal(standInCalls(f.runtime).length, 2, 'one merge in process, one spawned from the worker');

  const phases = progress.map((p) => p.phase).filter((p, i, all) => p !== all[i - 1]);
  assert.deepEqual(phases, ['export-base', 'merge', 'export-adapter']);
  const messages = progress.map((p) => p.message);
  for (const m of ['Exporting the base model to ONNX', 'Exporting the base model to ONNX: Layer 1 of 2', 'Exporting the base model to ONNX: Layer 2 of 2',
                   'Merging the adapter into the base model (lora-runtime merge)', 'Exporting the merged model to ONNX: Layer 2 of 2']) {
    assert.ok(messages.includes(m), `progress "${m}" reached the host`);
  }
  assert.deepEqual(logs, ['merged'], 'the runtime\'s stderr crosses as log lines');

  const again: PrepareProgress[] = [];
  const cached = await preparePlaygroundInWorker({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: f.runtime, onProgress: (p) => again.push(p) });
  assert.deepEqual(cached.rebuilt, { merged: false, base: false, adapter: false });
  assert.deepEqual(again.map((p) => p.phase), ['cached']);
  assert.equal(standInCalls(f.runtime).length, 2, 'no second merge');
});

test('the bundled dist/exportWorker.js prepares the same graphs (it carries no vscode or onnxruntime import)',
  { skip: !fs.existsSync(bundledWorker) && 'dist/exportWorker.js is not built (node scripts/build-webview.mjs)' }, async () => {
    const f = fixture('playground-worker-dist-', { layers: 1, hidden: 32 });
    const inProcess = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: path.join(f.root, 'in-process'), runtimePath: f.runtime });
    const bundled = await preparePlaygroundInWorker({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: path.join(f.root, 'bundled'), runtimePath: f.runtime }, bundledWorker);
    sameFiles(bundled.baseOnnx, inProcess.baseOnnx);
    sameFiles(bundled.adapterOnnx, inProcess.adapterOnnx);
    assert.doesNotMatch(fs.readFileSync(bundledWorker, 'utf8'), /require\("(vscode|onnxruntime-node)"\)/);
  });

test('in process: a cancel between ONNX layers stops the preparation as cancelled and leaves no partial folder', async () => {
  // The regression this guards: preparePlayground gave exportOnnx no token, so Stop waited for both exports.
  const f = fixture('playground-cancel-core-', { layers: 3, hidden: 32 });
  const cacheDir = path.join(f.root, 'cache');
  const cts = new CancellationTokenSource();
  const messages: string[] = [];
  await assert.rejects(preparePlayground({
    modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: f.runtime, token: cts.token,
    onProgress: (p) => {
      messages.push(p.message);
      if (p.message.endsWith('Layer 2 of 3')) cts.cancel();
    },
  }), isCancelled);
  assert.ok(!messages.some((m) => m.endsWith('Layer 3 of 3')), 'the writer stops at the next layer');
  assert.deepEqual(fs.readdirSync(cacheDir), ['playground-cache.json'], 'no base-onnx, no temporary folder');
  assert.equal(JSON.parse(fs.readFileSync(path.join(cacheDir, 'playground-cache.json'), 'utf8')).done.base, false);
  assert.deepEqual(standInCalls(f.runtime), [], 'no merge after a cancel');
});

test('on a worker: cancel mid-export rejects as cancelled, the worker stops early, no partial folder; the next call rebuilds', async () => {
  const f = fixture('playground-worker-cancel-', { layers: 8, hidden: 512 });
  const cacheDir = path.join(f.root, 'cache');
  const cts = new CancellationTokenSource();
  const messages: string[] = [];
  const started = Date.now();
  await assert.rejects(preparePlaygroundInWorker({
    modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: f.runtime, token: cts.token,
    onProgress: (p) => {
      messages.push(p.message);
      // The first layer is reported: the worker is inside the synchronous ONNX writer now.
      if (p.message.endsWith('Layer 1 of 8')) cts.cancel();
    },
  }), isCancelled);
  assert.ok(Date.now() - started < 10_000, 'the worker stopped at a layer check, not after the 15 s grace');
  assert.ok(messages.includes('Exporting the base model to ONNX: Layer 1 of 8'), 'the cancel came mid-write');
  assert.ok(!messages.some((m) => /: Wrote |Merging/.test(m)), `the export stopped before writing the graph: ${messages.join(' | ')}`);
  assert.ok(!messages.some((m) => m.endsWith('Layer 8 of 8')), 'the writer stopped at a layer check');
  assert.deepEqual(fs.readdirSync(cacheDir), ['playground-cache.json'], 'no graph, weights file or temporary folder');
  assert.deepEqual(standInCalls(f.runtime), []);

  const after = await preparePlaygroundInWorker({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: f.runtime });
  assert.deepEqual(after.rebuilt, { merged: true, base: true, adapter: true });
});

test('on a worker: a token cancelled before the start rejects as cancelled without writing anything', async () => {
  const cts = new CancellationTokenSource();
  cts.cancel();
  const dir = tempDir('playground-worker-precancel-');
  await assert.rejects(preparePlaygroundInWorker({ modelDir: dir, adapterDir: dir, cacheDir: path.join(dir, 'cache'), runtimePath: dir, token: cts.token }), isCancelled);
  assert.ok(!fs.existsSync(path.join(dir, 'cache')));
});

test('on a worker: input errors come back as the classes they were, with file and hint', async () => {
  const f = fixture('playground-worker-input-', { layers: 1, hidden: 32 });
  // A base the ONNX exporter refuses: ExportError naming config.json and the field.
  const config = path.join(f.modelDir, 'config.json');
  fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(fs.readFileSync(config, 'utf8')), architectures: ['FalconForCausalLM'], model_type: 'falcon' }));
  const opts = { modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: path.join(f.root, 'cache'), runtimePath: f.runtime };
  const expected = await preparePlayground({ ...opts, cacheDir: path.join(f.root, 'in-process') })
    .then(() => assert.fail('the in-process preparation must fail'), (e: unknown) => e as ExportError);
  assert.ok(expected instanceof ExportError);
  await assert.rejects(preparePlaygroundInWorker(opts), (e: unknown) => {
    assert.ok(e instanceof ExportError, `an ExportError, got ${String(e)}`);
    assert.equal(e.file, expected.file);
    assert.equal(e.field, expected.field);
    assert.ok(e.hint, 'the hint crosses');
    assert.equal(e.hint, expected.hint);
    assert.equal(e.message, expected.message);
    return true;
  });
  assert.deepEqual(fs.readdirSync(opts.cacheDir), ['playground-cache.json'], 'no partial folder after a refused model');

  // A folder problem found before any export: PlaygroundError with its hint apart.
  await assert.rejects(preparePlaygroundInWorker({ ...opts, adapterDir: path.join(f.root, 'nowhere') }), (e: unknown) => {
    assert.ok(e instanceof PlaygroundError, String(e));
    assert.match(e.detail, /nowhere has no adapter_model\.safetensors/);
    assert.equal(e.hint, 'the run has not written its final adapter yet');
    return true;
  });
});

test('on a worker: a failed merge comes back with the runtime\'s message', async () => {
  const f = fixture('playground-worker-merge-fail-', { layers: 1, hidden: 32 });
  const failing = path.join(f.root, 'failing-runtime');
  fs.writeFileSync(failing, `#!/bin/sh\necho '{"v":1,"event":"error","code":"bad_input","message":"adapter_config.json: r must be positive","hint":"retrain"}'\nexit 2\n`, { mode: 0o755 });
  const cacheDir = path.join(f.root, 'cache');
  await assert.rejects(preparePlaygroundInWorker({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir, runtimePath: failing }),
    (e: unknown) => e instanceof PlaygroundError && /merge failed \(exit 2\): adapter_config\.json: r must be positive \(retrain\)/.test(e.detail));
  assert.ok(!fs.existsSync(path.join(cacheDir, 'merged')));
  assert.ok(fs.existsSync(path.join(cacheDir, 'base-onnx', 'model.onnx')), 'the base graph written before the merge is kept for the next try');
});

test('a missing worker file is a PlaygroundError that says how to build it', async () => {
  const dir = tempDir('playground-worker-missing-');
  const missing = path.join(dir, 'exportWorker.js');
  await assert.rejects(preparePlaygroundInWorker({ modelDir: dir, adapterDir: dir, cacheDir: dir, runtimePath: dir }, missing), (e: unknown) => {
    assert.ok(e instanceof PlaygroundError);
    assert.ok(e.detail.includes(missing));
    assert.match(e.hint ?? '', /build-webview/);
    return true;
  });
});

test('runPinnedForRun prepares through the function it is given (the extension passes the worker)', async () => {
  const f = fixture('playground-worker-pinned-', { layers: 1, hidden: 32 });
  const runDir = path.dirname(f.adapterDir);
  fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ v: 1, model: f.modelDir }));
  const ws = tempDir('playground-worker-pinned-ws-');
  fs.mkdirSync(path.join(ws, '.lora-studio'));
  fs.writeFileSync(path.join(ws, '.lora-studio', 'pinned-prompts.json'), JSON.stringify(['Hello']));
  let viaWorker = 0;
  const r = await runPinnedForRun({
    runDir, workspaceDir: ws, runtimePath: f.runtime, settings: { temperature: 0, topP: 1, maxTokens: 2 },
    prepare: (opts) => {
      viaWorker++;
      return preparePlaygroundInWorker(opts);
    },
  });
  assert.equal(viaWorker, 1);
  assert.ok(r && r.outputs.length === 1);
  assert.ok(fs.existsSync(path.join(runDir, 'playground', 'adapter-onnx', 'model.onnx')));
});

test('protocol: a PlaygroundError keeps its class, detail and hint; playground progress and results are checked by shape', () => {
  const err = deserializeError(structuredClone(serializeError(new PlaygroundError('the model folder /m has no config.json', 'pick the folder'))));
  assert.ok(err instanceof PlaygroundError);
  assert.deepEqual([err.detail, err.hint, err.message], ['the model folder /m has no config.json', 'pick the folder', 'the model folder /m has no config.json. pick the folder']);

  const result = { baseOnnx: '/c/base-onnx', adapterOnnx: '/c/adapter-onnx', mergedDir: '/c/merged', rebuilt: { merged: true, base: false, adapter: true } };
  assert.ok(isWorkerToHost({ type: 'progress', progress: { phase: 'export-base', message: 'Layer 1 of 2' } }, 'playground'));
  assert.ok(isWorkerToHost({ type: 'done', result }, 'playground'));
  assert.ok(!isWorkerToHost({ type: 'progress', progress: { phase: 'model', fraction: 0.5, message: 'x' } }, 'playground'), 'an export phase is not a playground phase');
  assert.ok(!isWorkerToHost({ type: 'progress', progress: { phase: 'export-base', message: 'Layer 1 of 2' } }, 'export'), 'an export progress has a fraction');
  assert.ok(!isWorkerToHost({ type: 'done', result: { ...result, rebuilt: { merged: true } } }, 'playground'));
  assert.ok(!isWorkerToHost({ type: 'done', result }, 'export'));
  assert.ok(isWorkerToHost({ type: 'failed', error: serializeError(new PlaygroundError('cancelled')) }, 'playground'));
});
