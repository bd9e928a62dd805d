#!/usr/bin/env node
// npm run demo: a real fine-tune on CPU, end to end through the lora-studio CLI.
//   1. generates the demo model into demo/model: a tiny random Llama (about 3.5M parameters)
//      whose byte-level BPE tokenizer is trained on the embedded demo dataset;
//   2. writes the embedded demo dataset (400 chat rows, src/core/fixtures/demoData.ts) to demo/data;
//   3. runs `lora-studio train` on it (LoRA r=16 on all linear layers, CPU, fp32), with a 10%
//      eval split, printing progress;
//   4. compares the base model and the adapter on the held-out rows with `lora-studio eval`,
//      and fails if the training loss did not fall.
// Options: --fresh (regenerate the model), --steps N (default 150).
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const args = process.argv.slice(2);
const fresh = args.includes('--fresh');
const stepsArg = args.indexOf('--steps');
const steps = stepsArg >= 0 ? Number(args[stepsArg + 1]) : 150;
if (!Number.isInteger(steps) || steps < 2) {
  console.error('demo: --steps must be an integer >= 2');
  process.exit(2);
}

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

const cli = path.join(root, 'out', 'src', 'cli.js');
const runtime = process.env.LORA_STUDIO_RUNTIME || path.join(root, 'native-runtime', 'build', 'lora-runtime');
if (!existsSync(cli) || !existsSync(path.join(root, 'out', 'src', 'core', 'fixtures', 'tinyModel.js'))) {
  console.log('demo: building the TypeScript (npm run build:ts)');
  if (run('npm', ['run', '--silent', 'build:ts']) !== 0) process.exit(1);
}
if (!existsSync(runtime)) {
  console.log('demo: building the runtime (npm run build:native)');
  if (run('npm', ['run', '--silent', 'build:native']) !== 0) process.exit(1);
}

const { writeTinyModel } = require(path.join(root, 'out', 'src', 'core', 'fixtures', 'tinyModel.js'));
const { demoRows, demoCorpus, writeDemoDataset } = require(path.join(root, 'out', 'src', 'core', 'fixtures', 'demoData.js'));

const demoDir = path.join(root, 'demo');
const modelDir = path.join(demoDir, 'model');
const dataFile = path.join(demoDir, 'data', 'demo.jsonl');
const runsDir = path.join(demoDir, 'runs');
if (fresh) rmSync(modelDir, { recursive: true, force: true });
const rows = demoRows();
if (!existsSync(path.join(modelDir, 'config.json'))) {
  const info = writeTinyModel(modelDir, {
    arch: 'llama', hidden: 256, layers: 4, heads: 4, kvHeads: 2, intermediate: 688, seed: 1,
    tokenizerStyle: 'llama3', tokenizerCorpus: demoCorpus(rows), tokenizerVocabSize: 1024,
  });
  console.log(`demo: wrote a ${(info.paramCount / 1e6).toFixed(2)}M-parameter Llama with a ${info.tokenizer.vocabSize}-token BPE tokenizer to ${modelDir}`);
}
writeDemoDataset(dataFile, rows);
console.log(`demo: ${rows.length} chat rows in ${dataFile}`);

const train = [cli, 'train', '--model', modelDir, '--data', dataFile, '--runs-dir', runsDir, '--name', 'demo',
  '--preset', 'cpu-quick', '--r', '16', '--alpha', '32', '--lr', '1e-2', '--schedule', 'cosine', '--warmup', '10',
  '--max-steps', String(steps), '--seq-len', '128', '--micro-batch', '8', '--eval-split', '0.1', '--eval-every', '50',
  '--save-every', '50', '--seed', '42'];
console.log(`demo: lora-studio ${train.slice(1).join(' ')}`);
const code = run(process.execPath, train, { env: { ...process.env, LORA_STUDIO_RUNTIME: runtime } });
if (code !== 0) {
  console.error(`demo: training failed (exit code ${code})`);
  process.exit(code);
}

// The newest demo run: read its events to show how the loss moved.
const { listRuns, readEvents } = require(path.join(root, 'out', 'src', 'core', 'runs', 'runs.js'));
const latest = listRuns(runsDir)[0];
const stepsEv = readEvents(latest.dir).filter((e) => e.type === 'step');
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const window = Math.max(1, Math.floor(stepsEv.length / 10));
const first = mean(stepsEv.slice(0, window).map((e) => e.loss));
const last = mean(stepsEv.slice(-window).map((e) => e.loss));
console.log(`demo: training loss fell from ${first.toFixed(3)} (first ${window} steps) to ${last.toFixed(3)} (last ${window} steps)`);

const evalShard = path.join(latest.dir, 'data', 'eval.bin');
if (existsSync(evalShard)) {
  run(process.execPath, [cli, 'eval', '--run', latest.dir, '--data', evalShard, '--compare', '--seq-len', '128'],
    { env: { ...process.env, LORA_STUDIO_RUNTIME: runtime } });
}
console.log(`demo: adapter in ${path.join(latest.dir, 'adapter')}; list runs with: node out/src/cli.js runs --runs-dir demo/runs`);
if (!(last < first - 0.1)) {
  console.error('demo: the loss did not fall; something is wrong');
  process.exit(1);
}
