// The exported GGUF files in llama.cpp itself (node-llama-cpp's prebuilt CPU build): the base
// model GGUF with the LoRA GGUF applied yields the next-token logits of the independent
// reference forward (and of lora-runtime when it has `logits`) over a few hundred positions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { spawnSync } from 'node:child_process';
import { TinyModelOptions, writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { exportGguf, GgufModelOutType } from '../../src/core/export/ggufExport';
import { Rng } from '../../src/core/fixtures/rng';
import { argmax, maxAbsDiff, referenceLogits, runtimeLogits, runtimeWith, tempDir, writeRandomAdapter } from './exportReference';

type NodeLlamaCpp = typeof import('node-llama-cpp');

function skipReason(): string | false {
  try {
    require.resolve('node-llama-cpp');
  } catch {
    return 'node-llama-cpp is not installed';
  }
  // The CPU build ships as an npm package per platform; without it node-llama-cpp would compile.
  const prebuilt = `@node-llama-cpp/${process.platform}-${process.arch}`;
  try {
    require.resolve(prebuilt);
  } catch {
    return `no prebuilt llama.cpp for this platform (${prebuilt} is not installed)`;
  }
  return false;
}
const skip = skipReason();

let llamaInstance: ReturnType<NodeLlamaCpp['getLlama']> | null = null;

/** One llama.cpp instance per test file (each getLlama loads the native addon state anew). */
function llamaCpp(): ReturnType<NodeLlamaCpp['getLlama']> {
  if (!llamaInstance) {
    // node-llama-cpp is ESM-only; a real dynamic import (not TypeScript's require rewrite) loads it.
    const importEsm = new Function('u', 'return import(u)') as (u: string) => Promise<NodeLlamaCpp>;
    llamaInstance = importEsm(pathToFileURL(require.resolve('node-llama-cpp')).href).then((m) =>
      // CPU only, prebuilt binaries only: never compile or download at test time.
      m.getLlama({ gpu: false, build: 'never', progressLogs: false, logLevel: m.LlamaLogLevel.error }));
  }
  return llamaInstance;
}

/** llama.cpp's logits at every position of `tokens` (one sequence, no sampling). */
async function llamaCppLogits(modelFile: string, tokens: number[], loraFile?: string): Promise<Map<number, number>[]> {
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath: modelFile });
  try {
    const ctx = await model.createContext({ contextSize: Math.max(64, tokens.length + 8), batchSize: tokens.length,
      lora: loraFile ? { adapters: [{ filePath: loraFile, scale: 1 }] } : undefined });
    const seq = ctx.getSequence();
    const res = await seq.controlledEvaluate(tokens.map((t) => [t as never, { generateNext: { logits: true } }]));
    await ctx.dispose();
    return tokens.map((_, i) => {
      const l = res[i]?.next?.logits;
      assert.ok(l, `llama.cpp returned logits for position ${i}`);
      return l as Map<number, number>;
    });
  } finally {
    await model.dispose();
  }
}

function toDense(m: Map<number, number>, vocab: number): Float64Array {
  const out = new Float64Array(vocab);
  assert.equal(m.size, vocab, 'llama.cpp returned a logit for every vocabulary entry');
  for (const [tok, v] of m) out[tok] = v;
  return out;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.int(vocab));
}

interface Agreement { positions: number; top1: number; maxDiff: number }

function compare(got: Map<number, number>[], want: ArrayLike<number>[], vocab: number): Agreement {
  let top1 = 0;
  let maxDiff = 0;
  got.forEach((m, i) => {
    const g = toDense(m, vocab);
    if (argmax(g) === argmax(want[i])) top1++;
    maxDiff = Math.max(maxDiff, maxAbsDiff(g, want[i]));
  });
  return { positions: got.length, top1, maxDiff };
}

// [name, model, base precision, max logit difference, positions allowed to differ in top-1].
// The random tiny models have near-tied logits, so 8-bit weights (and llama.cpp's 8-bit
// activations in Q8_0 matmuls) flip a few close calls; exact formats must agree everywhere but 2.
const cases: [string, TinyModelOptions, GgufModelOutType, number, number][] = [
  ['llama GQA, f32', { layers: 2, hidden: 64, heads: 4, kvHeads: 2 }, 'f32', 1e-3, 2],
  ['qwen2 with bias (NEOX rope), f32', { arch: 'qwen2', layers: 2, hidden: 64, heads: 4, kvHeads: 2 }, 'f32', 1e-3, 2],
  ['llama tied, f16 base', { layers: 2, hidden: 64, heads: 4, kvHeads: 1, tie: true }, 'f16', 5e-3, 2],
  ['llama GQA, q8_0 base (ffn_down rows of 176 fall back to f16)', { layers: 2, hidden: 64, heads: 4, kvHeads: 2 }, 'q8_0', 2e-2, 8],
];

