// The memory estimate against what the runtime really uses on CPU: peak RSS reported in its
// step events, for a model large enough that activations dominate the process baseline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { ShardWriter } from '../../src/core/tokenize/shard';
import { bundledRuntimePath } from '../../src/core/runtime/locate';
import { inspectModel } from '../../src/core/model/inspect';
import { estimateMemory } from '../../src/core/estimate';
import { defaultConfig, toRunJson } from '../../src/core/config';
import { Rng } from '../../src/core/fixtures/rng';

const runtime = process.env.LORA_STUDIO_RUNTIME || bundledRuntimePath(path.resolve(__dirname, '..', '..', '..'));
// A hung runtime fails the test instead of hanging the suite.
const RUNTIME_TIMEOUT_MS = 180_000;
const skip = fs.existsSync(runtime) ? false : `lora-runtime not built (${runtime}); run npm run build:native`;

test('estimate vs measured peak RSS on CPU, with and without checkpointing (within 25%)', { skip }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'est-rt-'));
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { hidden: 192, layers: 4, heads: 4, kvHeads: 2, intermediate: 512 });
  const model = inspectModel(modelDir);
  for (const ckpt of [false, true]) {
    const runDir = path.join(dir, `run-${ckpt}`);
    fs.mkdirSync(path.join(runDir, 'data'), { recursive: true });
    const w = new ShardWriter(path.join(runDir, 'data', 'train.bin'), model.vocab);
    const rng = new Rng(3);
    for (let d = 0; d < 40; d++) w.addDocument(Array.from({ length: 256 }, () => rng.int(model.vocab)), Array.from({ length: 256 }, () => 1));
    await w.finish();
    const c = defaultConfig();
    c.model = modelDir;
    c.lora = { ...c.lora, r: 8, dropout: 0.05 };
    c.quant = { type: 'none', doubleQuant: false, blockSize: 64 };
    c.train = { ...c.train, seqLen: 256, microBatch: 4, gradAccum: 1, maxSteps: 2, gradCheckpointing: ckpt, saveEvery: 0, evalEvery: 0 };
    c.compute = { device: 'cpu', dtype: 'fp32', threads: 1 };
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify(toRunJson(c, { model: modelDir, train: 'data/train.bin', eval: null })));
    const r = spawnSync(runtime, ['train', '--run', runDir], { encoding: 'utf8', timeout: RUNTIME_TIMEOUT_MS, killSignal: 'SIGKILL' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const steps = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.type === 'step');
    const peak = Math.max(...steps.map((s) => s.mem.peak));
    const est = estimateMemory({ model, lora: c.lora, quant: c.quant, train: c.train, device: 'cpu', dtype: 'fp32' }).totalBytes;
    const ratio = est / peak;
    t.diagnostic(`checkpointing=${ckpt}: estimate ${(est / 2 ** 20).toFixed(1)} MiB, measured ${(peak / 2 ** 20).toFixed(1)} MiB, ratio ${ratio.toFixed(2)}`);
    assert.ok(ratio > 0.75 && ratio < 1.25, `checkpointing=${ckpt}: estimate ${(est / 2 ** 20).toFixed(1)} MiB, measured peak ${(peak / 2 ** 20).toFixed(1)} MiB`);
  }
});
