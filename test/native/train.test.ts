// End-to-end training with the lora-runtime binary on a tiny generated model: memorisation,
// events, the PEFT adapter files, the eval command, and resume after stop/SIGTERM giving an
// adapter identical (byte for byte) to an uninterrupted run.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readSafetensorsHeader, readTensorF32 } from '../../src/core/model/safetensors';
import { readShard, shardCounts } from '../../src/core/tokenize/shard';
import {
  RUNTIME, RuntimeEvent, makeModel, makeShard, randomDocs, readEventsFile, runRuntime, runtimeBuilt,
  tmpDir, trainLive, writeRunJson,
} from './runtimeHelpers';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
let modelDir = '';
let vocab = 0;
let docs: number[][] = [];

before(async () => {
  if (skip) return;
  modelDir = path.join(tmpDir('model'), 'tiny');
  const info = makeModel(modelDir, {}, 25);
  vocab = info.config.vocab_size as number;
  docs = randomDocs(8, 24, vocab, 5);
});

async function newRun(tag: string, over: Parameters<typeof writeRunJson>[2] = {}, trainDocs = docs): Promise<string> {
  const run = tmpDir(tag);
  await makeShard(path.join(run, 'data', 'train.bin'), trainDocs, vocab);
  writeRunJson(run, modelDir, over);
  return run;
}

function adapterBytes(run: string): Buffer {
  return fs.readFileSync(path.join(run, 'adapter', 'adapter_model.safetensors'));
}

test('a tiny model with LoRA memorises a small dataset; events are complete and well-formed', { skip }, async () => {
  // 8 random documents of 24 tokens: 184 targets. Chance level is ln(vocab) (~6.2 for 512
  // ids); predicting each memorised next token with p > 0.6 on average means a mean loss
  // under 0.5, which only memorisation can reach on random sequences.
  const run = await newRun('overfit', {
    train: { max_steps: 120, eval_every: 40, save_every: 60 },
    data: { eval: 'data/train.bin' },
  });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const steps = r.events.filter((e) => e.type === 'step');
  assert.equal(steps.length, 120);
  const first = steps[0].loss as number;
  const last = steps[steps.length - 1].loss as number;
  assert.ok(first > 0.8 * Math.log(vocab), `initial loss ${first} should be near chance ${Math.log(vocab)}`);
  assert.ok(last < 0.5, `final train loss ${last} should be < 0.5 (memorised)`);
  const evals = r.events.filter((e) => e.type === 'eval');
  assert.deepEqual(evals.map((e) => e.step), [40, 80, 120]);
  assert.ok((evals[2].loss as number) < 0.5);

  // Every event type of a normal run, each line with v: 1, stdout identical to events.jsonl.
  const types = new Set(r.events.map((e) => e.type));
  for (const t of ['hello', 'model', 'plan', 'step', 'eval', 'checkpoint', 'log', 'done']) assert.ok(types.has(t), `missing ${t}`);
  for (const e of r.events) assert.equal(e.v, 1);
  assert.deepEqual(readEventsFile(run), r.events);
  const hello = r.events[0];
  assert.equal(hello.type, 'hello');
  assert.equal(hello.protocol, 1);
  assert.equal((hello.device as { kind: string }).kind, 'cpu');
  assert.ok(Number.isInteger(hello.pid) && (hello.pid as number) > 0);
  const model = r.events.find((e) => e.type === 'model')!;
  assert.equal(model.arch, 'llama');
  assert.equal(model.quant, 'none');
  assert.equal(model.params_trainable, 2 * (8 * (64 + 64) + 8 * (64 + 32) * 2 + 8 * (64 + 64) + 8 * (64 + 128) * 3));
  assert.equal(model.bytes_lora, 4 * (model.params_trainable as number));
  assert.ok((model.bytes_base as number) > 0 && (model.bytes_base_disk as number) > 0);
  const plan = r.events.find((e) => e.type === 'plan')!;
  assert.equal(plan.steps_total, 120);
  assert.equal(plan.train_targets, 8 * 23);
  const step = steps[5];
  for (const k of ['step', 'epoch', 'loss', 'lr', 'grad_norm', 'tokens_per_s', 'elapsed_s']) assert.equal(typeof step[k], 'number', k);
  const mem = step.mem as Record<string, number>;
  for (const k of ['used', 'peak', 'device_used', 'device_total']) assert.ok(mem[k] > 0, `mem.${k}`);
  assert.ok(mem.peak >= mem.used);
  const ckpts = r.events.filter((e) => e.type === 'checkpoint').map((e) => e.step);
  assert.deepEqual(ckpts, [60, 120]);
  for (const s of ckpts) for (const f of ['adapter_model.safetensors', 'adapter_config.json', 'state.bin'])
    assert.ok(fs.existsSync(path.join(run, 'checkpoints', `step-${s}`, f)));
  const done = r.events[r.events.length - 1];
  assert.equal(done.type, 'done');
  assert.equal(done.status, 'completed');
  assert.equal(done.step, 120);

  // The eval command scores exactly the shard's targets and agrees with the run's eval.
  const shard = path.join(run, 'data', 'train.bin');
  const targets = shardCounts(readShard(shard)).targets;
  const withAdapter = runRuntime(['eval', '--model', modelDir, '--adapter', path.join(run, 'adapter'), '--data', shard, '--threads', '2']);
  assert.equal(withAdapter.status, 0, withAdapter.stderr);
  const ev = JSON.parse(withAdapter.stdout.trim()) as { loss: number; tokens: number };
  assert.equal(ev.tokens, targets);
  assert.ok(Math.abs(ev.loss - (evals[2].loss as number)) < 1e-3, `eval ${ev.loss} vs run ${evals[2].loss}`);
  const base = JSON.parse(runRuntime(['eval', '--model', modelDir, '--data', shard]).stdout.trim()) as { loss: number; tokens: number };
  assert.equal(base.tokens, targets);
  assert.ok(base.loss > ev.loss + 2, `base ${base.loss} vs adapter ${ev.loss}`);
});

