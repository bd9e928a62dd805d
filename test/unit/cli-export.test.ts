// `lora-studio export` end to end: a run trained for a few steps by the real lora-runtime,
// exported to every format; the outputs are read back by independent readers
// (@huggingface/gguf, onnxruntime-node, the safetensors header reader). Bad input exits 2 with
// the file or flag named.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as ggufLib from '@huggingface/gguf';
import * as ort from 'onnxruntime-node';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { demoCorpus, demoRows, writeDemoDataset } from '../../src/core/fixtures/demoData';
import { readSafetensorsHeader } from '../../src/core/model/safetensors';
import { listRuns } from '../../src/core/runs/runs';
import { runtimeWith, tempDir, writeRandomAdapter } from './exportReference';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli.js');
const merge = runtimeWith('merge');
const TIMEOUT_MS = 180_000;

function cli(args: string[]) {
  const env = { ...process.env, ...(merge.runtime ? { LORA_STUDIO_RUNTIME: merge.runtime } : {}) };
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, timeout: TIMEOUT_MS });
}

function tinyModel(dir: string): string {
  const model = path.join(dir, 'model');
  writeTinyModel(model, { hidden: 48, layers: 2, heads: 4, kvHeads: 2, tokenizerCorpus: demoCorpus(demoRows(40)) });
  return model;
}

/** A run folder with a final adapter, trained by the real runtime (so its lora_B is no longer zero). */
let trained: { dir: string; run: string; model: string } | null = null;
function trainedRun() {
  if (trained) return trained;
  const dir = tempDir('cli-export-');
  const model = tinyModel(dir);
  const data = writeDemoDataset(path.join(dir, 'demo.jsonl'), demoRows(40));
  const runs = path.join(dir, 'runs');
  const r = cli(['train', '--model', model, '--data', data, '--runs-dir', runs, '--preset', 'cpu-quick', '--max-steps', '3',
    '--seq-len', '64', '--micro-batch', '2', '--lr', '1e-2', '--r', '4', '--eval-split', '0', '--save-every', '0', '--threads', '1']);
  assert.equal(r.status, 0, r.stderr);
  const [run] = listRuns(runs);
  assert.equal(run.status, 'completed');
  trained = { dir, run: run.dir, model };
  return trained;
}

function exportJson(args: string[]): { format: string; dtype: string; out: string; files: string[] } {
  const r = cli(['export', ...args, '--json']);
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

async function gguf(file: string) {
  const p = await ggufLib.gguf(file, { allowLocalFile: true });
  return { md: p.metadata as unknown as Record<string, unknown>, tensors: p.tensorInfos };
}

test('export --run --format gguf-adapter: the trained adapter as an adapter GGUF', { skip: merge.skip }, async () => {
  const t = trainedRun();
  const out = path.join(t.dir, 'out-adapter');
  const s = exportJson(['--run', t.run, '--format', 'gguf-adapter', '--out', out]);
  assert.deepEqual([s.format, s.dtype], ['gguf-adapter', 'f32']);
  assert.equal(s.files.length, 1);
  assert.equal(path.dirname(s.files[0]), out);
  const { md, tensors } = await gguf(s.files[0]);
  assert.equal(md['general.type'], 'adapter');
  assert.equal(md['adapter.type'], 'lora');
  const adapterTensors = readSafetensorsHeader(path.join(t.run, 'adapter', 'adapter_model.safetensors')).tensors.length;
  assert.equal(tensors.length, adapterTensors);
  assert.ok(tensors.some((x) => x.name === 'blk.1.ffn_down.weight.lora_b'), tensors.map((x) => x.name).join(','));
});

test('export --format ollama: base GGUF + adapter GGUF + a Modelfile naming both', { skip: merge.skip }, async () => {
  const t = trainedRun();
  const out = path.join(t.dir, 'out-ollama');
  const s = exportJson(['--run', t.run, '--format', 'ollama', '--out', out, '--name', 'tiny']);
  const [modelfile, base, lora] = s.files;
  assert.equal(path.basename(modelfile), 'Modelfile');
  assert.equal(path.basename(base), 'tiny-f16.gguf');
  assert.equal(path.basename(lora), 'tiny-lora-f32.gguf');
  const text = fs.readFileSync(modelfile, 'utf8');
  assert.match(text, /^FROM \.\/tiny-f16\.gguf$/m);
  assert.match(text, /^ADAPTER \.\/tiny-lora-f32\.gguf$/m);
  assert.equal((await gguf(base)).md['general.architecture'], (await gguf(lora)).md['general.architecture']);
  assert.equal((await gguf(lora)).md['general.type'], 'adapter');
});

test('export --format merged and gguf-model: the merged weights differ from the base; the GGUF holds the model', { skip: merge.skip }, async () => {
  const t = trainedRun();
  const merged = exportJson(['--run', t.run, '--format', 'merged', '--dtype', 'f32', '--out', path.join(t.dir, 'out-merged')]);
  const dir = merged.files[0];
  assert.ok(fs.existsSync(path.join(dir, 'config.json')));
  assert.ok(fs.existsSync(path.join(dir, 'tokenizer.json')));
  const name = 'model.layers.0.mlp.down_proj.weight';
  const read = (d: string) => {
    const h = readSafetensorsHeader(path.join(d, 'model.safetensors'));
    const info = h.tensors.find((x) => x.name === name)!;
    assert.equal(info.dtype, 'F32');
    const buf = fs.readFileSync(path.join(d, 'model.safetensors'));
    const start = h.dataStart + info.begin;
    return new Float32Array(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + start + (info.end - info.begin)));
  };
  const base = read(t.model);
  const m = read(dir);
  assert.equal(m.length, base.length);
  assert.ok(m.some((v, i) => v !== base[i]), 'the trained adapter must change the merged weight');

  const g = exportJson(['--run', t.run, '--format', 'gguf-model', '--dtype', 'q8_0', '--out', path.join(t.dir, 'out-gguf')]);
  const { md, tensors } = await gguf(g.files[0]);
  assert.equal(md['general.type'], 'model');
  assert.ok(tensors.some((x) => x.name === 'blk.0.ffn_down.weight' && x.dtype === ggufLib.GGMLQuantizationType.Q8_0));
  assert.match(fs.readFileSync(g.files[1], 'utf8'), /^FROM \.\/model-merged-q8_0\.gguf$/m);
  // The temporary merge that fed the GGUF is gone.
  assert.deepEqual(fs.readdirSync(path.join(t.dir, 'out-gguf')).sort(), ['Modelfile', 'model-merged-q8_0.gguf']);
});

