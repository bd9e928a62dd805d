import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tokenizer } from 'tokenizers';
import { Template } from '@huggingface/jinja';
import { writeTinyTokenizer } from '../../src/core/fixtures/tinyTokenizer';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { trainBpe, bytesToUnicode } from '../../src/core/fixtures/bpe';
import { TOKENIZER_STYLES } from '../../src/core/fixtures/chatStyles';
import { readModelWeights, readTensorF32 } from '../../src/core/model/safetensors';
import { demoCorpus, demoRows } from '../../src/core/fixtures/demoData';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'fixtures-test-'));
}

test('bpe: byte map is a bijection and merges follow frequency', () => {
  const m = bytesToUnicode();
  assert.equal(new Set(m).size, 256);
  assert.equal(m[0x41], 'A');
  assert.equal(m[0x20], 'Ġ');
  const bpe = trainBpe(['aaab aaab aaab cd'], 260);
  assert.deepEqual(bpe.merges[0], ['a', 'a'], 'most frequent pair first');
  assert.equal(bpe.vocab.get('aa'), 256);
  assert.equal(bpe.vocab.size, 260);
});

for (const style of TOKENIZER_STYLES) {
  test(`fixtures: ${style} tokenizer loads in HF tokenizers, round-trips text, specials are single tokens`, async () => {
    const dir = tmp();
    const info = writeTinyTokenizer(dir, { style, vocabSize: 400 });
    const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    assert.equal(tok.getVocabSize(true), info.vocabSize);
    assert.ok(info.vocabSize <= 400);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    const text = 'Héllo wörld — the capital of France is Paris! 🙂\n  indented';
    const enc = await tok.encode(text, null, { addSpecialTokens: false });
    assert.ok(enc.getIds().length < Buffer.byteLength(text), 'merges shorten the encoding');
    assert.equal(await tok.decode(enc.getIds(), false), text);
    for (const [content, id] of Object.entries(info.specialTokens)) {
      const e = await tok.encode(`x${content}y`, null, { addSpecialTokens: false });
      assert.ok(e.getIds().includes(id), `${content} encodes as id ${id}`);
      assert.equal(tok.tokenToId(content), id);
    }
    const withSpecial = await tok.encode('abc', null, { addSpecialTokens: true });
    if (cfg.add_bos_token) assert.equal(withSpecial.getIds()[0], info.bosTokenId);
    else assert.notEqual(withSpecial.getIds()[0], info.bosTokenId);
    assert.equal(cfg.eos_token in info.specialTokens, true);
    if (style === 'none') {
      assert.equal(cfg.chat_template, undefined);
    } else {
      const msgs = [{ role: 'user', content: 'Hi there' }, { role: 'assistant', content: 'Hello!' }];
      const rendered = new Template(cfg.chat_template).render({ messages: msgs, bos_token: cfg.bos_token ?? '', eos_token: cfg.eos_token, add_generation_prompt: false });
      assert.ok(rendered.includes('Hi there') && rendered.includes('Hello!'));
      const ids = (await tok.encode(rendered, null, { addSpecialTokens: false })).getIds();
      assert.equal(await tok.decode(ids, false), rendered);
    }
  });
}

