// Every bad input of issue 2 gives an `error` event naming the file (and field where there
// is one), exit code 2, no crash and no half-written checkpoint.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { readSafetensorsHeader, readTensorF32, writeSafetensors, TensorToWrite } from '../../src/core/model/safetensors';
import {
  RUNTIME, RunResult, copyDir, errorEvent, makeModel, makeShard, randomDocs, readEventsFile, runRuntime, runtimeBuilt,
  tmpDir, writeRunJson,
} from './runtimeHelpers';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
let goodModel = '';
let vocab = 0;

before(() => {
  if (skip) return;
  goodModel = path.join(tmpDir('bad-model'), 'tiny');
  vocab = makeModel(goodModel, { hidden: 32, heads: 2, kvHeads: 1, intermediate: 64, layers: 1 }).config.vocab_size as number;
});

function modelCopy(tag: string): string {
  const dir = path.join(tmpDir(tag), 'model');
  copyDir(goodModel, dir);
  return dir;
}

async function runWith(tag: string, model: string, over: Parameters<typeof writeRunJson>[2] = {},
  shard?: (file: string) => Promise<void>): Promise<{ run: string; r: RunResult }> {
  const run = tmpDir(tag);
  const train = path.join(run, 'data', 'train.bin');
  if (shard) {
    fs.mkdirSync(path.dirname(train), { recursive: true });
    await shard(train);
  } else {
    await makeShard(train, randomDocs(4, 12, vocab, 1), vocab);
  }
  writeRunJson(run, model, { train: { max_steps: 2, seq_len: 16 }, ...over });
  return { run, r: runRuntime(['train', '--run', run]) };
}

