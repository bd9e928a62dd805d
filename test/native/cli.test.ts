// The lora-runtime CLI's informational commands (--version, devices, inspect) and device
// selection (compute.device, eval --device) as far as it can be checked on any machine.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { RUNTIME, errorEvent, makeModel, makeShard, randomDocs, readEventsFile, runRuntime, runtimeBuilt, tmpDir, writeRunJson } from './runtimeHelpers';
import { TinyModelInfo } from '../../src/core/fixtures/tinyModel';

const skip = runtimeBuilt() ? false : `lora-runtime is not built at ${RUNTIME} (npm run build:native)`;
let info: TinyModelInfo;

before(() => {
  if (skip) return;
  info = makeModel(path.join(tmpDir('cli'), 'm'), { arch: 'qwen2', tie: true, dtype: 'BF16', hidden: 48, heads: 4, kvHeads: 2, intermediate: 96, layers: 3 });
});

test('--version prints one JSON line with the protocol and the CUDA build', { skip }, () => {
  const r = runRuntime(['--version']);
  assert.equal(r.status, 0);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1);
  const v = JSON.parse(lines[0]);
  assert.match(v.version, /^\d+\.\d+\.\d+$/);
  assert.equal(v.protocol, 1);
  assert.equal(typeof v.cuda_built, 'boolean');
  // cuda: this runtime can train on a GPU of this machine (a CUDA build and a supported GPU).
  const devices = JSON.parse(runRuntime(['devices']).stdout).devices as { kind: string; supported?: boolean }[];
  assert.equal(v.cuda, v.cuda_built && devices.some((d) => d.kind === 'cuda' && d.supported === true));
  if (v.cuda_built) assert.match(v.cuda_runtime, /^\d+\.\d+$/);
  else assert.equal(v.cuda_runtime, '');
});

test('devices lists the CPU with its memory, then any GPUs', { skip }, () => {
  const r = runRuntime(['devices']);
  assert.equal(r.status, 0);
  const d = JSON.parse(r.stdout).devices;
  assert.ok(d.length >= 1);
  assert.equal(d[0].kind, 'cpu');
  assert.ok(d[0].name.length > 0);
  assert.ok(d[0].threads >= 1);
  assert.ok(d[0].memory_total > d[0].memory_free && d[0].memory_free > 0);
  d.slice(1).forEach((g: Record<string, unknown>, i: number) => {
    assert.equal(g.kind, 'cuda');
    assert.ok(Number.isInteger(g.index) && (g.index as number) >= i);
    assert.ok(typeof g.name === 'string' && g.name.length > 0);
    assert.match(String(g.compute_capability), /^\d+\.\d+$/);
    assert.ok((g.multiprocessors as number) > 0);
    assert.ok((g.memory_total as number) >= (g.memory_free as number) && (g.memory_free as number) >= 0);
    assert.equal(typeof g.supported, 'boolean');
    if (!g.supported) assert.ok(typeof g.note === 'string' && g.note.length > 0);
  });
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

test('a GPU that is not there: exit 2, code device (config_field without CUDA), hello first', { skip }, async () => {
  const built = JSON.parse(runRuntime(['--version']).stdout).cuda_built as boolean;
  const run = tmpDir('nogpu');
  await makeShard(path.join(run, 'data', 'train.bin'), randomDocs(4, 16, Number(info.config.vocab_size), 1), Number(info.config.vocab_size));
  const file = writeRunJson(run, info.dir, { compute: { device: 'cuda:999' } });
  const r = runRuntime(['train', '--run', run]);
  assert.equal(r.status, 2, r.stdout + r.stderr);
  const err = errorEvent(r);
  assert.equal(err.code, built ? 'device' : 'config_field');
  assert.equal(err.field, 'compute.device');
  assert.equal(err.file, file);
  const line = fs.readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes('"device"')) + 1;
  assert.equal(err.line, line);
  assert.match(String(err.message), /cuda:999/);
  assert.ok(String(err.hint).length > 0);
  const events = readEventsFile(run);
  assert.deepEqual(events.map((e) => e.type), ['hello', 'error', 'done']);
  assert.equal((events[0].device as { kind: string }).kind, 'cpu');
  assert.equal(events[2].status, 'failed');

  const shard = path.join(run, 'data', 'train.bin');
  const e = runRuntime(['eval', '--model', info.dir, '--data', shard, '--device', 'cuda:999']);
  assert.equal(e.status, 2, e.stdout + e.stderr);
  assert.equal(errorEvent(e).code, 'device');
  assert.equal(errorEvent(e).field, '--device');
  const cpu = runRuntime(['eval', '--model', info.dir, '--data', shard, '--device', 'cpu', '--threads', '1']);
  assert.equal(cpu.status, 0, cpu.stdout + cpu.stderr);
  assert.ok(Number.isFinite(JSON.parse(cpu.stdout).loss));
});
