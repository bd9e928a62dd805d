// The exports against lora-runtime itself, through the command it has today: `eval` (mean
// next-token loss over a token shard). The same loss computed from the exported ONNX graph in
// onnxruntime-node, and from the exported base + LoRA GGUF files in llama.cpp, must equal the
// runtime's. A loss is a sum over every target's log-softmax, so a wrong logit anywhere shows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { ShardWriter } from '../../src/core/tokenize/shard';
import { Rng } from '../../src/core/fixtures/rng';
import { exportOnnx, onnxIoNames } from '../../src/core/export/onnx';
import { exportGguf } from '../../src/core/export/ggufExport';
import { referenceLogits, runtimeWith, tempDir, writeRandomAdapter } from './exportReference';

const evalCmd = runtimeWith('eval');

function llamaCppSkip(): string | false {
  try {
    require.resolve('node-llama-cpp');
    require.resolve(`@node-llama-cpp/${process.platform}-${process.arch}`);
    return false;
  } catch {
    return 'node-llama-cpp with a prebuilt CPU build for this platform is not installed';
  }
}

/** Mean of -log softmax(logits[t - 1])[tokens[t]] over t = 1..n-1, summed per document. */
function nll(logitsAt: (t: number) => ArrayLike<number>, tokens: readonly number[]): { sum: number; count: number } {
  let sum = 0;
  for (let t = 1; t < tokens.length; t++) {
    const l = logitsAt(t - 1);
    let mx = -Infinity;
    for (let i = 0; i < l.length; i++) mx = Math.max(mx, l[i]);
    let z = 0;
    for (let i = 0; i < l.length; i++) z += Math.exp(l[i] - mx);
    sum += -(l[tokens[t]] - mx - Math.log(z));
  }
  return { sum, count: tokens.length - 1 };
}

async function fixture() {
  const dir = tempDir('export-rt-');
  const modelDir = path.join(dir, 'model');
  const info = writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
  const rng = new Rng(5);
  const docs = [40, 25, 33].map((n) => Array.from({ length: n }, () => rng.int(info.tokenizer.vocabSize)));
  const shard = path.join(dir, 'eval.bin');
  const w = new ShardWriter(shard, info.tokenizer.vocabSize);
  for (const d of docs) w.addDocument(d, d.map((_, i) => (i === 0 ? 0 : 1)));
  await w.finish();
  return { dir, modelDir, adapterDir, docs, shard, vocab: info.tokenizer.vocabSize };
}

function runtimeLoss(modelDir: string, shard: string, adapterDir?: string): { loss: number; tokens: number } {
  const args = ['eval', '--model', modelDir, '--data', shard, '--quant', 'none', '--threads', '1'];
  if (adapterDir) args.push('--adapter', adapterDir);
  const r = spawnSync(evalCmd.runtime!, args, { encoding: 'utf8', timeout: 180_000, killSignal: 'SIGKILL' });
  assert.equal(r.status, 0, `lora-runtime ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

function mean(parts: { sum: number; count: number }[]): { loss: number; tokens: number } {
  const sum = parts.reduce((a, p) => a + p.sum, 0);
  const count = parts.reduce((a, p) => a + p.count, 0);
  return { loss: sum / count, tokens: count };
}

test('lora-runtime eval loss equals the reference forward\'s, with and without the adapter', { skip: evalCmd.skip }, async (t) => {
  const f = await fixture();
  for (const adapter of [undefined, f.adapterDir]) {
    const want = runtimeLoss(f.modelDir, f.shard, adapter);
    const got = mean(f.docs.map((d) => { const l = referenceLogits(f.modelDir, d, adapter); return nll((i) => l[i], d); }));
    t.diagnostic(`${adapter ? 'base+adapter' : 'base'}: runtime ${want.loss}, reference ${got.loss}, |diff| ${Math.abs(want.loss - got.loss).toExponential(3)}`);
    assert.equal(got.tokens, want.tokens);
    assert.ok(Math.abs(got.loss - want.loss) < 1e-5, `runtime ${want.loss} vs reference ${got.loss}`);
  }
});

test('ONNX export: loss from onnxruntime-node logits equals lora-runtime eval', { skip: evalCmd.skip }, async (t) => {
  const f = await fixture();
  const r = exportOnnx({ modelDir: f.modelDir, outDir: path.join(f.dir, 'onnx') });
  const session = await ort.InferenceSession.create(r.file);
  const io = onnxIoNames(r.layers);
  const parts = [];
  for (const d of f.docs) {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(d.map(BigInt)), [1, d.length]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(d.length).fill(1n), [1, d.length]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(d.map((_, i) => BigInt(i))), [1, d.length]),
    };
    for (let l = 0; l < r.layers; l++) {
      feeds[io.pastKey[l]] = new ort.Tensor('float32', new Float32Array(0), [1, r.kvHeads, 0, r.headDim]);
      feeds[io.pastValue[l]] = new ort.Tensor('float32', new Float32Array(0), [1, r.kvHeads, 0, r.headDim]);
    }
    const logits = (await session.run(feeds)).logits.data as Float32Array;
    parts.push(nll((i) => logits.subarray(i * r.vocab, (i + 1) * r.vocab), d));
  }
  const got = mean(parts);
  const want = runtimeLoss(f.modelDir, f.shard);
  t.diagnostic(`runtime ${want.loss}, ONNX ${got.loss}, |diff| ${Math.abs(want.loss - got.loss).toExponential(3)}`);
  assert.equal(got.tokens, want.tokens);
  assert.ok(Math.abs(got.loss - want.loss) < 1e-5, `runtime ${want.loss} vs ONNX ${got.loss}`);
});

test('GGUF export: loss from llama.cpp (base GGUF + LoRA GGUF) equals lora-runtime eval with the adapter',
  { skip: evalCmd.skip || llamaCppSkip(), timeout: 300_000 }, async (t) => {
    const f = await fixture();
    const res = exportGguf({ modelDir: f.modelDir, adapterDir: f.adapterDir, outDir: path.join(f.dir, 'gguf'), outType: 'f32' });
    const importEsm = new Function('u', 'return import(u)') as (u: string) => Promise<typeof import('node-llama-cpp')>;
    const m = await importEsm(pathToFileURL(require.resolve('node-llama-cpp')).href);
    const llama = await m.getLlama({ gpu: false, build: 'never', progressLogs: false, logLevel: m.LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: res.model!.file });
    const ctx = await model.createContext({ contextSize: 128, lora: { adapters: [{ filePath: res.adapter!.file }] } });
    const parts = [];
    try {
      const seq = ctx.getSequence();
      for (const d of f.docs) {
        await seq.clearHistory();
        const out = await seq.controlledEvaluate(d.map((tok) => [tok as never, { generateNext: { logits: true } }]));
        const dense = out.map((o) => {
          const v = new Float64Array(f.vocab);
          for (const [tok, x] of o!.next.logits!) v[tok] = x;
          return v;
        });
        parts.push(nll((i) => dense[i], d));
      }
    } finally {
      await ctx.dispose();
      await model.dispose();
    }
    const got = mean(parts);
    const want = runtimeLoss(f.modelDir, f.shard, f.adapterDir);
    t.diagnostic(`runtime ${want.loss}, llama.cpp ${got.loss}, |diff| ${Math.abs(want.loss - got.loss).toExponential(3)}`);
    assert.equal(got.tokens, want.tokens);
    assert.ok(Math.abs(got.loss - want.loss) < 2e-4, `runtime ${want.loss} vs llama.cpp ${got.loss}`);
    assert.ok(fs.existsSync(res.modelfile));
  });
