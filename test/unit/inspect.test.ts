import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { ModelInspectError, describeModel, inspectModel, loraParamCount } from '../../src/core/model/inspect';
import { hfHubCacheDir, listCachedModels, repoFolderName } from '../../src/core/model/hfCache';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'inspect-test-'));
}

test('inspect: tiny llama: sizes, parameter counts and target modules from headers', () => {
  const dir = tmp();
  const info = writeTinyModel(dir, { hidden: 64, layers: 3, heads: 8, kvHeads: 2, intermediate: 96, dtype: 'BF16', shards: 2 });
  const m = inspectModel(dir);
  assert.equal(m.architecture, 'LlamaForCausalLM');
  assert.equal(m.supported, true);
  assert.deepEqual([m.layers, m.hidden, m.heads, m.kvHeads, m.headDim, m.intermediate], [3, 64, 8, 2, 8, 96]);
  assert.equal(m.paramsTotal, info.paramCount);
  assert.equal(m.paramsLinear, 3 * (64 * 64 + 16 * 64 * 2 + 64 * 64 + 3 * 96 * 64));
  assert.equal(m.bytes, info.paramCount * 2);
  assert.equal(m.dtype, 'BF16');
  assert.deepEqual(m.files, ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
  assert.deepEqual(m.targets.map((t) => [t.name, t.inFeatures, t.outFeatures, t.layers]), [
    ['q_proj', 64, 64, 3], ['k_proj', 64, 16, 3], ['v_proj', 64, 16, 3], ['o_proj', 64, 64, 3],
    ['gate_proj', 64, 96, 3], ['up_proj', 64, 96, 3], ['down_proj', 96, 64, 3],
  ]);
  assert.equal(loraParamCount(m, 4, ['q_proj', 'v_proj']), 3 * 4 * (128 + 80));
  assert.ok(m.hasTokenizer && m.hasChatTemplate);
  assert.deepEqual(m.warnings, []);
  assert.match(describeModel(m), /LlamaForCausalLM · 3 layers · hidden 64/);
});

test('inspect: shape mismatch and unsupported architecture are reported, not thrown', () => {
  const dir = tmp();
  writeTinyModel(dir, { hidden: 32, layers: 1, heads: 4, kvHeads: 4 });
  const cfgPath = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  cfg.num_key_value_heads = 2;
  cfg.architectures = ['GPTNeoXForCausalLM'];
  fs.writeFileSync(cfgPath, JSON.stringify(cfg));
  const m = inspectModel(dir);
  assert.equal(m.supported, false);
  assert.match(m.unsupportedReason!, /GPTNeoXForCausalLM is not supported/);
  assert.ok(m.warnings.some((w) => /k_proj.weight has shape \[32, 32\], config.json implies \[16, 32\]/.test(w)), m.warnings.join('\n'));
});

test('inspect: bad folders give errors naming the file and field', () => {
  assert.throws(() => inspectModel(path.join(tmp(), 'nope')), /model folder not found/);
  const dir = tmp();
  assert.throws(() => inspectModel(dir), (e: unknown) => e instanceof ModelInspectError && /config.json not found/.test(e.message));
  fs.writeFileSync(path.join(dir, 'config.json'), '{"hidden_size": 64,');
  assert.throws(() => inspectModel(dir), /not valid JSON/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 10 }));
  assert.throws(() => inspectModel(dir), (e: unknown) => e instanceof ModelInspectError && e.field === 'intermediate_size');
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 4, intermediate_size: 8, vocab_size: 10 }));
  assert.throws(() => inspectModel(dir), /no model.safetensors/);
  const trunc = tmp();
  writeTinyModel(trunc, { layers: 1 });
  const st = path.join(trunc, 'model.safetensors');
  fs.truncateSync(st, fs.statSync(st).size - 100);
  assert.throws(() => inspectModel(trunc), (e: unknown) => e instanceof ModelInspectError && e.file === st && /truncated/.test(e.message));
});

test('hfCache: lists snapshots in the huggingface_hub layout with size and architecture', () => {
  const cache = tmp();
  const repo = path.join(cache, repoFolderName('acme/tiny-llama'));
  const rev = 'a'.repeat(40);
  const snap = path.join(repo, 'snapshots', rev);
  const blobs = path.join(repo, 'blobs');
  fs.mkdirSync(snap, { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'));
  fs.writeFileSync(path.join(repo, 'refs', 'main'), rev);
  const staging = tmp();
  writeTinyModel(staging, { layers: 1, arch: 'qwen2', hidden: 32, heads: 4, kvHeads: 2 });
  fs.mkdirSync(blobs);
  let bytes = 0;
  for (const f of fs.readdirSync(staging)) {
    const blob = path.join(blobs, `hash-${f}`);
    fs.renameSync(path.join(staging, f), blob);
    fs.symlinkSync(path.relative(snap, blob), path.join(snap, f));
    bytes += fs.statSync(blob).size;
  }
  // an older snapshot that refs/main does not point to, and a non-model repo, are skipped
  fs.mkdirSync(path.join(repo, 'snapshots', 'b'.repeat(40)));
  fs.mkdirSync(path.join(cache, 'datasets--acme--data', 'snapshots', 'c'), { recursive: true });
  const list = listCachedModels(cache);
  assert.equal(list.length, 1);
  assert.deepEqual(
    { repoId: list[0].repoId, revision: list[0].revision, arch: list[0].arch, size: list[0].sizeBytes, complete: list[0].complete, tok: list[0].hasTokenizer },
    { repoId: 'acme/tiny-llama', revision: rev, arch: 'Qwen2ForCausalLM', size: bytes, complete: true, tok: true });
  assert.equal(inspectModel(list[0].path).architecture, 'Qwen2ForCausalLM', 'a snapshot folder is a usable model folder');
  assert.deepEqual(listCachedModels(path.join(cache, 'missing')), []);
});

test('hfCache: a snapshot whose shard download was interrupted is listed as incomplete', () => {
  const cache = tmp();
  const snap = path.join(cache, repoFolderName('acme/sharded'), 'snapshots', 'r1');
  writeTinyModel(snap, { layers: 2, shards: 2 });
  fs.rmSync(path.join(snap, 'model-00002-of-00002.safetensors'));
  fs.symlinkSync('../../blobs/never-downloaded', path.join(snap, 'model-00002-of-00002.safetensors'));
  const [m] = listCachedModels(cache);
  assert.deepEqual([m.repoId, m.revision, m.complete, m.arch], ['acme/sharded', 'r1', false, 'LlamaForCausalLM']);
});

test('hfCache: cache folder from HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, home', () => {
  assert.equal(hfHubCacheDir({ HF_HUB_CACHE: '/x/hub', HF_HOME: '/y' }), '/x/hub');
  assert.equal(hfHubCacheDir({ HF_HOME: '/y' }), '/y/hub');
  assert.equal(hfHubCacheDir({ XDG_CACHE_HOME: '/c' }), '/c/huggingface/hub');
  assert.equal(hfHubCacheDir({}), path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
});
