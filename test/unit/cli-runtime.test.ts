// The CLI driving the real lora-runtime on a tiny generated model: prepare, train with eval,
// a PEFT adapter at the end, and a graceful stop + resume.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { demoCorpus, demoRows, writeDemoDataset } from '../../src/core/fixtures/demoData';
import { bundledRuntimePath } from '../../src/core/runtime/locate';
import { readSafetensorsHeader } from '../../src/core/model/safetensors';
import { latestCheckpoint, listRuns, readEvents } from '../../src/core/runs/runs';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli.js');
const runtime = process.env.LORA_STUDIO_RUNTIME || bundledRuntimePath(path.resolve(__dirname, '..', '..', '..'));
// A hung runtime fails the test instead of hanging the suite.
const RUNTIME_TIMEOUT_MS = 180_000;
const skip = fs.existsSync(runtime) ? false : `lora-runtime not built (${runtime}); run npm run build:native`;

function setup() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-rt-'));
  const rows = demoRows(80);
  const model = path.join(dir, 'model');
  writeTinyModel(model, { hidden: 48, layers: 2, heads: 4, kvHeads: 2, tokenizerCorpus: demoCorpus(rows) });
  const data = writeDemoDataset(path.join(dir, 'demo.jsonl'), rows);
  return { dir, model, data, runs: path.join(dir, 'runs') };
}

test('cli + runtime: a CPU fine-tune writes a PEFT adapter and the loss falls', { skip }, () => {
  const e = setup();
  const r = spawnSync(process.execPath, [CLI, 'train', '--model', e.model, '--data', e.data, '--runs-dir', e.runs, '--preset', 'cpu-quick',
    '--max-steps', '30', '--seq-len', '96', '--micro-batch', '4', '--lr', '1e-2', '--r', '8', '--eval-split', '0.1', '--eval-every', '15', '--threads', '1'],
  { encoding: 'utf8', env: { ...process.env, LORA_STUDIO_RUNTIME: runtime }, timeout: RUNTIME_TIMEOUT_MS });
  assert.equal(r.status, 0, r.stderr);
  const [run] = listRuns(e.runs);
  assert.equal(run.status, 'completed');
  assert.equal(run.step, 30);
  const steps = readEvents(run.dir).filter((x) => x.type === 'step') as { loss: number }[];
  const avg = (xs: { loss: number }[]) => xs.reduce((s, x) => s + x.loss, 0) / xs.length;
  assert.ok(avg(steps.slice(-5)) < avg(steps.slice(0, 5)) - 0.1, `loss ${avg(steps.slice(0, 5))} -> ${avg(steps.slice(-5))}`);
  const h = readSafetensorsHeader(path.join(run.dir, 'adapter', 'adapter_model.safetensors'));
  const names = h.tensors.map((t) => t.name);
  assert.ok(names.includes('base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'), names.join(','));
  const a = h.tensors.find((t) => t.name === 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')!;
  assert.deepEqual([a.dtype, a.shape], ['F32', [8, 48]]);
  const cfg = JSON.parse(fs.readFileSync(path.join(run.dir, 'adapter', 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.r, 8);
  assert.equal(cfg.peft_type, 'LORA');
});

test('cli + runtime: SIGINT leaves a resumable run that resume completes', { skip }, async () => {
  const e = setup();
  const child = spawn(process.execPath, [CLI, 'train', '--model', e.model, '--data', e.data, '--runs-dir', e.runs, '--preset', 'cpu-quick',
    '--max-steps', '400', '--seq-len', '64', '--micro-batch', '2', '--save-every', '0', '--eval-split', '0', '--threads', '1', '--json'],
  { env: { ...process.env, LORA_STUDIO_RUNTIME: runtime }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let sent = false;
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    if (!sent && (out.match(/"type":"step"/g) ?? []).length >= 2) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const watchdog = setTimeout(() => child.kill('SIGKILL'), RUNTIME_TIMEOUT_MS);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(watchdog);
  assert.equal(code, 0, 'the CLI exits cleanly after a stop (a kill here means the runtime hung)');
  const [run] = listRuns(e.runs);
  assert.equal(run.status, 'stopped');
  const ck = latestCheckpoint(run.dir);
  assert.ok(ck, 'a checkpoint is written at stop even with save_every 0');
  assert.ok(run.step < 400);
  // finish quickly: resume with the same run.json (400 steps of 128 tokens is fast enough on a tiny model)
  const res = spawnSync(process.execPath, [CLI, 'resume', run.dir], { encoding: 'utf8', env: { ...process.env, LORA_STUDIO_RUNTIME: runtime }, timeout: RUNTIME_TIMEOUT_MS });
  assert.equal(res.status, 0, res.stderr);
  const after = listRuns(e.runs)[0];
  assert.equal(after.status, 'completed');
  assert.equal(after.step, 400);
  assert.ok(fs.existsSync(path.join(run.dir, 'adapter', 'adapter_model.safetensors')));
});