test('the adapter has the PEFT key names, shapes, dtypes and config fields', { skip }, async () => {
  const run = await newRun('adapter', { lora: { r: 4, alpha: 8, dropout: 0.1, targets: ['v_proj', 'q_proj', 'down_proj'] }, train: { max_steps: 3 } });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const dir = path.join(run, 'adapter');
  const header = readSafetensorsHeader(path.join(dir, 'adapter_model.safetensors'));
  const expected = new Map<string, number[]>();
  for (let l = 0; l < 2; l++) {
    expected.set(`base_model.model.model.layers.${l}.self_attn.q_proj.lora_A.weight`, [4, 64]);
    expected.set(`base_model.model.model.layers.${l}.self_attn.q_proj.lora_B.weight`, [64, 4]);
    expected.set(`base_model.model.model.layers.${l}.self_attn.v_proj.lora_A.weight`, [4, 64]);
    expected.set(`base_model.model.model.layers.${l}.self_attn.v_proj.lora_B.weight`, [32, 4]);
    expected.set(`base_model.model.model.layers.${l}.mlp.down_proj.lora_A.weight`, [4, 128]);
    expected.set(`base_model.model.model.layers.${l}.mlp.down_proj.lora_B.weight`, [64, 4]);
  }
  assert.equal(header.tensors.length, expected.size);
  for (const t of header.tensors) {
    assert.deepEqual(t.shape, expected.get(t.name), t.name);
    assert.equal(t.dtype, 'F32');
  }
  // B starts at zero and has moved after 3 steps; A is kaiming-uniform within 1/sqrt(in).
  const b = readTensorF32(header, 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight');
  assert.ok(b.some((x) => x !== 0));
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.peft_type, 'LORA');
  assert.equal(cfg.task_type, 'CAUSAL_LM');
  assert.equal(cfg.r, 4);
  assert.equal(cfg.lora_alpha, 8);
  assert.equal(cfg.lora_dropout, 0.1);
  assert.deepEqual(cfg.target_modules, ['q_proj', 'v_proj', 'down_proj']);
  assert.equal(cfg.bias, 'none');
  assert.equal(cfg.use_rslora, false);
  assert.equal(cfg.use_dora, false);
  assert.equal(cfg.modules_to_save, null);
  assert.equal(cfg.fan_in_fan_out, false);
  assert.equal(cfg.base_model_name_or_path, modelDir);
  assert.equal(cfg.inference_mode, true);
});

