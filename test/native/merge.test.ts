// `lora-runtime merge` and `lora-runtime logits` (issue 6): the merged folder, loaded as a plain
// model, gives the logits of base + adapter; the folder is what HF loaders expect; bad inputs
// are refused with exit code 2 and an error naming the file.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readSafetensorsHeader, readTensorF32 } from '../../src/core/model/safetensors';
import { writeRandomAdapter, referenceLogits } from '../unit/exportReference';
import { RUNTIME, RunResult, errorEvent, makeModel, runRuntime, runtimeBuilt, tmpDir } from './runtimeHelpers';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;

let baseModel = '';
let adapter = '';
let vocab = 0;
let tokens: number[] = [];

before(() => {
  if (skip) return;
  const dir = tmpDir('merge');
  baseModel = path.join(dir, 'base');
  // Untied head and Qwen2's q/k/v biases: the merge must carry every tensor kind across.
  vocab = makeModel(baseModel, { arch: 'qwen2', tie: false, dtype: 'F32' }).config.vocab_size as number;
  adapter = path.join(dir, 'adapter');
  writeRandomAdapter(adapter, baseModel, { r: 4, alpha: 8, seed: 3 });
  tokens = Array.from({ length: 24 }, (_, i) => (i * 37 + 5) % vocab);
});

function ok(args: string[]): RunResult {
  const r = runRuntime(args);
  assert.equal(r.status, 0, `lora-runtime ${args.join(' ')}:\n${r.stderr}${r.stdout}`);
  return r;
}

function logits(model: string, extra: string[] = []): number[][] {
  const r = ok(['logits', '--model', model, '--tokens', tokens.join(','), ...extra]);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { logits: number[][]; tokens: number; vocab: number };
  assert.equal(out.tokens, tokens.length);
  assert.equal(out.vocab, vocab);
  return out.logits;
}

function merge(out: string, extra: string[] = [], adapterDir = adapter): Record<string, unknown> {
  const r = ok(['merge', '--model', baseModel, '--adapter', adapterDir, '--out', out, ...extra]);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

function maxDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    assert.equal(a[i].length, b[i].length);
    for (let j = 0; j < a[i].length; j++) m = Math.max(m, Math.abs(a[i][j] - b[i][j]));
  }
  return m;
}

test('logits: one row of vocab floats per position; --positions last is the last row', { skip }, () => {
  const all = logits(baseModel);
  assert.equal(all.length, tokens.length);
  assert.ok(all.every((row) => row.length === vocab && row.every(Number.isFinite)));
  const last = logits(baseModel, ['--positions', 'last']);
  assert.equal(last.length, 1);
  assert.deepEqual(last[0], all[all.length - 1]);
  // Causal: the first position's logits do not depend on later tokens.
  const r = ok(['logits', '--model', baseModel, '--tokens', String(tokens[0])]);
  assert.deepEqual(JSON.parse(r.stdout).logits[0], all[0]);
});

test('logits agree with the independent reference forward, with and without the adapter', { skip }, (t) => {
  for (const a of [undefined, adapter]) {
    const d = maxDiff(logits(baseModel, a ? ['--adapter', a] : []), referenceLogits(baseModel, tokens, a));
    t.diagnostic(`${a ? 'base+adapter' : 'base'}: max |runtime - reference| = ${d.toExponential(3)}`);
    assert.ok(d < 1e-4, `max diff ${d}`);
  }
});

test('f32 merge: the merged folder without adapter gives the logits of base + adapter', { skip }, (t) => {
  const out = path.join(tmpDir('merge-f32'), 'merged');
  const summary = merge(out, ['--dtype', 'f32']);
  assert.equal(summary.dtype, 'f32');
  assert.equal(summary.merged_modules, 2 * 7);
  assert.equal(summary.shards, 1);
  const withAdapter = logits(baseModel, ['--adapter', adapter]);
  const merged = logits(out);
  const d = maxDiff(merged, withAdapter);
  const effect = maxDiff(logits(baseModel), withAdapter);
  t.diagnostic(`max |merged(f32) - (base + adapter)| = ${d.toExponential(3)}; the adapter itself moves logits by up to ${effect.toExponential(3)}`);
  assert.ok(effect > 1e-2, `the adapter must change the logits for this test to mean anything (${effect})`);
  assert.ok(d < 1e-4, `max diff ${d}`);
});

