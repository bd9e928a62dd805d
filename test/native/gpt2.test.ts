// GPT-2 end to end with the lora-runtime binary on a tiny generated GPT2LMHeadModel:
// memorisation with LoRA on c_attn/c_proj/c_fc, the PEFT adapter layout for Conv1D layers
// (keys under transformer.h, lora_A [r, in], lora_B [out, r], fan_in_fan_out: true),
// continuing from that adapter, quantized loads, inspect, and the GPT-2-specific bad inputs.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel, TinyModelInfo } from '../../src/core/fixtures/tinyModel';
import { readSafetensorsHeader, readTensorF32, writeSafetensors, TensorToWrite } from '../../src/core/model/safetensors';
import {
  RUNTIME, errorEvent, makeShard, randomDocs, runRuntime, runtimeBuilt, tmpDir, writeRunJson,
} from './runtimeHelpers';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
const GPT2_TARGETS = ['c_attn', 'c_proj', 'c_fc'];
let modelDir = '';
let info: TinyModelInfo;
let vocab = 0;
let docs: number[][] = [];

/** A tiny GPT-2 whose tied wte is scaled by `headScale`: as for the Llama fixture, HF's
 *  std-0.02 init bounds every logit to about 1 after ln_f, which no adapter can sharpen
 *  into a memorised distribution; std 0.5 allows it. */
function makeGpt2(dir: string, headScale: number): TinyModelInfo {
  const m = writeTinyModel(dir, { arch: 'gpt2', hidden: 64, layers: 2, heads: 4, maxPositionEmbeddings: 64, seed: 3 });
  const file = path.join(dir, 'model.safetensors');
  const header = readSafetensorsHeader(file);
  const tensors: TensorToWrite[] = header.tensors.map((t) => {
    const data = readTensorF32(header, t.name);
    if (t.name === 'transformer.wte.weight') for (let i = 0; i < data.length; i++) data[i] *= headScale;
    return { name: t.name, dtype: t.dtype, shape: t.shape, data };
  });
  writeSafetensors(file, tensors, { format: 'pt' });
  return m;
}

before(() => {
  if (skip) return;
  modelDir = path.join(tmpDir('gpt2-model'), 'tiny-gpt2');
  info = makeGpt2(modelDir, 25);
  vocab = info.config.vocab_size as number;
  docs = randomDocs(8, 24, vocab, 5);
});

async function newRun(tag: string, over: Parameters<typeof writeRunJson>[2] = {}): Promise<string> {
  const run = tmpDir(tag);
  await makeShard(path.join(run, 'data', 'train.bin'), docs, vocab);
  writeRunJson(run, modelDir, { ...over, lora: { targets: GPT2_TARGETS, ...over.lora } });
  return run;
}

test('a tiny GPT-2 with LoRA on c_attn, c_proj and c_fc memorises a small dataset', { skip }, async () => {
  // Same data and threshold as the Llama overfitting test (train.test.ts): 184 targets of
  // random tokens, chance ln(vocab) ~ 6.2; a mean loss under 0.5 needs memorisation.
  const run = await newRun('gpt2-overfit', { train: { max_steps: 120, eval_every: 60 }, data: { eval: 'data/train.bin' } });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const model = r.events.find((e) => e.type === 'model')!;
  assert.equal(model.arch, 'gpt2');
  assert.equal(model.hf_architecture, 'GPT2LMHeadModel');
  assert.deepEqual(model.targets, GPT2_TARGETS);
  // r = 8 on c_attn (64 -> 192), attn.c_proj (64 -> 64), c_fc (64 -> 256), mlp.c_proj (256 -> 64), 2 layers.
  assert.equal(model.params_trainable, 2 * 8 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)));
  const steps = r.events.filter((e) => e.type === 'step');
  assert.equal(steps.length, 120);
  const first = steps[0].loss as number;
  const last = steps[steps.length - 1].loss as number;
  assert.ok(first > 0.8 * Math.log(vocab), `initial loss ${first} should be near chance ${Math.log(vocab)}`);
  assert.ok(last < 0.5, `final train loss ${last} should be < 0.5 (memorised)`);
  const evals = r.events.filter((e) => e.type === 'eval');
  assert.ok((evals[evals.length - 1].loss as number) < 0.5);

  // The eval command on base and adapter: the adapter is what memorised.
  const shard = path.join(run, 'data', 'train.bin');
  const ev = JSON.parse(runRuntime(['eval', '--model', modelDir, '--adapter', path.join(run, 'adapter'), '--data', shard]).stdout.trim());
  const base = JSON.parse(runRuntime(['eval', '--model', modelDir, '--data', shard]).stdout.trim());
  assert.ok(Math.abs(ev.loss - (evals[evals.length - 1].loss as number)) < 1e-3, `eval ${ev.loss}`);
  assert.ok(base.loss > ev.loss + 2, `base ${base.loss} vs adapter ${ev.loss}`);
});

