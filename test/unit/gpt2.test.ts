// GPT-2 on the TypeScript side: the fixture generator writes GPT2LMHeadModel folders as
// transformers saves them, inspect reports PEFT's target names (c_attn, c_proj, c_fc) with
// c_proj's two modules counted, and the data pipeline handles GPT-2's tokenizer (no chat
// template: text and prompt/completion work as is; conversations fall back with a hint).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { readSafetensorsHeader } from '../../src/core/model/safetensors';
import { inspectModel, loraParamCount } from '../../src/core/model/inspect';
import { estimateMemory } from '../../src/core/estimate';
import { prepareDataset } from '../../src/core/dataset/prepare';
import { ATTENTION_TARGETS, LORA_TARGETS, targetsForModel } from '../../src/core/config';
import { readShard } from '../../src/core/tokenize/shard';

function tmp(tag: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `gpt2-${tag}-`));
  process.on('exit', () => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

function writeJsonl(rows: unknown[]): string {
  const file = path.join(tmp('data'), 'data.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

test('writeTinyModel gpt2: HF config.json, Conv1D [in, out] weights, tied head, <|endoftext|> tokenizer', () => {
  const dir = tmp('model');
  const info = writeTinyModel(dir, { arch: 'gpt2', hidden: 32, layers: 2, heads: 4, maxPositionEmbeddings: 48 });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.deepEqual(cfg.architectures, ['GPT2LMHeadModel']);
  assert.equal(cfg.model_type, 'gpt2');
  assert.equal(cfg.activation_function, 'gelu_new');
  assert.equal(cfg.n_embd, 32);
  assert.equal(cfg.n_layer, 2);
  assert.equal(cfg.n_head, 4);
  assert.equal(cfg.n_inner, null);
  assert.equal(cfg.n_positions, 48);
  assert.equal(cfg.layer_norm_epsilon, 1e-5);
  assert.ok(!('tie_word_embeddings' in cfg), 'GPT2Config ties by default, so transformers omits the key');
  assert.ok(!('hidden_size' in cfg) && !('num_hidden_layers' in cfg));
  const eot = info.tokenizer.specialTokens['<|endoftext|>'];
  assert.equal(cfg.bos_token_id, eot);
  assert.equal(cfg.eos_token_id, eot);
  const tokCfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  assert.equal(tokCfg.chat_template, undefined);
  assert.equal(tokCfg.eos_token, '<|endoftext|>');

  const shapes = new Map(readSafetensorsHeader(path.join(dir, 'model.safetensors')).tensors.map((t) => [t.name, t.shape]));
  assert.deepEqual(shapes.get('transformer.wte.weight'), [cfg.vocab_size, 32]);
  assert.deepEqual(shapes.get('transformer.wpe.weight'), [48, 32]);
  assert.deepEqual(shapes.get('transformer.h.1.attn.c_attn.weight'), [32, 96]);
  assert.deepEqual(shapes.get('transformer.h.1.mlp.c_fc.weight'), [32, 128]);
  assert.deepEqual(shapes.get('transformer.h.1.mlp.c_proj.weight'), [128, 32]);
  assert.deepEqual(shapes.get('transformer.ln_f.bias'), [32]);
  assert.ok(!shapes.has('lm_head.weight'));
  assert.equal(shapes.size, 2 + 12 * 2 + 2);

  const untied = writeTinyModel(tmp('untied'), { arch: 'gpt2', hidden: 32, layers: 1, heads: 4, tie: false, intermediate: 40 });
  assert.equal(untied.config.tie_word_embeddings, false);
  assert.equal(untied.config.n_inner, 40);
  assert.deepEqual(untied.tensors['lm_head.weight'], [untied.config.vocab_size, 32]);
  assert.throws(() => writeTinyModel(tmp('gqa'), { arch: 'gpt2', heads: 4, kvHeads: 2 }), /grouped-query/);
});

test('inspect reports GPT-2 as supported with PEFT target names; c_proj counts both projections', () => {
  const dir = tmp('inspect');
  const info = writeTinyModel(dir, { arch: 'gpt2', hidden: 32, layers: 2, heads: 4, maxPositionEmbeddings: 48 });
  const m = inspectModel(dir);
  assert.equal(m.supported, true, m.unsupportedReason);
  assert.equal(m.architecture, 'GPT2LMHeadModel');
  assert.equal(m.hidden, 32);
  assert.equal(m.intermediate, 128);
  assert.equal(m.kvHeads, 4);
  assert.equal(m.maxPositionEmbeddings, 48);
  assert.equal(m.tieWordEmbeddings, true);
  assert.deepEqual(m.warnings, []);
  assert.deepEqual(m.targets.map((t) => [t.name, t.inFeatures, t.outFeatures, t.layers]), [
    ['c_attn', 32, 96, 2], ['c_proj', 32, 32, 2], ['c_fc', 32, 128, 2],
  ]);
  assert.deepEqual(m.targets[1].parts!.map((p) => p.path), ['attn.c_proj', 'mlp.c_proj']);
  assert.equal(m.paramsLinear, 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32));
  assert.equal(m.paramsTotal, info.paramCount);
  // r (in + out) per module per layer, c_proj's two modules included.
  assert.equal(loraParamCount(m, 4, ['c_attn', 'c_proj', 'c_fc']), 2 * 4 * ((32 + 96) + (32 + 32) + (128 + 32) + (32 + 128)));
  assert.equal(loraParamCount(m, 4, ['c_proj']), 2 * 4 * ((32 + 32) + (128 + 32)));

  const cfgFile = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, activation_function: 'relu' }));
  const relu = inspectModel(dir);
  assert.equal(relu.supported, false);
  assert.match(relu.unsupportedReason!, /gelu_new/);
});

