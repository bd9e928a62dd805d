// The lora-runtime CLI's informational commands: --version, devices, inspect.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { RUNTIME, makeModel, runRuntime, runtimeBuilt, tmpDir } from './runtimeHelpers';
import { TinyModelInfo } from '../../src/core/fixtures/tinyModel';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
let info: TinyModelInfo;

before(() => {
  if (skip) return;
  info = makeModel(path.join(tmpDir('cli'), 'm'), { arch: 'qwen2', tie: true, dtype: 'BF16', hidden: 48, heads: 4, kvHeads: 2, intermediate: 96, layers: 3 });
});

test('--version prints one JSON line with the protocol', { skip }, () => {
  const r = runRuntime(['--version']);
  assert.equal(r.status, 0);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1);
  const v = JSON.parse(lines[0]);
  assert.match(v.version, /^\d+\.\d+\.\d+$/);
  assert.equal(v.protocol, 1);
  assert.equal(v.cuda, false);
});

test('devices lists the CPU with its memory', { skip }, () => {
  const r = runRuntime(['devices']);
  assert.equal(r.status, 0);
  const d = JSON.parse(r.stdout).devices;
  assert.equal(d.length, 1);
  assert.equal(d[0].kind, 'cpu');
  assert.ok(d[0].name.length > 0);
  assert.ok(d[0].threads >= 1);
  assert.ok(d[0].memory_total > d[0].memory_free && d[0].memory_free > 0);
});

test('inspect reports the architecture, sizes and target modules', { skip }, () => {
  const r = runRuntime(['inspect', '--model', info.dir]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const m = JSON.parse(r.stdout);
  assert.equal(m.arch, 'qwen2');
  assert.equal(m.hf_architecture, 'Qwen2ForCausalLM');
  assert.equal(m.layers, 3);
  assert.equal(m.hidden_size, 48);
  assert.equal(m.intermediate_size, 96);
  assert.equal(m.heads, 4);
  assert.equal(m.kv_heads, 2);
  assert.equal(m.head_dim, 12);
  assert.equal(m.vocab_size, info.config.vocab_size);
  assert.equal(m.params_total, info.paramCount);
  assert.equal(m.dtype, 'BF16');
  assert.equal(m.bytes, 2 * info.paramCount);
  const mods = Object.fromEntries((m.target_modules as { name: string; in: number; out: number; count: number }[]).map((t) => [t.name, t]));
  assert.deepEqual(Object.keys(mods), ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  assert.deepEqual(mods.k_proj, { name: 'k_proj', path: 'self_attn.k_proj', in: 48, out: 24, count: 3 });
  assert.deepEqual(mods.down_proj, { name: 'down_proj', path: 'mlp.down_proj', in: 96, out: 48, count: 3 });
});