test('fixtures: chat templates behave like the real models (Mistral v0.3 system placement, Gemma system error)', () => {
  const render = (style: 'mistral' | 'gemma' | 'llama3' | 'chatml', messages: { role: string; content: string }[]) => {
    const dir = tmp();
    writeTinyTokenizer(dir, { style });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    return new Template(cfg.chat_template).render({ messages, bos_token: cfg.bos_token, eos_token: cfg.eos_token, add_generation_prompt: false });
  };
  const conv = [
    { role: 'system', content: 'SYS' }, { role: 'user', content: 'Q1' }, { role: 'assistant', content: 'A1' },
    { role: 'user', content: 'Q2' }, { role: 'assistant', content: 'A2' },
  ];
  assert.equal(render('mistral', conv), '<s>[INST] Q1[/INST] A1</s>[INST] Q2[/INST] A2</s>', 'v0.3 drops the system message when the chat ends with the assistant');
  assert.equal(render('mistral', conv.slice(0, 4)), '<s>[INST] Q1[/INST] A1</s>[INST] SYS\n\nQ2[/INST]');
  assert.throws(() => render('gemma', conv), /System role not supported/);
  assert.equal(render('gemma', conv.slice(1, 3)), '<bos><start_of_turn>user\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n');
  assert.equal(render('llama3', conv.slice(0, 3)),
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>');
  assert.equal(render('chatml', conv.slice(1, 3)),
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n');
});

test('fixtures: tiny llama model has HF config keys, tensor names and shapes, normal(0, 0.02) weights', () => {
  const dir = tmp();
  const info = writeTinyModel(dir, { arch: 'llama', hidden: 64, layers: 2, heads: 4, kvHeads: 2, seed: 3 });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.deepEqual(cfg.architectures, ['LlamaForCausalLM']);
  assert.equal(cfg.model_type, 'llama');
  assert.equal(cfg.num_key_value_heads, 2);
  assert.equal(cfg.vocab_size, info.tokenizer.vocabSize);
  assert.equal(cfg.intermediate_size, 176);
  assert.equal(cfg.tie_word_embeddings, false);
  const w = readModelWeights(dir);
  assert.deepEqual(w.tensors.get('model.layers.1.self_attn.k_proj.weight')!.shape, [32, 64]);
  assert.deepEqual(w.tensors.get('model.layers.0.mlp.down_proj.weight')!.shape, [64, 176]);
  assert.deepEqual(w.tensors.get('lm_head.weight')!.shape, [cfg.vocab_size, 64]);
  assert.equal(w.tensors.size, 1 + 2 * 9 + 1 + 1);
  assert.equal([...w.tensors.values()].reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0), info.paramCount);
  const emb = readTensorF32(w.files[0], 'model.embed_tokens.weight');
  const mean = emb.reduce((a, b) => a + b, 0) / emb.length;
  const std = Math.sqrt(emb.reduce((a, b) => a + (b - mean) ** 2, 0) / emb.length);
  assert.ok(Math.abs(mean) < 0.002 && Math.abs(std - 0.02) < 0.002, `mean ${mean} std ${std}`);
  assert.ok(readTensorF32(w.files[0], 'model.norm.weight').every((v) => v === 1));
});

test('fixtures: qwen2 has q/k/v biases, tied mistral has no lm_head, sharding and dtype keep values', () => {
  const q = tmp();
  writeTinyModel(q, { arch: 'qwen2', hidden: 32, heads: 4, kvHeads: 1, layers: 1 });
  const qc = JSON.parse(fs.readFileSync(path.join(q, 'config.json'), 'utf8'));
  assert.deepEqual(qc.architectures, ['Qwen2ForCausalLM']);
  const qw = readModelWeights(q);
  assert.deepEqual(qw.tensors.get('model.layers.0.self_attn.k_proj.bias')!.shape, [8]);
  assert.ok(!qw.tensors.has('model.layers.0.self_attn.o_proj.bias'));

  const m = tmp();
  writeTinyModel(m, { arch: 'mistral', tie: true, layers: 1 });
  assert.ok(!readModelWeights(m).tensors.has('lm_head.weight'));
  assert.equal(JSON.parse(fs.readFileSync(path.join(m, 'config.json'), 'utf8')).model_type, 'mistral');

  const a = tmp();
  const b = tmp();
  writeTinyModel(a, { seed: 9, layers: 2 });
  const info = writeTinyModel(b, { seed: 9, layers: 2, shards: 3, dtype: 'BF16' });
  assert.equal(info.files.length, 3);
  const index = JSON.parse(fs.readFileSync(path.join(b, 'model.safetensors.index.json'), 'utf8'));
  assert.equal(Object.keys(index.weight_map).length, Object.keys(info.tensors).length);
  const wa = readModelWeights(a);
  const wb = readModelWeights(b);
  assert.equal(wb.totalBytes * 2, wa.totalBytes);
  const name = 'model.layers.1.mlp.up_proj.weight';
  const va = readTensorF32(wa.files[0], name);
  const hb = wb.files.find((f) => f.tensors.some((t) => t.name === name))!;
  const vb = readTensorF32(hb, name);
  for (let i = 0; i < va.length; i++) assert.ok(Math.abs(va[i] - vb[i]) <= Math.abs(va[i]) / 128);
  const c = tmp();
  writeTinyModel(c, { seed: 10, layers: 2 });
  assert.notDeepEqual(readTensorF32(readModelWeights(c).files[0], name), va, 'seed changes weights');
});

test('fixtures: CLI writes a model and reports it as JSON; bad options exit 2', () => {
  const dir = tmp();
  const cli = path.join(__dirname, '..', '..', 'src', 'core', 'fixtures', 'cli.js');
  const r = spawnSync(process.execPath, [cli, 'model', '--out', dir, '--arch', 'llama', '--hidden', '32', '--layers', '1', '--rope-llama3', '8'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.dir, dir);
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.equal(cfg.rope_scaling.rope_type, 'llama3');
  assert.equal(cfg.hidden_size, 32);
  const bad = spawnSync(process.execPath, [cli, 'model', '--out', dir, '--heads', '3', '--kv-heads', '2'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /multiple of kvHeads/);
});

test('fixtures: demo dataset is deterministic, distinct, well-formed chat rows in a fixed answer style', () => {
  const rows = demoRows();
  assert.equal(rows.length, 400);
  assert.deepEqual(demoRows(), rows, 'same seed, same rows');
  assert.notDeepEqual(demoRows(400, 8), rows);
  assert.equal(new Set(rows.map((r) => JSON.stringify(r))).size, 400);
  for (const r of rows) {
    const roles = r.messages.map((m) => m.role).join(',');
    assert.ok(roles === 'user,assistant' || roles === 'system,user,assistant', roles);
    const [q, a] = r.messages.slice(-2).map((m) => m.content);
    const sum = /(\d+) (?:plus|and) (\d+)/.exec(q);
    if (sum && /plus|Add/.test(q)) assert.equal(a, `${sum[1]} plus ${sum[2]} is ${Number(sum[1]) + Number(sum[2])}.`);
  }
  assert.ok(demoCorpus(rows).length >= 800);
});