for (const [name, opts, outType, tol, flips] of cases) {
  test(`llama.cpp: base GGUF + LoRA GGUF match the reference forward (${name})`, { skip, timeout: 300_000 }, async (t) => {
    const dir = tempDir('llamacpp-');
    const modelDir = path.join(dir, 'model');
    const info = writeTinyModel(modelDir, opts);
    const adapterDir = path.join(dir, 'adapter');
    writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
    const res = exportGguf({ modelDir, adapterDir, outDir: path.join(dir, 'gguf'), outType });
    const vocab = info.tokenizer.vocabSize;
    const tokens = randomTokens(256, vocab, 7);
    const base = compare(await llamaCppLogits(res.model!.file, tokens), referenceLogits(modelDir, tokens), vocab);
    const lora = compare(await llamaCppLogits(res.model!.file, tokens, res.adapter!.file), referenceLogits(modelDir, tokens, adapterDir), vocab);
    t.diagnostic(`base: top-1 ${base.top1}/${base.positions}, max |llama.cpp - reference| = ${base.maxDiff.toExponential(3)}`);
    t.diagnostic(`base+LoRA: top-1 ${lora.top1}/${lora.positions}, max |llama.cpp - reference| = ${lora.maxDiff.toExponential(3)}`);
    for (const a of [base, lora]) {
      assert.ok(a.maxDiff < tol, `max logit difference ${a.maxDiff} (tolerance ${tol})`);
      assert.ok(a.top1 >= a.positions - flips, `top-1 agreement ${a.top1}/${a.positions}`);
    }
  });
}

const logitsCmd = runtimeWith('logits');

test('llama.cpp (base GGUF + LoRA GGUF) matches lora-runtime logits with the adapter',
  { skip: skip || logitsCmd.skip, timeout: 300_000 }, async (t) => {
    const dir = tempDir('llamacpp-rt-');
    const modelDir = path.join(dir, 'model');
    const info = writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
    const adapterDir = path.join(dir, 'adapter');
    writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
    const res = exportGguf({ modelDir, adapterDir, outDir: path.join(dir, 'gguf'), outType: 'f32' });
    const tokens = randomTokens(256, info.tokenizer.vocabSize, 11);
    const want = runtimeLogits(logitsCmd.runtime!, modelDir, tokens, adapterDir);
    const a = compare(await llamaCppLogits(res.model!.file, tokens, res.adapter!.file), want, info.tokenizer.vocabSize);
    t.diagnostic(`top-1 ${a.top1}/${a.positions}, max |llama.cpp - lora-runtime| = ${a.maxDiff.toExponential(3)}`);
    assert.ok(a.maxDiff < 1e-3, `max logit difference ${a.maxDiff}`);
    assert.ok(a.top1 >= a.positions - 2, `top-1 agreement ${a.top1}/${a.positions}`);
  });

const mergeCmd = runtimeWith('merge');

test('llama.cpp: the merged folder (lora-runtime merge) exported as GGUF equals base GGUF + LoRA GGUF',
  { skip: skip || mergeCmd.skip, timeout: 300_000 }, async (t) => {
    const dir = tempDir('llamacpp-merge-');
    const modelDir = path.join(dir, 'model');
    const info = writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
    const adapterDir = path.join(dir, 'adapter');
    writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
    const merged = path.join(dir, 'merged');
    const m = spawnSync(mergeCmd.runtime!, ['merge', '--model', modelDir, '--adapter', adapterDir, '--out', merged, '--dtype', 'f32'],
      { encoding: 'utf8', timeout: 180_000, killSignal: 'SIGKILL' });
    assert.equal(m.status, 0, m.stderr + m.stdout);
    const withLora = exportGguf({ modelDir, adapterDir, outDir: path.join(dir, 'a'), outType: 'f32' });
    const mergedGguf = exportGguf({ modelDir: merged, outDir: path.join(dir, 'b'), outType: 'f32' });
    const tokens = randomTokens(128, info.tokenizer.vocabSize, 13);
    const vocab = info.tokenizer.vocabSize;
    const a = await llamaCppLogits(withLora.model!.file, tokens, withLora.adapter!.file);
    const b = await llamaCppLogits(mergedGguf.model!.file, tokens);
    const agreement = compare(b, a.map((x) => toDense(x, vocab)), vocab);
    t.diagnostic(`top-1 ${agreement.top1}/${agreement.positions}, max |merged - base+LoRA| = ${agreement.maxDiff.toExponential(3)}`);
    assert.ok(agreement.maxDiff < 1e-3, `max logit difference ${agreement.maxDiff}`);
    assert.ok(agreement.top1 >= agreement.positions - 2);
  });