test('the GPT-2 adapter has PEFT\'s Conv1D key names, shapes and fan_in_fan_out, and continues training', { skip }, async () => {
  const run = await newRun('gpt2-adapter', { lora: { r: 4, alpha: 8, targets: ['c_attn', 'c_proj'] }, train: { max_steps: 3 } });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const dir = path.join(run, 'adapter');
  const header = readSafetensorsHeader(path.join(dir, 'adapter_model.safetensors'));
  const expected = new Map<string, number[]>();
  for (let l = 0; l < 2; l++) {
    const p = `base_model.model.transformer.h.${l}`;
    expected.set(`${p}.attn.c_attn.lora_A.weight`, [4, 64]);
    expected.set(`${p}.attn.c_attn.lora_B.weight`, [192, 4]);
    expected.set(`${p}.attn.c_proj.lora_A.weight`, [4, 64]);
    expected.set(`${p}.attn.c_proj.lora_B.weight`, [64, 4]);
    expected.set(`${p}.mlp.c_proj.lora_A.weight`, [4, 256]);
    expected.set(`${p}.mlp.c_proj.lora_B.weight`, [64, 4]);
  }
  assert.equal(header.tensors.length, expected.size);
  for (const t of header.tensors) {
    assert.deepEqual(t.shape, expected.get(t.name), t.name);
    assert.equal(t.dtype, 'F32');
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.fan_in_fan_out, true);
  assert.deepEqual(cfg.target_modules, ['c_attn', 'c_proj']);
  assert.equal(cfg.peft_type, 'LORA');
  assert.equal(cfg.r, 4);
  assert.equal(cfg.lora_alpha, 8);
  // B was trained away from zero.
  assert.ok(readTensorF32(header, 'base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight').some((v) => v !== 0));

  // The adapter reads back as lora.init_adapter.
  const next = await newRun('gpt2-continue', { lora: { r: 4, alpha: 8, targets: ['c_attn', 'c_proj'], init_adapter: dir }, train: { max_steps: 1 } });
  const r2 = runRuntime(['train', '--run', next]);
  assert.equal(r2.status, 0, r2.stderr + r2.stdout);
});

test('quantized GPT-2 loads hold fewer bytes (nf4 < int8 < none) and train', { skip }, async () => {
  const bytes: Record<string, number> = {};
  for (const q of ['none', 'int8', 'nf4']) {
    const run = await newRun(`gpt2-${q}`, { quant: { type: q, double_quant: q !== 'none' }, train: { max_steps: 2 } });
    const r = runRuntime(['train', '--run', run]);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    bytes[q] = r.events.find((e) => e.type === 'model')!.bytes_base as number;
    assert.ok(r.events.some((e) => e.type === 'done' && e.status === 'completed'));
  }
  assert.ok(bytes.int8 < bytes.none && bytes.nf4 < bytes.int8, JSON.stringify(bytes));
});

test('inspect lists GPT-2\'s modules with their shapes', { skip }, () => {
  const r = runRuntime(['inspect', '--model', modelDir]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.equal(out.arch, 'gpt2');
  assert.equal(out.max_position_embeddings, 64);
  assert.equal(out.tie_word_embeddings, true);
  assert.deepEqual(out.target_modules.map((t: { name: string; path: string; in: number; out: number }) => [t.name, t.path, t.in, t.out]), [
    ['c_attn', 'attn.c_attn', 64, 192], ['c_proj', 'attn.c_proj', 64, 64], ['c_fc', 'mlp.c_fc', 64, 256], ['c_proj', 'mlp.c_proj', 256, 64],
  ]);
  assert.equal(out.params_total, info.paramCount);
});

test('GPT-2 bad inputs: Llama target names, seq_len beyond n_positions', { skip }, async () => {
  const wrong = await newRun('gpt2-llama-targets', { lora: { targets: ['q_proj', 'v_proj'] } });
  const r = runRuntime(['train', '--run', wrong]);
  assert.equal(r.status, 2);
  const e = errorEvent(r);
  assert.equal(e.field, 'lora.targets');
  assert.match(String(e.hint), /c_attn, c_proj, c_fc/);

  const long = await newRun('gpt2-long', { train: { seq_len: 128 } });
  const r2 = runRuntime(['train', '--run', long]);
  assert.equal(r2.status, 2);
  const e2 = errorEvent(r2);
  assert.equal(e2.field, 'train.seq_len');
  assert.match(String(e2.hint), /at most 64/);
});