test('the memory estimate counts c_proj\'s two modules for GPT-2', () => {
  const dir = tmp('estimate');
  writeTinyModel(dir, { arch: 'gpt2', hidden: 32, layers: 2, heads: 4, maxPositionEmbeddings: 48 });
  const m = inspectModel(dir);
  const base = {
    model: m, device: 'cpu' as const, dtype: 'fp32' as const,
    quant: { type: 'none' as const, doubleQuant: false, blockSize: 64 },
    train: { microBatch: 1, seqLen: 32, gradCheckpointing: true, optimizer: 'adamw' as const },
  };
  const one = estimateMemory({ ...base, lora: { r: 4, targets: ['c_attn'], dropout: 0 } } as Parameters<typeof estimateMemory>[0]);
  const both = estimateMemory({ ...base, lora: { r: 4, targets: ['c_attn', 'c_proj'], dropout: 0 } } as Parameters<typeof estimateMemory>[0]);
  assert.equal(both.trainableParams, loraParamCount(m, 4, ['c_attn', 'c_proj']));
  assert.equal(one.trainableParams, loraParamCount(m, 4, ['c_attn']));
  assert.ok(both.totalBytes > one.totalBytes);
});

test('GPT-2\'s tokenizer in the data pipeline: text and prompt/completion as is; conversations fall back with a hint', async () => {
  const dir = tmp('pipeline');
  const info = writeTinyModel(dir, { arch: 'gpt2', hidden: 32, layers: 1, heads: 4 });
  const eot = info.tokenizer.specialTokens['<|endoftext|>'];
  const outDir = () => path.join(tmp('out'), 'data');

  const text = await prepareDataset({ data: writeJsonl([{ text: 'Paris is the capital of France.' }, { text: 'About 2.1 million.' }]), modelDir: dir, outDir: outDir(), seqLen: 64 });
  const ts = readShard(text.trainPath);
  const offs = Array.from(ts.offsets as ArrayLike<number | bigint>, Number);
  assert.equal(offs.length, 3);
  // No BOS is prepended (add_bos_token false); every document ends with <|endoftext|>.
  for (let d = 0; d < 2; d++) {
    assert.notEqual(ts.tokens[offs[d]], eot);
    assert.equal(ts.tokens[offs[d + 1] - 1], eot);
  }
  assert.equal(text.diagnostics.filter((x) => x.severity === 'error').length, 0);

  const pc = await prepareDataset({ data: writeJsonl([{ prompt: 'What is the capital of France?', completion: ' Paris.' }]), modelDir: dir, outDir: outDir(), seqLen: 64 });
  const ps = readShard(pc.trainPath);
  const mask = Array.from(ps.lossMask);
  // The prompt is context only; the completion (and the closing <|endoftext|>) is trained.
  assert.equal(mask[0], 0);
  assert.equal(mask[mask.length - 1], 1);
  assert.ok(mask.indexOf(1) > 3, `mask ${mask.join('')}`);

  const chat = await prepareDataset({
    data: writeJsonl([{ messages: [{ role: 'user', content: 'Capital of France?' }, { role: 'assistant', content: 'Paris.' }] }]),
    modelDir: dir, outDir: outDir(), seqLen: 128,
  });
  const fb = chat.diagnostics.filter((x) => x.code === 'fallback-template');
  assert.equal(fb.length, 1);
  assert.match(fb[0].message, /no chat template/);
  assert.match(fb[0].hint!, /chatml/);
  assert.equal(chat.summary.template!.fallback, true);
});

test('Llama-named defaults and presets carry over to GPT-2\'s modules by intent', () => {
  const gpt2 = ['c_attn', 'c_proj', 'c_fc'];
  assert.deepEqual(targetsForModel([...LORA_TARGETS], gpt2), gpt2);
  assert.deepEqual(targetsForModel([...ATTENTION_TARGETS], gpt2), ['c_attn']);
  assert.deepEqual(targetsForModel(['c_attn', 'c_fc'], gpt2), ['c_attn', 'c_fc']);
  // Lists that already fit, or Llama models, are left alone.
  assert.deepEqual(targetsForModel(['q_proj', 'v_proj'], [...LORA_TARGETS]), ['q_proj', 'v_proj']);
  assert.deepEqual(targetsForModel(['q_proj', 'c_attn'], gpt2), ['q_proj', 'c_attn']);
});
