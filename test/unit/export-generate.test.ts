// Generation over the exported ONNX graph: greedy decoding through the KV cache picks the same
// tokens as recomputing the whole sequence with the reference forward at every step; sampling
// is reproducible per seed, top-p near 0 is greedy; stop tokens and cancellation end it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { exportOnnx } from '../../src/core/export/onnx';
import { OnnxGenerator, pick } from '../../src/core/export/onnxGenerate';
import { Rng } from '../../src/core/fixtures/rng';
import { argmax, referenceLogits, tempDir } from './exportReference';

async function setup() {
  const dir = tempDir('export-gen-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  exportOnnx({ modelDir, outDir: path.join(dir, 'onnx') });
  return { modelDir, gen: await OnnxGenerator.load(path.join(dir, 'onnx')) };
}

async function collect(it: AsyncGenerator<{ token: number }>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t.token);
  return out;
}

test('greedy generation through the KV cache equals step-by-step full recompute', async () => {
  const { modelDir, gen } = await setup();
  const prompt = [12, 200, 31, 7];
  const got = await collect(gen.generate(prompt, { maxTokens: 12, stopTokens: [] }));
  assert.equal(got.length, 12);
  const seq = [...prompt];
  for (let i = 0; i < 12; i++) {
    const logits = referenceLogits(modelDir, seq);
    seq.push(argmax(logits[logits.length - 1]));
  }
  assert.deepEqual(got, seq.slice(prompt.length));
  await gen.release();
});

test('sampling: same seed same tokens, top-p near 0 is greedy; stop tokens and cancel end generation', async () => {
  const { gen } = await setup();
  const prompt = [5, 6, 7];
  const a = await collect(gen.generate(prompt, { maxTokens: 16, temperature: 1.5, topP: 0.95, seed: 3, stopTokens: [] }));
  const b = await collect(gen.generate(prompt, { maxTokens: 16, temperature: 1.5, topP: 0.95, seed: 3, stopTokens: [] }));
  const c = await collect(gen.generate(prompt, { maxTokens: 16, temperature: 1.5, topP: 0.95, seed: 4, stopTokens: [] }));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const greedy = await collect(gen.generate(prompt, { maxTokens: 8, stopTokens: [] }));
  assert.deepEqual(await collect(gen.generate(prompt, { maxTokens: 8, temperature: 1, topP: 1e-9, stopTokens: [] })), greedy);
  assert.deepEqual(await collect(gen.generate(prompt, { maxTokens: 8, stopTokens: [greedy[3]] })), greedy.slice(0, greedy.indexOf(greedy[3])));
  let calls = 0;
  assert.equal((await collect(gen.generate(prompt, { maxTokens: 8, stopTokens: [], cancelled: () => ++calls > 2 }))).length, 2);
  await assert.rejects(collect(gen.generate([gen.info.vocab], { maxTokens: 1 })), /outside the vocabulary/);
  await gen.release();
});

test('pick: greedy returns the argmax with its softmax probability; nucleus sampling stays inside the nucleus', () => {
  const logits = Float32Array.from([0, 2, 1, -1]);
  const g = pick(logits, 0, 1, new Rng(1));
  assert.equal(g.token, 1);
  const z = Math.exp(0) + Math.exp(2) + Math.exp(1) + Math.exp(-1);
  assert.ok(Math.abs(g.probability - Math.exp(2) / z) < 1e-12);
  const rng = new Rng(2);
  const seen = new Set<number>();
  // Top two tokens hold 0.644 + 0.237 = 0.881 >= 0.85 of the mass; the third would be needed for 0.9.
  for (let i = 0; i < 200; i++) seen.add(pick(logits, 1, 0.85, rng).token);
  assert.deepEqual([...seen].sort(), [1, 2]);
});