test('export --format onnx: a graph onnxruntime-node loads, with the tokenizer beside it', { skip: merge.skip }, async () => {
  const dir = tempDir('cli-export-onnx-');
  const model = tinyModel(dir);
  const adapter = path.join(dir, 'adapter');
  writeRandomAdapter(adapter, model, { r: 4, alpha: 8 });
  const s = exportJson(['--adapter', adapter, '--model', model, '--format', 'onnx', '--out', path.join(dir, 'out')]);
  assert.equal(path.basename(s.files[0]), 'model.onnx');
  assert.ok(fs.existsSync(path.join(path.dirname(s.files[0]), 'tokenizer.json')));
  const session = await ort.InferenceSession.create(s.files[0], { executionProviders: ['cpu'] });
  assert.ok(session.inputNames.includes('input_ids'), session.inputNames.join(','));
  assert.ok(session.outputNames.includes('logits'), session.outputNames.join(','));
});

test('export: bad input exits 2 naming the flag, file or folder, with a hint', () => {
  const dir = tempDir('cli-export-bad-');
  const model = tinyModel(dir);
  const adapter = path.join(dir, 'adapter');
  writeRandomAdapter(adapter, model, { r: 4, alpha: 8 });
  const out = path.join(dir, 'out');
  const fails = (args: string[], pattern: RegExp) => {
    const r = cli(['export', ...args]);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern, args.join(' '));
  };
  fails(['--adapter', adapter, '--model', model, '--out', out], /--format is required/);
  fails(['--adapter', adapter, '--model', model, '--format', 'safetensors', '--out', out], /unknown --format "safetensors"[\s\S]*hint: one of gguf-adapter/);
  fails(['--adapter', adapter, '--model', model, '--format', 'gguf-adapter'], /--out is required/);
  fails(['--adapter', adapter, '--format', 'gguf-adapter', '--out', out], /--model is required with --adapter/);
  fails(['--model', model, '--format', 'gguf-adapter', '--out', out], /--run or --adapter is required/);
  fails(['--run', model, '--format', 'gguf-adapter', '--out', out], /is not a run folder/);
  fails(['--adapter', adapter, '--model', model, '--format', 'gguf-adapter', '--dtype', 'q8_0', '--out', out], /"q8_0" is not a precision the gguf-adapter export writes[\s\S]*hint: use one of f32, f16/);
  fails(['--adapter', adapter, '--model', model, '--format', 'gguf-adapter', '--out', adapter], /output folder is an input folder/);
  fails(['--adapter', path.join(dir, 'nope'), '--model', model, '--format', 'gguf-adapter', '--out', out], /nope: adapter folder not found/);
  fs.rmSync(path.join(adapter, 'adapter_config.json'));
  fails(['--adapter', adapter, '--model', model, '--format', 'gguf-adapter', '--out', out], /adapter_config\.json: missing from the adapter folder/);
  assert.equal(fs.existsSync(out), false, 'nothing is written when the input is refused');

  const run = path.join(dir, 'run');
  fs.mkdirSync(run);
  fs.writeFileSync(path.join(run, 'run.json'), JSON.stringify({ model }));
  fails(['--run', run, '--format', 'gguf-adapter', '--out', out], /has no final adapter[\s\S]*hint: .*resume/);
});

test('export --help lists every format', () => {
  const r = cli(['export', '--help']);
  assert.equal(r.status, 0);
  for (const f of ['gguf-adapter', 'ollama', 'gguf-model', 'merged', 'onnx']) assert.match(r.stdout, new RegExp(`^\\s+${f}\\s`, 'm'));
});
