// ONNX export: onnxruntime-node (CPU) runs the exported decoder graph; its logits equal an
// independent plain forward pass and (when the runtime has `logits`) the runtime's own; the KV
// cache over several decoding steps equals the full-sequence pass; padding does not change
// the unpadded positions; external data loads the same weights.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { TinyModelOptions, writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { exportOnnx, onnxIoNames, OnnxExportResult } from '../../src/core/export/onnx';
import { decodeModel } from '../../src/core/export/onnxProto';
import { ExportError } from '../../src/core/export/hfModel';
import { maxAbsDiff, referenceLogits, runtimeLogits, runtimeWith, writeRandomAdapter, argmax } from './exportReference';
import { tempDir } from './exportReference';

const tmp = tempDir;

interface Step {
  logits: Float32Array;
  dims: readonly number[];
  present: Record<string, ort.Tensor>;
}

const i64 = (rows: number[][]) => new ort.Tensor('int64', BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);

async function run(session: ort.InferenceSession, r: OnnxExportResult, ids: number[][], mask: number[][], pos: number[][],
  past?: Record<string, ort.Tensor>): Promise<Step> {
  const io = onnxIoNames(r.layers);
  const feeds: Record<string, ort.Tensor> = { input_ids: i64(ids), attention_mask: i64(mask), position_ids: i64(pos) };
  const empty = () => new ort.Tensor('float32', new Float32Array(0), [ids.length, r.kvHeads, 0, r.headDim]);
  for (let l = 0; l < r.layers; l++) {
    feeds[io.pastKey[l]] = past ? past[io.presentKey[l]] : empty();
    feeds[io.pastValue[l]] = past ? past[io.presentValue[l]] : empty();
  }
  const out = await session.run(feeds);
  const present: Record<string, ort.Tensor> = {};
  for (let l = 0; l < r.layers; l++) {
    present[io.presentKey[l]] = out[io.presentKey[l]];
    present[io.presentValue[l]] = out[io.presentValue[l]];
  }
  return { logits: out.logits.data as Float32Array, dims: out.logits.dims, present };
}

/** Row `t` of batch `b` of a [batch, seq, vocab] logits tensor. */
function row(s: Step, b: number, t: number): Float32Array {
  const [, seq, vocab] = s.dims;
  return s.logits.subarray((b * seq + t) * vocab, (b * seq + t + 1) * vocab);
}

async function exported(opts: TinyModelOptions, external: 'auto' | 'always' = 'auto') {
  const dir = tmp('onnx-');
  const modelDir = path.join(dir, 'model');
  const info = writeTinyModel(modelDir, opts);
  const r = exportOnnx({ modelDir, outDir: path.join(dir, 'onnx'), externalData: external });
  const session = await ort.InferenceSession.create(r.file, { executionProviders: ['cpu'] });
  return { dir, modelDir, info, r, session };
}

const TOKENS = [3, 200, 17, 45, 300, 9, 120, 77, 5, 260, 31, 64];
const seq = (n: number) => Array.from({ length: n }, (_, i) => i);

const variants: [string, TinyModelOptions][] = [
  ['llama GQA (4 heads, 2 kv heads), untied', { layers: 2, hidden: 64, heads: 4, kvHeads: 2 }],
  ['llama3 rope scaling, tied embeddings, head_dim != hidden / heads', {
    layers: 2, hidden: 48, heads: 4, kvHeads: 1, headDim: 16, tie: true, ropeTheta: 10000,
    ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 },
  }],
  ['qwen2 with q/k/v bias, BF16 weights', { arch: 'qwen2', layers: 2, hidden: 64, heads: 4, kvHeads: 2, dtype: 'BF16' }],
];

