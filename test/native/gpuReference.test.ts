// The GPU session's toolkit (scripts/gpu, docs/gpu.md): what can be checked without a GPU is
// checked here. Every script parses; lstk.py (standard library only) writes the same shard
// bytes as src/core's writer and the runtime reads them; `bench.mjs --gpu` refuses cleanly
// without a GPU; and where python3 has torch, transformers and PEFT, check_reference.py's
// CPU checks (logits vs transformers, adapters vs PEFT, NF4 vs a PyTorch reference) pass.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { RUNTIME, makeModel, makeShard, randomDocs, runRuntime, runtimeBuilt, tmpDir } from './runtimeHelpers';

const ROOT = path.join(__dirname, '..', '..', '..');
const GPU_SCRIPTS = path.join(ROOT, 'scripts', 'gpu');
const PYTHON = process.env.PYTHON ?? 'python3';

function python(args: string[], timeoutMs = 60_000) {
  return spawnSync(PYTHON, args, { encoding: 'utf8', timeout: timeoutMs, cwd: ROOT });
}

const pythonVersion = python(['--version']);
const noPython = pythonVersion.error || pythonVersion.status !== 0 ? `${PYTHON} is not available` : false;

// torch, transformers, peft and safetensors: on the GPU machine's python3, rarely elsewhere.
function referenceStackMissing(): string | false {
  if (noPython) return noPython;
  if (!runtimeBuilt()) return `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
  const r = python(['-c', 'import torch, transformers, peft, safetensors'], 120_000);
  if (r.status !== 0) {
    const missing = /No module named '([^']+)'/.exec(r.stderr)?.[1];
    return `${PYTHON} cannot import torch, transformers, peft and safetensors${missing ? ` (no ${missing})` : ''}; ` +
      'these checks run on the GPU machine (docs/gpu.md)';
  }
  return false;
}

test('every script in scripts/gpu parses (py_compile; bash -n)', { skip: noPython }, () => {
  const out = tmpDir('gpu-pyc');
  const scripts = fs.readdirSync(GPU_SCRIPTS).filter((f) => f.endsWith('.py'));
  assert.ok(scripts.length >= 4, `scripts/gpu has ${scripts.join(', ')}`);
  for (const f of scripts) {
    // cfile outside the tree: no __pycache__ next to the scripts.
    const r = python(['-c', 'import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)',
      path.join(GPU_SCRIPTS, f), path.join(out, `${f}c`)]);
    assert.equal(r.status, 0, `${f} does not compile:\n${r.stderr}`);
  }
  for (const f of fs.readdirSync(GPU_SCRIPTS).filter((x) => x.endsWith('.sh'))) {
    const r = spawnSync('bash', ['-n', path.join(GPU_SCRIPTS, f)], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
  }
  // Each Python entry point answers --help without importing torch (which the GPU machine has
  // and this one may not): a missing module at import time would make the scripts unusable.
  for (const f of ['lstk.py', 'make_model.py', 'check_reference.py', 'bench_gpu.py']) {
    const r = python([path.join(GPU_SCRIPTS, f), '--help']);
    assert.equal(r.status, 0, `${f} --help:\n${r.stderr}`);
    assert.match(r.stdout, /usage:/);
  }
});

test('lstk.py writes the bytes of src/core\'s shard writer, and lora-runtime eval reads its shard', {
  skip: noPython || (runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`),
}, async () => {
  const dir = tmpDir('gpu-lstk');
  const model = path.join(dir, 'model');
  const vocab = makeModel(model, { dtype: 'F32' }).config.vocab_size as number;
  const docs = randomDocs(6, 25, vocab, 17);
  docs[2] = docs[2].slice(0, 1); // a one-token document: no target at all
  const mask = (d: number, i: number): number => (i === 0 ? 0 : d === 3 && i < 10 ? 0 : 1);
  const masks = docs.map((doc, d) => doc.map((_, i) => mask(d, i)));
  const spec = path.join(dir, 'docs.json');
  fs.writeFileSync(spec, JSON.stringify({ docs, masks }));

  const fromPython = path.join(dir, 'python.bin');
  const w = python([path.join(GPU_SCRIPTS, 'lstk.py'), 'shard', '--out', fromPython, '--vocab', String(vocab),
    '--docs-json', spec]);
  assert.equal(w.status, 0, w.stderr);
  const expectedTargets = masks.reduce((n, m) => n + m.slice(1).reduce((a, b) => a + b, 0), 0);
  const tokens = docs.reduce((n, d) => n + d.length, 0);
  assert.deepEqual(JSON.parse(w.stdout), { documents: docs.length, tokens, targets: expectedTargets });

  const fromTs = path.join(dir, 'ts.bin');
  await makeShard(fromTs, docs, vocab, mask);
  assert.ok(fs.readFileSync(fromPython).equals(fs.readFileSync(fromTs)), 'lstk.py and src/core wrote different bytes');

  const read = python([path.join(GPU_SCRIPTS, 'lstk.py'), 'read', fromPython]);
  assert.equal(read.status, 0, read.stderr);
  assert.deepEqual(JSON.parse(read.stdout), { vocab, documents: docs.length, tokens, targets: expectedTargets });

  const r = runRuntime(['eval', '--model', model, '--data', fromPython, '--seq-len', '32']);
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { loss: number; tokens: number };
  assert.equal(out.tokens, expectedTargets);
  assert.ok(Number.isFinite(out.loss) && out.loss > 0, `loss ${out.loss}`);

  // Random documents from the command line: the counts it prints are the file's.
  const rnd = path.join(dir, 'random.bin');
  const g = python([path.join(GPU_SCRIPTS, 'lstk.py'), 'shard', '--out', rnd, '--vocab', String(vocab), '--docs', '4',
    '--len', '16', '--min-len', '3', '--seed', '5']);
  assert.equal(g.status, 0, g.stderr);
  const counts = JSON.parse(g.stdout) as { documents: number; tokens: number; targets: number };
  const e = runRuntime(['eval', '--model', model, '--data', rnd, '--seq-len', '16']);
  assert.equal(e.status, 0, `${e.stdout}\n${e.stderr}`);
  assert.equal((JSON.parse(e.stdout.trim().split('\n').pop()!) as { tokens: number }).tokens, counts.targets);
});

test('bench.mjs --gpu without a GPU says why and exits 1 without running anything else', () => {
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  if (!smi.error && smi.status === 0) return; // a GPU machine: the real benchmark is not run from a unit test
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'bench.mjs'), '--gpu', '--shapes', '1b'], {
    encoding: 'utf8', timeout: 30_000, cwd: ROOT,
  });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /bench --gpu: no NVIDIA GPU here: nvidia-smi/);
  assert.doesNotMatch(r.stdout, /LoRA Studio benchmarks|building/);
});

test('check_reference.py a-c on the CPU: logits vs transformers, adapters vs PEFT, NF4 vs PyTorch', {
  skip: referenceStackMissing(), timeout: 900_000,
}, (t) => {
  const r = python([path.join(GPU_SCRIPTS, 'check_reference.py'), '--checks', 'a,b,c', '--cpu-only', '--runtime', RUNTIME],
    880_000);
  for (const line of r.stdout.split('\n').filter((l) => /^(PASS|FAIL|SKIP) /.test(l))) t.diagnostic(line);
  assert.equal(r.status, 0, `check_reference.py failed:\n${r.stdout}\n${r.stderr.slice(-4000)}`);
  assert.match(r.stdout, /check_reference: \d+ passed, 0 failed/);
  assert.doesNotMatch(r.stdout, /^FAIL /m);
});