async function interruptedMatchesUninterrupted(tag: string, interrupt: (child: ReturnType<typeof import('node:child_process').spawn>) => void,
  over: Parameters<typeof writeRunJson>[2]): Promise<void> {
  const reference = await newRun(`${tag}-ref`, over);
  const full = runRuntime(['train', '--run', reference]);
  assert.equal(full.status, 0, full.stderr + full.stdout);
  const total = (full.events.find((e) => e.type === 'plan')!.steps_total as number);

  const run = await newRun(tag, over);
  let sent = false;
  const first = await trainLive(run, (e: RuntimeEvent, child) => {
    if (e.type === 'step' && e.step === 3 && !sent) {
      sent = true;
      interrupt(child);
    }
  });
  assert.equal(first.status, 0, first.stderr + first.stdout);
  const done = first.events[first.events.length - 1];
  assert.equal(done.type, 'done');
  assert.equal(done.status, 'stopped');
  const stoppedAt = done.step as number;
  assert.ok(stoppedAt >= 3 && stoppedAt < total, `stopped at ${stoppedAt} of ${total}`);
  assert.ok(fs.existsSync(path.join(run, 'checkpoints', `step-${stoppedAt}`, 'state.bin')));
  assert.ok(fs.existsSync(path.join(run, 'adapter', 'adapter_model.safetensors')));

  const resumed = runRuntime(['train', '--run', run, '--resume']);
  assert.equal(resumed.status, 0, resumed.stderr + resumed.stdout);
  const steps = resumed.events.filter((e) => e.type === 'step').map((e) => e.step as number);
  assert.equal(steps[0], stoppedAt + 1, 'resumes after the checkpointed step');
  assert.equal(resumed.events[resumed.events.length - 1].status, 'completed');
  assert.ok(adapterBytes(run).equals(adapterBytes(reference)), 'resumed adapter is bit-identical to the uninterrupted one');
  // events.jsonl holds both processes' events, in order.
  const all = readEventsFile(run);
  assert.equal(all.filter((e) => e.type === 'hello').length, 2);
}

// Enough steps that the stop lands mid-run; dropout and two epochs so that the dropout keys,
// the shuffling and the optimizer state all have to be restored exactly.
const resumeConfig = { lora: { dropout: 0.1 }, train: { max_steps: null, epochs: 100, micro_batch: 1, grad_accum: 2, schedule: 'cosine', warmup_steps: 3 } };

test('stop on stdin, then --resume: the final adapter equals an uninterrupted run', { skip }, async () => {
  await interruptedMatchesUninterrupted('stop', (child) => child.stdin!.write('{"cmd":"stop"}\n'), resumeConfig);
});

test('SIGTERM, then --resume: the final adapter equals an uninterrupted run', { skip }, async () => {
  await interruptedMatchesUninterrupted('sigterm', (child) => child.kill('SIGTERM'), resumeConfig);
});

test('closing stdin does not stop training; {"cmd":"checkpoint"} writes a checkpoint', { skip }, async () => {
  const run = await newRun('stdin', { train: { max_steps: 100 } });
  let asked = false;
  const r = await trainLive(run, (e, child) => {
    if (e.type === 'step' && e.step === 2 && !asked) {
      asked = true;
      child.stdin!.write('{"cmd":"checkpoint"}\nnot json\n');
      child.stdin!.end();
    }
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.events[r.events.length - 1].status, 'completed');
  assert.equal(r.events.filter((e) => e.type === 'step').length, 100);
  const ck = r.events.filter((e) => e.type === 'checkpoint');
  assert.equal(ck.length, 1);
  assert.ok((ck[0].step as number) >= 2 && (ck[0].step as number) < 100);
  assert.ok(r.events.some((e) => e.type === 'log' && e.level === 'warning' && String(e.message).includes('not json')));
});

test('resuming with changed training settings is refused', { skip }, async () => {
  const run = await newRun('changed', { train: { max_steps: 4, save_every: 2 } });
  assert.equal(runRuntime(['train', '--run', run]).status, 0);
  writeRunJson(run, modelDir, { train: { max_steps: 4, save_every: 2, lr: 5e-3 } });
  const r = runRuntime(['train', '--run', run, '--resume']);
  assert.equal(r.status, 2);
  const err = r.events.find((e) => e.type === 'error')!;
  assert.equal(err.code, 'resume_config_changed');
  assert.equal(err.file, path.join(run, 'run.json'));
});

test('early stopping keeps the best adapter', { skip }, async () => {
  // Eval on held-out random documents: memorising the training set makes eval loss rise,
  // so with patience 2 the run stops early and adapter/ holds the best-eval weights.
  const run = await newRun('early', {
    train: { max_steps: 200, eval_every: 5, early_stopping_patience: 2, lr: 3e-2 },
    data: { eval: 'data/eval.bin' },
  });
  await makeShard(path.join(run, 'data', 'eval.bin'), randomDocs(4, 24, vocab, 77), vocab);
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr);
  const done = r.events[r.events.length - 1];
  assert.equal(done.early_stopped, true);
  assert.ok((done.step as number) < 200);
  const evals = r.events.filter((e) => e.type === 'eval');
  const best = evals.reduce((a, b) => ((b.loss as number) < (a.loss as number) ? b : a));
  assert.equal(done.best_step, best.step);
  const ev = JSON.parse(runRuntime(['eval', '--model', modelDir, '--adapter', path.join(run, 'adapter'), '--data', path.join(run, 'data', 'eval.bin')]).stdout) as { loss: number };
  assert.ok(Math.abs(ev.loss - (best.loss as number)) < 1e-4, `adapter eval ${ev.loss} vs best ${best.loss}`);
});