test('bf16 merge (the default): within bf16 rounding of the weights, far below the adapter\'s own effect', { skip }, (t) => {
  const out = path.join(tmpDir('merge-bf16'), 'merged');
  const summary = merge(out);
  assert.equal(summary.dtype, 'bf16');
  const withAdapter = logits(baseModel, ['--adapter', adapter]);
  const d = maxDiff(logits(out), withAdapter);
  const effect = maxDiff(logits(baseModel), withAdapter);
  t.diagnostic(`max |merged(bf16) - (base + adapter)| = ${d.toExponential(3)} (adapter effect ${effect.toExponential(3)})`);
  // bf16 keeps 8 significant bits: each weight moves by up to 2^-9 of itself, so logits of
  // magnitude ~1 through two layers move by ~1e-2 at most; the adapter's change must still dominate.
  assert.ok(d < 2e-2, `max diff ${d}`);
  assert.ok(d < effect / 5, `bf16 error ${d} vs adapter effect ${effect}`);
});

test('merged folder: base tensor names, config dtype, tokenizer and generation files copied', { skip }, () => {
  const out = path.join(tmpDir('merge-files'), 'merged');
  const summary = merge(out, ['--dtype', 'f16']);
  const base = readSafetensorsHeader(path.join(baseModel, 'model.safetensors'));
  const merged = readSafetensorsHeader(path.join(out, 'model.safetensors'));
  assert.deepEqual(merged.tensors.map((x) => x.name).sort(), base.tensors.map((x) => x.name).sort());
  for (const x of merged.tensors) {
    assert.equal(x.dtype, 'F16', x.name);
    assert.deepEqual(x.shape, base.tensors.find((b) => b.name === x.name)!.shape, x.name);
  }
  assert.equal(summary.tensors, base.tensors.length);
  // Tensors the adapter does not touch come through unchanged (up to f16 rounding).
  const norm = 'model.layers.0.input_layernorm.weight';
  const a = readTensorF32(base, norm), b = readTensorF32(merged, norm);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= Math.abs(a[i]) * 1e-3, norm);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  const baseCfg = JSON.parse(fs.readFileSync(path.join(baseModel, 'config.json'), 'utf8'));
  assert.equal(cfg.torch_dtype, 'float16');
  assert.deepEqual({ ...cfg, torch_dtype: baseCfg.torch_dtype }, baseCfg);
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
    if (!fs.existsSync(path.join(baseModel, f))) continue;
    assert.deepEqual(fs.readFileSync(path.join(out, f)), fs.readFileSync(path.join(baseModel, f)), f);
    assert.ok((summary.copied as string[]).includes(f), f);
  }
  assert.ok(fs.existsSync(path.join(out, 'tokenizer.json')), 'the tiny model has a tokenizer.json to copy');
  assert.deepEqual(fs.readdirSync(path.dirname(out)), ['merged'], 'no temporary folder left behind');
});

test('sharded merge: HF index with total_size and a weight_map over every shard; same logits', { skip }, () => {
  const out = path.join(tmpDir('merge-shards'), 'merged');
  const summary = merge(out, ['--dtype', 'f32', '--shard-size', '60000']);
  const shards = summary.shards as number;
  assert.ok(shards > 2, `expected several shards, got ${shards}`);
  const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8'));
  const files = [...new Set(Object.values(index.weight_map as Record<string, string>))].sort();
  assert.deepEqual(files, Array.from({ length: shards }, (_, i) =>
    `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`));
  let total = 0;
  for (const f of files) {
    const h = readSafetensorsHeader(path.join(out, f));
    for (const x of h.tensors) {
      assert.equal(index.weight_map[x.name], f, x.name);
      total += x.shape.reduce((p, q) => p * q, 1) * 4;
    }
  }
  assert.equal(index.metadata.total_size, total);
  assert.equal(summary.bytes, total);
  assert.ok(!fs.existsSync(path.join(out, 'model.safetensors')));
  assert.ok(maxDiff(logits(out), logits(baseModel, ['--adapter', adapter])) < 1e-4);
});

test('rsLoRA adapter: merged with alpha / sqrt(r), as the reference forward applies it', { skip }, (t) => {
  const dir = tmpDir('merge-rslora');
  const rs = path.join(dir, 'adapter');
  writeRandomAdapter(rs, baseModel, { r: 4, alpha: 8, rslora: true, targets: ['q_proj', 'v_proj', 'down_proj'], seed: 9 });
  const out = path.join(dir, 'merged');
  const summary = merge(out, ['--dtype', 'f32'], rs);
  assert.equal(summary.merged_modules, 2 * 3);
  const d = maxDiff(logits(out), referenceLogits(baseModel, tokens, rs));
  t.diagnostic(`max |merged(rsLoRA) - reference(base + adapter)| = ${d.toExponential(3)}`);
  assert.ok(d < 1e-4, `max diff ${d}`);
});

