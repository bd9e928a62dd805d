import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ATTENTION_TARGETS, ConfigError, LORA_TARGETS, PRESETS, applyPreset, defaultConfig, diffConfigs, fromRunJson,
  hasErrors, parseConfig, toRunJson, validateConfig,
} from '../../src/core/config';

function valid() {
  const c = defaultConfig();
  c.model = '/models/tiny';
  c.data = '/data/chat.jsonl';
  return c;
}

test('config: defaults are valid and produce DESIGN.md run.json', () => {
  const c = valid();
  assert.deepEqual(validateConfig(c), []);
  const run = toRunJson(c, { model: '/models/tiny', train: 'data/train.bin', eval: 'data/eval.bin' });
  assert.deepEqual(run, {
    v: 1,
    model: '/models/tiny',
    data: { train: 'data/train.bin', eval: 'data/eval.bin' },
    lora: { r: 16, alpha: 32, dropout: 0.05, rslora: false, targets: [...LORA_TARGETS], init_adapter: null },
    quant: { type: 'nf4', double_quant: true, block_size: 64 },
    train: {
      seq_len: 2048, micro_batch: 1, grad_accum: 8, epochs: 1, max_steps: null, optimizer: 'adamw', lr: 2e-4,
      schedule: 'cosine', warmup_steps: 10, weight_decay: 0, max_grad_norm: 1, grad_checkpointing: true, seed: 42,
      eval_every: 50, save_every: 100, early_stopping_patience: 0,
    },
    compute: { device: 'auto', dtype: 'bf16', threads: 0 },
  });
});

test('config: without an eval shard, periodic eval and early stopping are off in run.json', () => {
  const c = valid();
  c.train.earlyStoppingPatience = 3;
  const run = toRunJson(c, { model: '/m', train: 'data/train.bin', eval: null }) as { train: Record<string, unknown> };
  assert.equal(run.train.eval_every, 0);
  assert.equal(run.train.early_stopping_patience, 0);
});

test('config: validation names the field and gives a hint', () => {
  const c = valid();
  c.lora.r = 0;
  c.lora.dropout = 1;
  c.lora.targets = ['q_proj', 'q_proj', 'lm_head'];
  c.quant.blockSize = 48;
  c.train.schedule = 'exp' as never;
  c.compute.device = 'gpu';
  c.train.lr = 0.5;
  const issues = validateConfig(c);
  const fields = issues.filter((i) => i.severity === 'error').map((i) => i.field);
  assert.deepEqual(fields.sort(), ['compute.device', 'lora.dropout', 'lora.r', 'lora.targets', 'lora.targets', 'quant.blockSize', 'train.schedule'].sort());
  assert.ok(issues.find((i) => i.field === 'lora.targets' && /twice/.test(i.message)));
  assert.ok(issues.find((i) => i.field === 'train.schedule')!.hint!.includes('cosine'));
  assert.ok(issues.some((i) => i.field === 'train.lr' && i.severity === 'warning'));
  assert.ok(hasErrors(issues));
});

test('config: validation against the model: missing modules, r too large, CUDA absent', () => {
  const c = valid();
  c.lora.targets = ['q_proj', 'gate_proj'];
  c.lora.r = 128;
  c.compute.device = 'cuda:0';
  const issues = validateConfig(c, { modelTargets: ATTENTION_TARGETS, minTargetDim: 64, cuda: false });
  assert.match(issues.find((i) => i.field === 'lora.targets')!.message, /"gate_proj", which this model does not have/);
  assert.match(issues.find((i) => i.field === 'lora.r')!.message, /larger than the smallest targeted layer dimension 64/);
  assert.match(issues.find((i) => i.field === 'compute.device')!.message, /without CUDA/);
});

test('config: presets apply and every preset stays valid', () => {
  for (const p of PRESETS) {
    const c = applyPreset(valid(), p.id);
    assert.equal(hasErrors(validateConfig(c)), false, `${p.id}: ${JSON.stringify(validateConfig(c))}`);
  }
  assert.deepEqual(applyPreset(valid(), 'attention-only').lora.targets, ATTENTION_TARGETS);
  assert.equal(applyPreset(valid(), 'all-linear').quant.type, 'none');
  assert.throws(() => applyPreset(valid(), 'nope'), ConfigError);
});

test('config: parseConfig merges over defaults and rejects unknown keys with their path', () => {
  const c = parseConfig({ preset: 'attention-only', model: '/m', lora: { r: 4 }, train: { maxSteps: 10 } });
  assert.equal(c.lora.r, 4);
  assert.deepEqual(c.lora.targets, ATTENTION_TARGETS);
  assert.equal(c.lora.alpha, 32, 'untouched fields keep defaults');
  assert.equal(c.train.maxSteps, 10);
  assert.throws(() => parseConfig({ lora: { rank: 4 }, trian: {} }, 'my.json'), (e: unknown) => {
    assert.ok(e instanceof ConfigError);
    assert.deepEqual(e.issues.map((i) => i.field), ['lora.rank', 'trian']);
    assert.match(e.message, /^my\.json: lora\.rank: is not a known setting/);
    return true;
  });
  assert.throws(() => parseConfig([1]), /must be a JSON object/);
  assert.throws(() => parseConfig({ preset: 'x' }), /unknown preset/);
});

test('config: fromRunJson inverts toRunJson; diffConfigs lists changes', () => {
  const c = applyPreset(valid(), 'cpu-quick');
  c.train.maxSteps = 77;
  c.lora.rslora = true;
  const run = toRunJson(c, { model: c.model, train: 'data/train.bin', eval: 'data/eval.bin', meta: { config: c } });
  assert.deepEqual(fromRunJson(run), c);
  const d = c;
  const e = structuredClone(c);
  e.lora.r = 32;
  e.train.lr = 1e-4;
  assert.deepEqual(diffConfigs(d, e).map((x) => x.field), ['lora.r', 'train.lr']);
});

test('config: compute.offloadActivations is optional, validated, and in run.json only when on', () => {
  const c = valid();
  assert.equal(c.compute.offloadActivations, false);
  assert.equal('offload_activations' in (toRunJson(c, { model: '/m', train: 't.bin', eval: null }).compute as object), false);
  c.compute.offloadActivations = true;
  const run = toRunJson(c, { model: '/m', train: 't.bin', eval: null });
  assert.equal((run.compute as Record<string, unknown>).offload_activations, true);
  assert.equal(fromRunJson(run).compute.offloadActivations, true);
  assert.deepEqual(parseConfig({ compute: { offloadActivations: true } }).compute.offloadActivations, true);
  // A config without the key (written before it existed) is still valid.
  const old = valid();
  delete old.compute.offloadActivations;
  assert.deepEqual(validateConfig(old), []);
  (c.compute as Record<string, unknown>).offloadActivations = 'yes';
  assert.deepEqual(validateConfig(c).map((i) => i.field), ['compute.offloadActivations']);
});