test('lora.init_adapter continues from a PEFT adapter', { skip }, async () => {
  const first = await newRun('init-a', { train: { max_steps: 10 } });
  assert.equal(runRuntime(['train', '--run', first]).status, 0);
  const second = await newRun('init-b', { lora: { init_adapter: path.join(first, 'adapter') }, train: { max_steps: 1, lr: 1e-9 } });
  const r = runRuntime(['train', '--run', second]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const a = readTensorF32(readSafetensorsHeader(path.join(first, 'adapter', 'adapter_model.safetensors')), 'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight');
  const b = readTensorF32(readSafetensorsHeader(path.join(second, 'adapter', 'adapter_model.safetensors')), 'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight');
  let maxDiff = 0;
  for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  assert.ok(maxDiff < 1e-6 && a.some((x) => x !== 0), `max diff ${maxDiff}`);
  const mismatch = await newRun('init-c', { lora: { r: 4, init_adapter: path.join(first, 'adapter') } });
  const bad = runRuntime(['train', '--run', mismatch]);
  assert.equal(bad.status, 2);
  assert.equal(bad.events.find((e) => e.type === 'error')!.field, 'lora.init_adapter');
});

test('quantized base (nf4) trains and reports smaller base bytes', { skip }, async () => {
  const run = await newRun('nf4', { quant: { type: 'nf4', double_quant: true }, train: { max_steps: 30 } });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const model = r.events.find((e) => e.type === 'model')!;
  assert.equal(model.quant, 'nf4');
  const steps = r.events.filter((e) => e.type === 'step');
  assert.ok((steps[steps.length - 1].loss as number) < (steps[0].loss as number) - 1);
  // The F32 checkpoint's decoder linears shrink ~7x in nf4; embeddings and head stay fp32.
  assert.ok((model.bytes_base as number) < (model.bytes_base_disk as number), `${model.bytes_base} vs ${model.bytes_base_disk}`);
});

test('training goes on when the reader of stdout goes away (re-attach via events.jsonl)', { skip }, async () => {
  const run = await newRun('detach', { train: { max_steps: 60 } });
  let closed = false;
  const r = await trainLive(run, (e, child) => {
    if (e.type === 'step' && !closed) {
      closed = true;
      child.stdout!.destroy();
    }
  });
  assert.equal(r.signal, null, 'not killed by SIGPIPE');
  assert.equal(r.status, 0);
  const events = readEventsFile(run);
  const done = events[events.length - 1];
  assert.equal(done.type, 'done');
  assert.equal(done.status, 'completed');
  assert.equal(events.filter((e) => e.type === 'step').length, 60);
});

test('Mistral (BF16, sharded weights), Qwen2 (tied, q/k/v bias) and llama3 rope scaling train', { skip }, async () => {
  const variants: Array<[string, Parameters<typeof makeModel>[1]]> = [
    ['mistral', { arch: 'mistral', dtype: 'BF16', shards: 3 }],
    ['qwen2', { arch: 'qwen2', tie: true }],
    ['llama3', { arch: 'llama', ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 } }],
  ];
  for (const [name, opts] of variants) {
    const dir = path.join(tmpDir(`arch-${name}`), 'model');
    const info = makeModel(dir, opts, 25);
    const v = info.config.vocab_size as number;
    const run = tmpDir(`arch-run-${name}`);
    await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(4, 24, v, 9), v);
    writeRunJson(run, dir, { quant: { type: 'int8' }, train: { max_steps: 25, micro_batch: 4, grad_accum: 1 } });
    const r = runRuntime(['train', '--run', run]);
    assert.equal(r.status, 0, `${name}: ${r.stderr}${r.stdout}`);
    const model = r.events.find((e) => e.type === 'model')!;
    assert.equal(model.arch, name === 'llama3' ? 'llama' : name);
    assert.equal(model.params_total, info.paramCount);
    const steps = r.events.filter((e) => e.type === 'step');
    const first = steps[0].loss as number;
    const last = steps[steps.length - 1].loss as number;
    assert.ok(last < first - 1, `${name}: loss ${first} -> ${last}`);
  }
});