test('merge --quant nf4 dequantizes the base first: equals logits --quant nf4 with the adapter', { skip }, () => {
  const out = path.join(tmpDir('merge-nf4'), 'merged');
  const r = ok(['merge', '--model', baseModel, '--adapter', adapter, '--out', out, '--dtype', 'f32', '--quant', 'nf4']);
  assert.equal(JSON.parse(r.stdout).dequantized, 'nf4');
  assert.match(r.stderr, /nf4-dequantized/);
  const want = logits(baseModel, ['--adapter', adapter, '--quant', 'nf4']);
  assert.ok(maxDiff(logits(out), want) < 1e-4);
  // ... and differs from merging into the full-precision base by the quantization error.
  assert.ok(maxDiff(logits(out), logits(baseModel, ['--adapter', adapter])) > 1e-4);
});

function refused(args: string[], file: RegExp, code?: string): void {
  const r = runRuntime(args);
  assert.equal(r.status, 2, `exit ${r.status}:\n${r.stdout}${r.stderr}`);
  const e = errorEvent(r);
  assert.match(String(e.file ?? ''), file, JSON.stringify(e));
  if (code) assert.equal(e.code, code);
}

test('merge refuses an adapter for another model, missing files and a non-empty --out', { skip }, () => {
  const dir = tmpDir('merge-bad');
  const other = path.join(dir, 'other');
  makeModel(other, { hidden: 32, heads: 2, kvHeads: 1, intermediate: 64, layers: 2 });
  const wrong = path.join(dir, 'wrong-adapter');
  writeRandomAdapter(wrong, other, { r: 4, alpha: 8 });
  const out = path.join(dir, 'out');
  refused(['merge', '--model', baseModel, '--adapter', wrong, '--out', out], /adapter_model\.safetensors$/, 'adapter_invalid');
  assert.ok(!fs.existsSync(out), 'nothing written for a refused adapter');

  const noCfg = path.join(dir, 'no-config');
  fs.cpSync(adapter, noCfg, { recursive: true });
  fs.rmSync(path.join(noCfg, 'adapter_config.json'));
  refused(['merge', '--model', baseModel, '--adapter', noCfg, '--out', out], /adapter_config\.json$/);

  const noWeights = path.join(dir, 'no-weights');
  fs.cpSync(baseModel, noWeights, { recursive: true });
  for (const f of fs.readdirSync(noWeights)) if (f.endsWith('.safetensors')) fs.rmSync(path.join(noWeights, f));
  refused(['merge', '--model', noWeights, '--adapter', adapter, '--out', out], /no-weights/);

  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, 'keep.txt'), 'mine');
  refused(['merge', '--model', baseModel, '--adapter', adapter, '--out', out], /out$/, 'out_exists');
  assert.equal(fs.readFileSync(path.join(out, 'keep.txt'), 'utf8'), 'mine');
  refused(['merge', '--model', baseModel, '--adapter', adapter, '--out', baseModel, '--force'], /base$/, 'out_exists');
  ok(['merge', '--model', baseModel, '--adapter', adapter, '--out', out, '--force']);
  assert.ok(!fs.existsSync(path.join(out, 'keep.txt')), '--force replaces the folder');
  assert.ok(fs.existsSync(path.join(out, 'model.safetensors')));
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.includes('.tmp-') || f.includes('.old-')), []);
});

test('logits refuses token ids outside the vocabulary and a mismatched adapter', { skip }, () => {
  for (const bad of [`1,${vocab}`, '1,-2', '1,,2', 'abc']) {
    const r = runRuntime(['logits', '--model', baseModel, '--tokens', bad]);
    assert.equal(r.status, 2, bad);
    assert.equal(errorEvent(r).field, '--tokens', bad);
  }
  const dir = tmpDir('logits-bad');
  const other = path.join(dir, 'other');
  makeModel(other, { hidden: 32, heads: 2, kvHeads: 1, intermediate: 64, layers: 1 });
  const wrong = path.join(dir, 'wrong');
  writeRandomAdapter(wrong, other, { r: 2, alpha: 4 });
  refused(['logits', '--model', baseModel, '--adapter', wrong, '--tokens', '1,2'], /adapter_model\.safetensors$/);
});