for (const [name, opts] of variants) {
  test(`ONNX logits equal the reference forward: ${name}`, async () => {
    const { modelDir, r, session } = await exported(opts);
    const got = await run(session, r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
    assert.deepEqual([...got.dims], [1, TOKENS.length, r.vocab]);
    const ref = referenceLogits(modelDir, TOKENS);
    let worst = 0;
    for (let t = 0; t < TOKENS.length; t++) {
      worst = Math.max(worst, maxAbsDiff(row(got, 0, t), ref[t]));
      assert.equal(argmax(row(got, 0, t)), argmax(ref[t]), `top-1 at position ${t}`);
    }
    assert.ok(worst < 1e-4, `max |ONNX - reference| = ${worst}`);
  });
}

test('ONNX with KV cache over several decoding steps equals the full-sequence logits', async () => {
  const { r, session } = await exported({ layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const full = await run(session, r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
  // A 5-token prompt, then one token at a time, then a 3-token chunk.
  const chunks = [[0, 5], [5, 6], [6, 7], [7, 8], [8, 9], [9, 12]];
  let past: Record<string, ort.Tensor> | undefined;
  let worst = 0;
  for (const [a, b] of chunks) {
    const step = await run(session, r, [TOKENS.slice(a, b)], [seq(b).map(() => 1)], [seq(b).slice(a)], past);
    assert.deepEqual([...step.present[onnxIoNames(r.layers).presentKey[1]].dims], [1, r.kvHeads, b, r.headDim]);
    for (let t = a; t < b; t++) worst = Math.max(worst, maxAbsDiff(row(step, 0, t - a), row(full, 0, t)));
    past = step.present;
  }
  assert.ok(worst < 1e-4, `max |cached - full| = ${worst}`);
});

test('ONNX padding: a left-padded batch row gives the same logits as the unpadded sequence', async () => {
  const { r, session } = await exported({ layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const a = TOKENS.slice(0, 8);
  const b = TOKENS.slice(0, 5);
  const pad = 0;
  const ids = [a, [pad, pad, pad, ...b]];
  const mask = [a.map(() => 1), [0, 0, 0, 1, 1, 1, 1, 1]];
  const pos = [seq(8), [0, 0, 0, 0, 1, 2, 3, 4]];
  const batch = await run(session, r, ids, mask, pos);
  const aloneA = await run(session, r, [a], [a.map(() => 1)], [seq(8)]);
  const aloneB = await run(session, r, [b], [b.map(() => 1)], [seq(5)]);
  let worst = 0;
  for (let t = 0; t < 8; t++) worst = Math.max(worst, maxAbsDiff(row(batch, 0, t), row(aloneA, 0, t)));
  for (let t = 0; t < 5; t++) worst = Math.max(worst, maxAbsDiff(row(batch, 1, t + 3), row(aloneB, 0, t)));
  assert.ok(worst < 1e-4, `max |padded - unpadded| = ${worst}`);
  for (const v of batch.logits) assert.ok(Number.isFinite(v), 'pad positions stay finite');
  // The mask is what keeps pads out: attending to them changes the result.
  const unmasked = await run(session, r, ids, [mask[0], mask[1].map(() => 1)], pos);
  assert.ok(maxAbsDiff(row(unmasked, 1, 7), row(aloneB, 0, 4)) > 1e-3);
});

test('ONNX external data: weights in model.onnx.data load and give the inline graph\'s logits', async () => {
  const opts = { layers: 1, hidden: 64, heads: 4, kvHeads: 2 };
  const inline = await exported(opts, 'auto');
  const ext = await exported(opts, 'always');
  assert.equal(inline.r.dataFile, null);
  assert.ok(ext.r.dataFile && fs.statSync(ext.r.dataFile).size > fs.statSync(ext.r.file).size * 10);
  const m = decodeModel(fs.readFileSync(ext.r.file)) as { graph: { initializer: { name: string; data_location?: number; external_data?: { key: string; value: string }[] }[] } };
  const embed = m.graph.initializer.find((i) => i.name === 'embed_tokens')!;
  assert.equal(embed.data_location, 1);
  assert.equal(embed.external_data?.find((e) => e.key === 'location')?.value, 'model.onnx.data');
  const x = await run(inline.session, inline.r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
  const y = await run(ext.session, ext.r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
  assert.equal(maxAbsDiff(x.logits, y.logits), 0);
});

test('ONNX graph: opset 17, standard ops only, the documented inputs and outputs', async () => {
  const dir = tmp('onnx-g-');
  writeTinyModel(path.join(dir, 'm'), { layers: 2, hidden: 32, heads: 2, kvHeads: 1 });
  const r = exportOnnx({ modelDir: path.join(dir, 'm'), outDir: path.join(dir, 'o') });
  const m = decodeModel(fs.readFileSync(r.file)) as {
    ir_version: number; opset_import: { domain?: string; version: number }[];
    graph: { node: { op_type: string; domain?: string }[]; input: { name: string }[]; output: { name: string }[] };
  };
  assert.equal(m.ir_version, 8);
  assert.deepEqual(m.opset_import.map((o) => [o.domain ?? '', o.version]), [['', 17]]);
  const standard = new Set(['Gather', 'Shape', 'Sub', 'Range', 'LessOrEqual', 'Unsqueeze', 'Cast', 'And', 'Where', 'Mul', 'Concat',
    'Cos', 'Sin', 'Slice', 'Neg', 'Add', 'ReduceMean', 'Sqrt', 'Reciprocal', 'MatMul', 'Reshape', 'Transpose', 'Expand', 'Softmax', 'Sigmoid']);
  for (const n of m.graph.node) {
    assert.ok(standard.has(n.op_type), `op ${n.op_type}`);
    assert.ok(!n.domain, `${n.op_type} in the default domain`);
  }
  assert.deepEqual(m.graph.input.map((i) => i.name), ['input_ids', 'attention_mask', 'position_ids',
    'past_key_values.0.key', 'past_key_values.0.value', 'past_key_values.1.key', 'past_key_values.1.value']);
  assert.deepEqual(m.graph.output.map((o) => o.name), ['logits', 'present.0.key', 'present.0.value', 'present.1.key', 'present.1.value']);
});

test('ONNX export refuses a folder it cannot export, naming the file and field', () => {
  const dir = tmp('onnx-bad-');
  const modelDir = path.join(dir, 'm');
  writeTinyModel(modelDir, { layers: 1, hidden: 32, heads: 2, kvHeads: 1 });
  const cfgFile = path.join(modelDir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, architectures: ['GPTNeoXForCausalLM'] }));
  assert.throws(() => exportOnnx({ modelDir, outDir: path.join(dir, 'o') }), (e: unknown) =>
    e instanceof ExportError && /config\.json \(architectures\)/.test(e.message) && /Supported: LlamaForCausalLM/.test(e.message));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, num_hidden_layers: 2 }));
  assert.throws(() => exportOnnx({ modelDir, outDir: path.join(dir, 'o') }), /model\.layers\.1\.input_layernorm\.weight.*missing/);
  assert.ok(!fs.existsSync(path.join(dir, 'o', 'model.onnx')), 'no partial model.onnx');
});

const logitsCmd = runtimeWith('logits');

test('ONNX logits equal lora-runtime logits (no cache and cached steps)', { skip: logitsCmd.skip }, async (t) => {
  const { modelDir, r, session } = await exported({ layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const want = runtimeLogits(logitsCmd.runtime!, modelDir, TOKENS);
  const full = await run(session, r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
  let worst = 0;
  for (let i = 0; i < TOKENS.length; i++) worst = Math.max(worst, maxAbsDiff(row(full, 0, i), want[i]));
  let past: Record<string, ort.Tensor> | undefined;
  for (let i = 0; i < TOKENS.length; i++) {
    const step = await run(session, r, [[TOKENS[i]]], [seq(i + 1).map(() => 1)], [[i]], past);
    worst = Math.max(worst, maxAbsDiff(row(step, 0, 0), want[i]));
    past = step.present;
  }
  t.diagnostic(`max |ONNX - lora-runtime| = ${worst.toExponential(3)}`);
  assert.ok(worst < 1e-5, `max |ONNX - lora-runtime| = ${worst}`);
});

const mergeCmd = runtimeWith('merge');

test('ONNX of a merged folder equals the reference forward of base + adapter', { skip: mergeCmd.skip }, async (t) => {
  const dir = tmp('onnx-merge-');
  const modelDir = path.join(dir, 'base');
  writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
  const merged = path.join(dir, 'merged');
  const { spawnSync } = await import('node:child_process');
  // f32 merge, so the comparison measures the export and not bf16 rounding of the merged weights.
  const m = spawnSync(mergeCmd.runtime!, ['merge', '--model', modelDir, '--adapter', adapterDir, '--out', merged, '--dtype', 'f32'], { encoding: 'utf8', timeout: 180_000 });
  assert.equal(m.status, 0, m.stderr + m.stdout);
  const r = exportOnnx({ modelDir: merged, outDir: path.join(dir, 'onnx') });
  const session = await ort.InferenceSession.create(r.file);
  const got = await run(session, r, [TOKENS], [TOKENS.map(() => 1)], [seq(TOKENS.length)]);
  const ref = referenceLogits(modelDir, TOKENS, adapterDir);
  let worst = 0;
  for (let i = 0; i < TOKENS.length; i++) worst = Math.max(worst, maxAbsDiff(row(got, 0, i), ref[i]));
  t.diagnostic(`max |ONNX(merged) - reference(base + adapter)| = ${worst.toExponential(3)}`);
  assert.ok(worst < 1e-4, `max diff ${worst}`);
});