function expectBadInput(r: RunResult, check: { code?: string; file?: RegExp | string; field?: string }): void {
  assert.equal(r.status, 2, `exit ${r.status}; stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  const e = errorEvent(r);
  assert.equal(e.v, 1);
  if (check.code) assert.equal(e.code, check.code, JSON.stringify(e));
  if (typeof check.file === 'string') assert.equal(e.file, check.file, JSON.stringify(e));
  else if (check.file) assert.match(String(e.file), check.file, JSON.stringify(e));
  if (check.field) assert.equal(e.field, check.field, JSON.stringify(e));
  assert.ok(typeof e.message === 'string' && (e.message as string).length > 0);
  assert.ok(typeof e.hint === 'string' && (e.hint as string).length > 0, `no hint: ${JSON.stringify(e)}`);
  const done = r.events[r.events.length - 1];
  if (done.type === 'done') assert.equal(done.status, 'failed');
}

test('missing model.safetensors', { skip }, async () => {
  const model = modelCopy('nost');
  fs.rmSync(path.join(model, 'model.safetensors'));
  const { run, r } = await runWith('nost', model);
  expectBadInput(r, { code: 'safetensors_missing', file: /model/ });
  assert.deepEqual(readEventsFile(run), r.events, 'the error is in events.jsonl too');
});

test('truncated safetensors', { skip }, async () => {
  const model = modelCopy('trunc');
  const f = path.join(model, 'model.safetensors');
  fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
  const { r } = await runWith('trunc', model);
  expectBadInput(r, { code: 'safetensors_truncated', file: f });
  assert.ok(String(errorEvent(r).field).length > 0, 'names the tensor');
});

test('a header that lies about shapes', { skip }, async () => {
  // A well-formed file whose header claims a shape that config.json contradicts.
  const model = modelCopy('lie');
  const f = path.join(model, 'model.safetensors');
  const header = readSafetensorsHeader(f);
  const tensors: TensorToWrite[] = header.tensors.map((t) => {
    const data = readTensorF32(header, t.name);
    const shape = t.name === 'model.layers.0.mlp.up_proj.weight' ? [t.shape[1], t.shape[0]] : t.shape;
    return { name: t.name, dtype: t.dtype, shape, data };
  });
  writeSafetensors(f, tensors, { format: 'pt' });
  const { r } = await runWith('lie', model);
  expectBadInput(r, { code: 'tensor_shape', file: f, field: 'model.layers.0.mlp.up_proj.weight' });
});

test('a header that lies about offsets', { skip }, async () => {
  const model = modelCopy('offs');
  const f = path.join(model, 'model.safetensors');
  const buf = fs.readFileSync(f);
  const n = Number(buf.readBigUInt64LE(0));
  const json = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const name = 'model.norm.weight';
  const [b, e] = json[name].data_offsets as number[];
  json[name].data_offsets = [b + 4, e + 4];  // overlaps the next tensor / size mismatch
  let text = JSON.stringify(json);
  text = text.padEnd(Math.ceil(text.length / 8) * 8, ' ');
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(f, Buffer.concat([head, Buffer.from(text), buf.subarray(8 + n)]));
  const { r } = await runWith('offs', model);
  expectBadInput(r, { file: f });
  assert.match(String(errorEvent(r).code), /^safetensors_/);
});

test('unsupported architecture', { skip }, async () => {
  const model = modelCopy('arch');
  const cfgFile = path.join(model, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  cfg.architectures = ['GPTNeoXForCausalLM'];
  cfg.model_type = 'gpt_neox';
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
  const { r } = await runWith('arch', model);
  expectBadInput(r, { code: 'unsupported_architecture', file: cfgFile, field: 'architectures' });
  assert.match(String(errorEvent(r).hint), /LlamaForCausalLM/);
  assert.match(String(errorEvent(r).hint), /GPT2LMHeadModel/);
});

test('unsupported dtype', { skip }, async () => {
  const model = modelCopy('dtype');
  const f = path.join(model, 'model.safetensors');
  const header = readSafetensorsHeader(f);
  const tensors: TensorToWrite[] = header.tensors.map((t) => {
    if (t.name !== 'model.layers.0.self_attn.v_proj.weight') return { name: t.name, dtype: t.dtype, shape: t.shape, data: readTensorF32(header, t.name) };
    return { name: t.name, dtype: 'I32', shape: t.shape, data: new Uint8Array(4 * t.shape[0] * t.shape[1]) };
  });
  writeSafetensors(f, tensors, { format: 'pt' });
  const { r } = await runWith('dtype', model);
  expectBadInput(r, { file: f, field: 'model.layers.0.self_attn.v_proj.weight' });
  assert.match(String(errorEvent(r).message), /I32/);
});

test('unknown target module', { skip }, async () => {
  const { run, r } = await runWith('target', goodModel, { lora: { targets: ['q_proj', 'qkv_proj'] } });
  expectBadInput(r, { code: 'config_field', file: path.join(run, 'run.json'), field: 'lora.targets' });
  assert.match(String(errorEvent(r).hint), /gate_proj/);
  assert.ok((errorEvent(r).line as number) > 1, 'points at the line in run.json');
});

test('r larger than the layer', { skip }, async () => {
  // k_proj of the tiny model is [16, 32]: r = 17 cannot fit.
  const { run, r } = await runWith('rank', goodModel, { lora: { r: 17 } });
  expectBadInput(r, { code: 'config_field', file: path.join(run, 'run.json'), field: 'lora.r' });
  assert.match(String(errorEvent(r).hint), /16/);
});

test('invalid run.json field with its line', { skip }, async () => {
  const { run, r } = await runWith('field', goodModel, { train: { max_steps: 2, seq_len: 16, lr: -1 } });
  expectBadInput(r, { code: 'config_field', file: path.join(run, 'run.json'), field: 'train.lr' });
  const lines = fs.readFileSync(path.join(run, 'run.json'), 'utf8').split('\n');
  assert.match(lines[(errorEvent(r).line as number) - 1], /"lr": -1/);
});

test('a shard with a wrong magic', { skip }, async () => {
  const { run, r } = await runWith('magic', goodModel, {}, async (file) => {
    fs.writeFileSync(file, Buffer.concat([Buffer.from('NOPE'), Buffer.alloc(60)]));
  });
  expectBadInput(r, { code: 'shard_magic', file: path.join(run, 'data', 'train.bin') });
});

test('a truncated shard', { skip }, async () => {
  const { run, r } = await runWith('shtrunc', goodModel, {}, async (file) => {
    await makeShard(file, randomDocs(4, 12, vocab, 1), vocab);
    fs.truncateSync(file, fs.statSync(file).size - 3);
  });
  expectBadInput(r, { file: path.join(run, 'data', 'train.bin') });
});

test('out-of-range token ids', { skip }, async () => {
  const { run, r } = await runWith('range', goodModel, {}, async (file) => {
    await makeShard(file, [[1, 2, 3, vocab + 5, 4]], vocab + 10);
  });
  expectBadInput(r, { code: 'shard_token_range', file: path.join(run, 'data', 'train.bin') });
});

test('a run folder that is not writable', { skip }, async () => {
  // The tests may run as root, for whom permissions do not apply: make events.jsonl a
  // folder, which no user can append to.
  const run = tmpDir('unwritable');
  await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(2, 8, vocab, 1), vocab);
  writeRunJson(run, goodModel);
  fs.mkdirSync(path.join(run, 'events.jsonl'));
  const r = runRuntime(['train', '--run', run]);
  expectBadInput(r, { code: 'write_failed', file: path.join(run, 'events.jsonl') });
});

test('a checkpoint that cannot be written fails cleanly without a partial checkpoint', { skip }, async () => {
  const run = tmpDir('nockpt');
  await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(4, 12, vocab, 1), vocab);
  writeRunJson(run, goodModel, { train: { max_steps: 4, seq_len: 16, save_every: 2 } });
  fs.writeFileSync(path.join(run, 'checkpoints'), 'a file where the checkpoints folder should be');
  const r = runRuntime(['train', '--run', run]);
  expectBadInput(r, { code: 'write_failed' });
  assert.ok(fs.statSync(path.join(run, 'checkpoints')).isFile());
  assert.equal(r.events.filter((e) => e.type === 'checkpoint').length, 0);
});

test('a missing run folder and usage errors', { skip }, () => {
  const r = runRuntime(['train', '--run', path.join(tmpDir('gone'), 'nope')]);
  expectBadInput(r, { code: 'file_read' });
  for (const args of [[], ['train'], ['frobnicate'], ['inspect', '--model'], ['eval', '--model', goodModel], ['train', '--run', 'x', '--bogus']]) {
    const u = runRuntime(args);
    assert.equal(u.status, 2, `args ${args.join(' ')}`);
    assert.match(u.stderr, /usage/);
  }
});

test('eval with a bad adapter names the adapter file and key', { skip }, () => {
  const adapter = tmpDir('badadapter');
  fs.writeFileSync(path.join(adapter, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj'] }));
  writeSafetensors(path.join(adapter, 'adapter_model.safetensors'), [
    { name: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', dtype: 'F32', shape: [4, 31], data: new Float32Array(124) },
  ], { format: 'pt' });
  const shard = path.join(tmpDir('evshard'), 'eval.bin');
  return makeShard(shard, randomDocs(2, 8, vocab, 1), vocab).then(() => {
    const r = runRuntime(['eval', '--model', goodModel, '--adapter', adapter, '--data', shard]);
    expectBadInput(r, { code: 'adapter_invalid', file: path.join(adapter, 'adapter_model.safetensors'), field: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' });
  });
});

test('running out of memory is exit code 3 with an out_of_memory error', { skip }, async () => {
  // One 2^20-token document: the layer inputs alone need 2 x 2^20 x 32 floats = 256 MiB,
  // and the address space is capped at 200 MiB, so the first activation allocation fails
  // deterministically, whatever the machine's memory (on a small machine the up-front
  // estimate refuses it instead: the same exit code and error code).
  const run = tmpDir('oom');
  await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(1, 1 << 20, vocab, 3), vocab);
  writeRunJson(run, goodModel, { train: { max_steps: 1, seq_len: 1 << 20, micro_batch: 1, grad_accum: 1 } });
  const r = spawnSync('bash', ['-c', 'ulimit -v 204800 && exec "$0" train --run "$1"', RUNTIME, run], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 3, r.stdout + r.stderr);
  const events = readEventsFile(run);
  const err = events.find((e) => e.type === 'error')!;
  assert.equal(err.code, 'out_of_memory', JSON.stringify(err));
  assert.match(String(err.hint), /seq_len/);
  assert.equal(events[events.length - 1].status, 'failed');
});

test('a full disk fails cleanly: error, exit 2, no half-written checkpoint', { skip }, async (t) => {
  // A 64 KiB tmpfs holds the run folder; the first checkpoint (~130 KB) cannot fit. Needs
  // permission to mount (root in a container); skipped elsewhere.
  const run = tmpDir('full');
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', run], { encoding: 'utf8' });
  if (mounted.status !== 0) {
    t.skip(`cannot mount a small tmpfs here: ${mounted.stderr.trim()}`);
    return;
  }
  try {
    await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(4, 12, vocab, 1), vocab);
    writeRunJson(run, goodModel, { lora: { r: 16 }, train: { max_steps: 4, seq_len: 16, save_every: 2 } });
    const r = runRuntime(['train', '--run', run]);
    expectBadInput(r, { code: 'write_failed' });
    assert.match(String(errorEvent(r).hint), /disk is full/);
    const left = fs.existsSync(path.join(run, 'checkpoints')) ? fs.readdirSync(path.join(run, 'checkpoints')) : [];
    assert.deepEqual(left, [], 'no step-N or temporary checkpoint folder is left behind');
  } finally {
    spawnSync('umount', [run]);
  }
});

test('a diverging run stops with an error before NaN reaches the adapter', { skip }, async () => {
  // A NaN in the embeddings makes the first step's loss NaN, as a far too high learning rate
  // eventually does: the run must stop with an error naming train.lr, not train on garbage.
  const model = modelCopy('nan');
  const f = path.join(model, 'model.safetensors');
  const header = readSafetensorsHeader(f);
  const tensors: TensorToWrite[] = header.tensors.map((t) => {
    const data = readTensorF32(header, t.name);
    if (t.name === 'model.embed_tokens.weight') data.fill(Number.NaN, 0, data.length);
    return { name: t.name, dtype: t.dtype, shape: t.shape, data };
  });
  writeSafetensors(f, tensors, { format: 'pt' });
  const { run, r } = await runWith('nan', model);
  expectBadInput(r, { code: 'diverged', file: path.join(run, 'run.json'), field: 'train.lr' });
  const step = r.events.find((e) => e.type === 'step')!;
  assert.equal(step.loss, null, 'a NaN loss is written as null (valid JSON)');
  assert.ok(!fs.existsSync(path.join(run, 'adapter')), 'no adapter written from a diverged state');
});
