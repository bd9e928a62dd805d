// GGUF export: the files parse with @huggingface/gguf (an independent reader), carry
// llama.cpp's metadata keys, tensor names, shapes and types, and their data equals the source
// tensors once the Q/K row permutation is undone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { readModelWeights, readSafetensorsHeader, readTensorF32, readTensorBytes } from '../../src/core/model/safetensors';
import { f16ToF32, f32ToF16 } from '../../src/core/model/dtype';
import { buildModelfile, exportAdapterGguf, exportGguf, exportModelGguf } from '../../src/core/export/ggufExport';
import { ExportError, permuteRowsForGguf, ropeFreqFactors, readHfConfig, unpermuteRowsFromGguf } from '../../src/core/export/hfModel';
import { GgmlType, GgufValueType, gv, quantizeQ8_0, writeGguf } from '../../src/core/export/gguf';
import { writeRandomAdapter } from './exportReference';
import { tempDir } from './exportReference';
import * as ggufLib from '@huggingface/gguf';


const tmp = tempDir;

async function parse(file: string) {
  return ggufLib.gguf(file, { allowLocalFile: true });
}

/** Reads one tensor's data from a GGUF file as fp32 (F32 or F16), in ggml element order. */
function readGgufTensor(file: string, parsed: Awaited<ReturnType<typeof parse>>, name: string): Float32Array {
  const info = parsed.tensorInfos.find((t) => t.name === name);
  assert.ok(info, `tensor ${name} in ${file}`);
  const n = info.shape.reduce((a, b) => a * Number(b), 1);
  const size = info.dtype === ggufLib.GGMLQuantizationType.F32 ? 4 : 2;
  const buf = Buffer.alloc(n * size);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, buf, 0, buf.length, Number(parsed.tensorDataOffset) + Number(info.offset));
  fs.closeSync(fd);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = size === 4 ? buf.readFloatLE(i * 4) : f16ToF32(buf.readUInt16LE(i * 2));
  return out;
}

test('permutation matches convert_hf_to_gguf.py (reshape(heads, 2, d/2).swapaxes(1, 2)) and inverts', () => {
  // 2 heads of head_dim 4, one column: rows [h0: a0 a1 b0 b1 | h1: ...] -> [a0 b0 a1 b1 | ...].
  const rows = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual([...permuteRowsForGguf(rows, 8, 1, 2)], [0, 2, 1, 3, 4, 6, 5, 7]);
  const m = Float32Array.from({ length: 24 * 3 }, (_, i) => i);
  assert.deepEqual([...unpermuteRowsFromGguf(permuteRowsForGguf(m, 24, 3, 3), 24, 3, 3)], [...m]);
  assert.throws(() => permuteRowsForGguf(new Float32Array(6), 6, 1, 2), /cannot permute/);
});

test('writer: every metadata value type round-trips through @huggingface/gguf, offsets are aligned', async () => {
  const dir = tmp('gguf-w-');
  const file = path.join(dir, 'a.gguf');
  writeGguf(file, new Map([
    ['general.architecture', gv.str('llama')],
    ['general.alignment', gv.u32(32)],
    ['t.u8', { type: GgufValueType.UINT8, value: 200 }],
    ['t.i16', { type: GgufValueType.INT16, value: -300 }],
    ['t.i32', gv.i32(-5)],
    ['t.f32', gv.f32(0.5)],
    ['t.bool', gv.bool(true)],
    ['t.u64', gv.u64(2n ** 40n)],
    ['t.f64', { type: GgufValueType.FLOAT64, value: 1.25 }],
    ['t.strs', gv.strs(['a', 'bé', ''])],
    ['t.i32s', gv.i32s([1, -2, 3])],
  ]), [
    { name: 'x', shape: [3], type: GgmlType.F32, data: () => Float32Array.from([1, 2, 3]) },
    { name: 'y', shape: [2, 3], type: GgmlType.F16, data: () => Float32Array.from([1, 2, 3, 4, 5, 6]) },
  ]);
  const p = await parse(file);
  const md = p.metadata as unknown as Record<string, unknown>;
  assert.equal(md.version, 3);
  assert.equal(md['t.u8'], 200);
  assert.equal(md['t.i16'], -300);
  assert.equal(md['t.i32'], -5);
  assert.equal(md['t.f32'], 0.5);
  assert.equal(md['t.bool'], true);
  assert.equal(BigInt(md['t.u64'] as bigint), 2n ** 40n);
  assert.equal(md['t.f64'], 1.25);
  assert.deepEqual(md['t.strs'], ['a', 'bé', '']);
  assert.deepEqual(md['t.i32s'], [1, -2, 3]);
  assert.equal(Number(p.tensorDataOffset) % 32, 0);
  for (const t of p.tensorInfos) assert.equal(Number(t.offset) % 32, 0, t.name);
  assert.deepEqual(p.tensorInfos.find((t) => t.name === 'y')!.shape.map(Number), [3, 2], 'ggml ne is the reversed numpy shape');
  assert.deepEqual([...readGgufTensor(file, p, 'y')], [1, 2, 3, 4, 5, 6]);
  assert.throws(() => writeGguf(file, {}, [{ name: 'x', shape: [2], type: GgmlType.F32, data: () => new Float32Array(3) }]), /has 3 values/);
  assert.throws(() => writeGguf(file, { k: gv.u32(1.5) }, []), /does not fit/);
});

test('adapter GGUF: llama.cpp LoRA metadata, names, [in, r]/[r, out] ggml shapes, data with q/k B permuted', async () => {
  const dir = tmp('gguf-a-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8 });
  const out = path.join(dir, 'lora.gguf');
  const progress: number[] = [];
  const res = exportAdapterGguf({ adapterDir, modelDir, out, onProgress: (p) => progress.push(p.fraction) });
  assert.equal(res.tensors, 2 * 7 * 2);
  assert.equal(progress[progress.length - 1], 1);

  const p = await parse(out);
  const md = p.metadata as unknown as Record<string, unknown>;
  assert.equal(md['general.type'], 'adapter');
  assert.equal(md['adapter.type'], 'lora');
  assert.equal(md['adapter.lora.alpha'], 8);
  assert.equal(md['general.architecture'], 'llama');
  const names = p.tensorInfos.map((t) => t.name).sort();
  const expected: string[] = [];
  for (let l = 0; l < 2; l++) {
    for (const m of ['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down']) {
      expected.push(`blk.${l}.${m}.weight.lora_a`, `blk.${l}.${m}.weight.lora_b`);
    }
  }
  assert.deepEqual(names, expected.sort());

  const cfg = readHfConfig(modelDir);
  const header = readSafetensorsHeader(path.join(adapterDir, 'adapter_model.safetensors'));
  const hf = (l: number, parent: string, m: string, ab: 'A' | 'B') => `base_model.model.model.layers.${l}.${parent}.${m}.lora_${ab}.weight`;
  const cases: [string, string, string, number | null, number][] = [
    ['attn_q', 'self_attn', 'q_proj', cfg.heads, cfg.heads * cfg.headDim],
    ['attn_k', 'self_attn', 'k_proj', cfg.kvHeads, cfg.kvHeads * cfg.headDim],
    ['attn_v', 'self_attn', 'v_proj', null, cfg.kvHeads * cfg.headDim],
    ['ffn_down', 'mlp', 'down_proj', null, cfg.hidden],
  ];
  for (const [g, parent, m, heads, outDim] of cases) {
    const inDim = m === 'down_proj' ? cfg.intermediate : cfg.hidden;
    const a = p.tensorInfos.find((t) => t.name === `blk.1.${g}.weight.lora_a`)!;
    const b = p.tensorInfos.find((t) => t.name === `blk.1.${g}.weight.lora_b`)!;
    assert.deepEqual(a.shape.map(Number), [inDim, 4], `${g} lora_a ne`);
    assert.deepEqual(b.shape.map(Number), [4, outDim], `${g} lora_b ne`);
    assert.equal(a.dtype, ggufLib.GGMLQuantizationType.F32);
    assert.deepEqual([...readGgufTensor(out, p, a.name)], [...readTensorF32(header, hf(1, parent, m, 'A'))]);
    const srcB = readTensorF32(header, hf(1, parent, m, 'B'));
    const gotB = readGgufTensor(out, p, b.name);
    if (heads === null) {
      assert.deepEqual([...gotB], [...srcB]);
    } else {
      assert.notDeepEqual([...gotB], [...srcB], `${g} lora_b must be permuted for llama.cpp's RoPE`);
      assert.deepEqual([...unpermuteRowsFromGguf(gotB, outDim, 4, heads)], [...srcB]);
    }
  }
});

test('adapter GGUF: rsLoRA alpha becomes alpha * sqrt(r) (llama.cpp scales by alpha / r); f16 output', async () => {
  const dir = tmp('gguf-rs-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 1, hidden: 32, heads: 2, kvHeads: 1 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 16, alpha: 8, rslora: true, targets: ['v_proj'] });
  const out = path.join(dir, 'lora.gguf');
  const res = exportAdapterGguf({ adapterDir, modelDir, out, outType: 'f16' });
  assert.equal(res.alpha, 32);
  const p = await parse(out);
  assert.equal((p.metadata as unknown as Record<string, unknown>)['adapter.lora.alpha'], 32);
  const a = p.tensorInfos.find((t) => t.name === 'blk.0.attn_v.weight.lora_a')!;
  assert.equal(a.dtype, ggufLib.GGMLQuantizationType.F16);
  const src = readTensorF32(readSafetensorsHeader(path.join(adapterDir, 'adapter_model.safetensors')), 'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight');
  assert.deepEqual([...readGgufTensor(out, p, a.name)], [...src].map((x) => f16ToF32(f32ToF16(x))));
});

test('adapter GGUF: an adapter for another model is refused with the file, the tensor and a hint', () => {
  const dir = tmp('gguf-bad-');
  const small = path.join(dir, 'small');
  const big = path.join(dir, 'big');
  writeTinyModel(small, { layers: 1, hidden: 32, heads: 2, kvHeads: 1 });
  writeTinyModel(big, { layers: 1, hidden: 64, heads: 4, kvHeads: 2 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, small, { r: 2, alpha: 4 });
  assert.throws(() => exportAdapterGguf({ adapterDir, modelDir: big, out: path.join(dir, 'x.gguf') }), (e: unknown) => {
    assert.ok(e instanceof ExportError);
    assert.match(e.message, /adapter_model\.safetensors/);
    assert.match(e.message, /do not fit/);
    assert.match(e.hint ?? '', /different base model/);
    return true;
  });
  assert.ok(!fs.existsSync(path.join(dir, 'x.gguf')));
  fs.writeFileSync(path.join(adapterDir, 'adapter_config.json'), '{"r": 0}');
  assert.throws(() => exportAdapterGguf({ adapterDir, modelDir: small, out: path.join(dir, 'x.gguf') }), /adapter_config\.json \(r\): must be a positive integer/);
  fs.rmSync(path.join(adapterDir, 'adapter_config.json'));
  assert.throws(() => exportAdapterGguf({ adapterDir, modelDir: small, out: path.join(dir, 'x.gguf') }), /adapter_config\.json: file not found/);
});

test('model GGUF (f32, llama, GQA): metadata, tokenizer, tensor names/shapes, data with Q/K rows permuted', async () => {
  const dir = tmp('gguf-m-');
  const modelDir = path.join(dir, 'model');
  const info = writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2, dtype: 'BF16' });
  const out = path.join(dir, 'model.gguf');
  const res = exportModelGguf({ modelDir, out, outType: 'f32' });
  assert.equal(res.architecture, 'llama');
  const p = await parse(out);
  const md = p.metadata as unknown as Record<string, unknown>;
  const expectMeta: Record<string, unknown> = {
    'general.architecture': 'llama', 'general.file_type': 0, 'general.alignment': 32,
    'llama.block_count': 2, 'llama.embedding_length': 64, 'llama.feed_forward_length': info.config.intermediate_size,
    'llama.attention.head_count': 4, 'llama.attention.head_count_kv': 2, 'llama.rope.dimension_count': 16,
    'llama.context_length': 2048, 'llama.vocab_size': info.tokenizer.vocabSize, 'llama.rope.freq_base': 500000,
    'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'gpt-2',
    'tokenizer.ggml.bos_token_id': info.tokenizer.bosTokenId, 'tokenizer.ggml.eos_token_id': info.tokenizer.eosTokenId,
  };
  for (const [k, v] of Object.entries(expectMeta)) assert.equal(md[k], v, k);
  assert.ok(Math.abs((md['llama.attention.layer_norm_rms_epsilon'] as number) - 1e-5) < 1e-12);
  const tok = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8'));
  const tokens = md['tokenizer.ggml.tokens'] as string[];
  const types = md['tokenizer.ggml.token_type'] as number[];
  assert.equal(tokens.length, info.tokenizer.vocabSize);
  for (const [t, id] of Object.entries(tok.model.vocab as Record<string, number>)) assert.equal(tokens[id], t);
  for (const [t, id] of Object.entries(info.tokenizer.specialTokens)) {
    assert.equal(tokens[id], t);
    assert.equal(types[id], 3, `${t} is a control token`);
  }
  assert.deepEqual(md['tokenizer.ggml.merges'], tok.model.merges);
  assert.equal(typeof md['tokenizer.chat_template'], 'string');

  const names = p.tensorInfos.map((t) => t.name);
  assert.equal(names[0], 'token_embd.weight');
  assert.ok(names.includes('output.weight') && names.includes('output_norm.weight'));
  for (const n of ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_up', 'ffn_down']) {
    assert.ok(names.includes(`blk.1.${n}.weight`), n);
  }
  assert.equal(names.length, 1 + 2 * 9 + 2);
  const weights = readModelWeights(modelDir);
  const hfRead = (name: string) => readTensorF32(weights.files[0], name);
  const q = p.tensorInfos.find((t) => t.name === 'blk.0.attn_q.weight')!;
  assert.deepEqual(q.shape.map(Number), [64, 64]);
  assert.equal(q.dtype, ggufLib.GGMLQuantizationType.F32);
  const k = p.tensorInfos.find((t) => t.name === 'blk.0.attn_k.weight')!;
  assert.deepEqual(k.shape.map(Number), [64, 32]);
  const srcQ = hfRead('model.layers.0.self_attn.q_proj.weight');
  const gotQ = readGgufTensor(out, p, 'blk.0.attn_q.weight');
  assert.notDeepEqual([...gotQ], [...srcQ]);
  assert.deepEqual([...unpermuteRowsFromGguf(gotQ, 64, 64, 4)], [...srcQ]);
  assert.deepEqual([...unpermuteRowsFromGguf(readGgufTensor(out, p, 'blk.0.attn_k.weight'), 32, 64, 2)], [...hfRead('model.layers.0.self_attn.k_proj.weight')]);
  assert.deepEqual([...readGgufTensor(out, p, 'blk.1.ffn_down.weight')], [...hfRead('model.layers.1.mlp.down_proj.weight')]);
  assert.deepEqual([...readGgufTensor(out, p, 'token_embd.weight')], [...hfRead('model.embed_tokens.weight')]);
  assert.deepEqual([...readGgufTensor(out, p, 'output.weight')], [...hfRead('lm_head.weight')]);
  // Bytes as stored: BF16 source widened exactly, so the comparison above is bit-exact.
  assert.equal(readTensorBytes(weights.files[0], 'lm_head.weight').length, info.tokenizer.vocabSize * 64 * 2);
});

test('model GGUF (f16, tied, llama3 rope, 3 shards): no output tensor, rope_freqs factors, 2-D weights f16 and norms f32', async () => {
  const dir = tmp('gguf-t-');
  const modelDir = path.join(dir, 'model');
  const ropeScaling = { rope_type: 'llama3' as const, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
  writeTinyModel(modelDir, { layers: 1, hidden: 64, heads: 2, kvHeads: 2, tie: true, ropeScaling, ropeTheta: 10000, shards: 3 });
  const out = path.join(dir, 'model.gguf');
  exportModelGguf({ modelDir, out, outType: 'f16' });
  const p = await parse(out);
  assert.equal((p.metadata as unknown as Record<string, unknown>)['general.file_type'], 1);
  const names = p.tensorInfos.map((t) => t.name);
  assert.ok(!names.includes('output.weight'), 'tied models reuse token_embd');
  const byName = (n: string) => p.tensorInfos.find((t) => t.name === n)!;
  assert.equal(byName('blk.0.attn_q.weight').dtype, ggufLib.GGMLQuantizationType.F16);
  assert.equal(byName('blk.0.attn_norm.weight').dtype, ggufLib.GGMLQuantizationType.F32);
  const factors = readGgufTensor(out, p, 'rope_freqs.weight');
  assert.equal(factors.length, 16);
  const cfg = readHfConfig(modelDir);
  assert.deepEqual([...factors], [...ropeFreqFactors(cfg)]);
  // Highest frequencies are unscaled, lowest get the full factor (wavelength beyond 64 / 1).
  assert.equal(factors[0], 1);
  assert.equal(factors[15], 8);
  const weights = readModelWeights(modelDir);
  assert.equal(weights.files.length, 3, 'sharded checkpoint');
  const upFile = weights.files.find((h) => h.tensors.some((t) => t.name === 'model.layers.0.mlp.up_proj.weight'))!;
  const src = readTensorF32(upFile, 'model.layers.0.mlp.up_proj.weight');
  assert.deepEqual([...readGgufTensor(out, p, 'blk.0.ffn_up.weight')], [...src].map((x) => f16ToF32(f32ToF16(x))));
});

test('model GGUF (qwen2): qwen2 architecture, q/k/v biases, no Q/K permutation (NEOX RoPE)', async () => {
  const dir = tmp('gguf-q-');
  const modelDir = path.join(dir, 'model');
  // Embedding rows beyond the tokenizer, as real checkpoints pad them.
  const info = writeTinyModel(modelDir, { arch: 'qwen2', layers: 1, hidden: 64, heads: 4, kvHeads: 2, vocab: 400 });
  const out = path.join(dir, 'model.gguf');
  assert.equal(exportModelGguf({ modelDir, out, outType: 'f32' }).architecture, 'qwen2');
  const p = await parse(out);
  const md = p.metadata as unknown as Record<string, unknown>;
  assert.equal(md['qwen2.attention.head_count_kv'], 2);
  const tokens = md['tokenizer.ggml.tokens'] as string[];
  const types = md['tokenizer.ggml.token_type'] as number[];
  assert.equal(tokens.length, 400);
  assert.equal(tokens[399], '[PAD399]');
  assert.equal(types[399], 5, 'padding entries are unused tokens');
  assert.equal(types[info.tokenizer.vocabSize - 1], 3, 'the last special token stays a control token');
  const w = readModelWeights(modelDir).files[0];
  assert.deepEqual([...readGgufTensor(out, p, 'blk.0.attn_q.weight')], [...readTensorF32(w, 'model.layers.0.self_attn.q_proj.weight')]);
  assert.deepEqual([...readGgufTensor(out, p, 'blk.0.attn_k.bias')], [...readTensorF32(w, 'model.layers.0.self_attn.k_proj.bias')]);
});

test('exportGguf writes model, adapter and an Ollama Modelfile; templates only for known families', () => {
  const dir = tmp('gguf-e-');
  const modelDir = path.join(dir, 'tiny');
  writeTinyModel(modelDir, { layers: 1, hidden: 32, heads: 2, kvHeads: 1 });
  const adapterDir = path.join(dir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 2, alpha: 4, targets: ['q_proj', 'v_proj'] });
  const phases = new Set<string>();
  let last = 0;
  const res = exportGguf({ modelDir, adapterDir, outDir: path.join(dir, 'out'), onProgress: (p) => { phases.add(p.phase); assert.ok(p.fraction >= last - 1e-9); last = p.fraction; } });
  assert.ok(fs.existsSync(res.model!.file) && fs.existsSync(res.adapter!.file));
  assert.deepEqual([...phases].sort(), ['adapter', 'done', 'model']);
  const mf = fs.readFileSync(res.modelfile, 'utf8');
  assert.match(mf, /^FROM \.\/tiny-f16\.gguf$/m);
  assert.match(mf, /^ADAPTER \.\/tiny-lora-f32\.gguf$/m);
  assert.match(mf, /^TEMPLATE """.*<\|start_header_id\|>/m);
  assert.match(mf, /^PARAMETER stop "<\|eot_id\|>"$/m);

  const chatml = buildModelfile({ from: 'base.gguf', chatTemplate: '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}' });
  assert.match(chatml, /TEMPLATE """.*<\|im_start\|>assistant/s);
  assert.doesNotMatch(chatml, /ADAPTER/);
  const unknown = buildModelfile({ from: 'base.gguf', adapter: 'a.gguf', chatTemplate: '[INST] {{ messages }} [/INST]' });
  assert.doesNotMatch(unknown, /TEMPLATE/);
  assert.match(unknown, /^# The chat template is not a known family/m);
});

test('model GGUF refuses what it cannot convert: a non-BPE tokenizer, a missing tokenizer.json', () => {
  const dir = tmp('gguf-tok-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 1, hidden: 32, heads: 2, kvHeads: 1 });
  const tokFile = path.join(modelDir, 'tokenizer.json');
  const tok = JSON.parse(fs.readFileSync(tokFile, 'utf8'));
  fs.writeFileSync(tokFile, JSON.stringify({ ...tok, model: { ...tok.model, type: 'Unigram' } }));
  assert.throws(() => exportModelGguf({ modelDir, out: path.join(dir, 'm.gguf') }), (e: unknown) =>
    e instanceof ExportError && /tokenizer\.json \(model\.type\)/.test(e.message) && /convert_hf_to_gguf\.py/.test(e.hint ?? ''));
  fs.rmSync(tokFile);
  assert.throws(() => exportModelGguf({ modelDir, out: path.join(dir, 'm.gguf') }), /tokenizer\.json: file not found\. The model folder needs its tokenizer\.json/);
  assert.ok(!fs.existsSync(path.join(dir, 'm.gguf')));
});

test('Q8_0: blocks of 32 as gguf-py quantizes them (f16 absmax/127 scale, round half away from zero)', () => {
  const x = Float32Array.from({ length: 64 }, (_, i) => (i < 32 ? (i - 16) / 8 : 0));
  x[5] = -2.54; // the block's absmax, negative
  const q = quantizeQ8_0(x);
  assert.equal(q.length, 2 * 34);
  const d = Math.fround(2.54 / 127);
  assert.equal(q.readUInt16LE(0), f32ToF16(d));
  assert.equal(q.readInt8(2 + 5), -127);
  for (let i = 0; i < 32; i++) {
    const r = Math.fround(x[i] / d);
    assert.equal(q.readInt8(2 + i), Math.sign(r) * Math.floor(Math.abs(r) + 0.5), `element ${i}`);
    // Rounding error d/2, plus up to 127 times the f16 rounding of d (2^-11 relative).
    assert.ok(Math.abs(q.readInt8(2 + i) * f16ToF32(q.readUInt16LE(0)) - x[i]) <= d * (0.5 + 127 * 2 ** -11));
  }
  assert.equal(q.readUInt16LE(34), 0, 'an all-zero block has scale 0');
  for (let i = 0; i < 32; i++) assert.equal(q.readInt8(36 + i), 0);
  assert.throws(() => quantizeQ8_0(new Float32Array(40)), /multiple of 32/);
});

test('model GGUF (q8_0): file_type 7, Q8_0 matrices, f16 where rows do not split into blocks, f32 norms', async () => {
  const dir = tmp('gguf-q8-');
  const modelDir = path.join(dir, 'model');
  writeTinyModel(modelDir, { layers: 1, hidden: 64, heads: 4, kvHeads: 2, intermediate: 176 });
  const out = path.join(dir, 'model.gguf');
  exportModelGguf({ modelDir, out, outType: 'q8_0' });
  const p = await parse(out);
  assert.equal((p.metadata as unknown as Record<string, unknown>)['general.file_type'], 7);
  const type = (n: string) => p.tensorInfos.find((t) => t.name === n)!.dtype;
  assert.equal(type('blk.0.attn_q.weight'), ggufLib.GGMLQuantizationType.Q8_0);
  assert.equal(type('blk.0.ffn_up.weight'), ggufLib.GGMLQuantizationType.Q8_0);
  assert.equal(type('token_embd.weight'), ggufLib.GGMLQuantizationType.Q8_0);
  assert.equal(type('blk.0.ffn_down.weight'), ggufLib.GGMLQuantizationType.F16, 'rows of 176 are not a multiple of 32');
  assert.equal(type('blk.0.attn_norm.weight'), ggufLib.GGMLQuantizationType.F32);
  // The Q8_0 bytes are exactly quantizeQ8_0 of the (permuted) source rows.
  const info = p.tensorInfos.find((t) => t.name === 'blk.0.attn_q.weight')!;
  const bytes = Buffer.alloc(64 * 64 / 32 * 34);
  const fd = fs.openSync(out, 'r');
  fs.readSync(fd, bytes, 0, bytes.length, Number(p.tensorDataOffset) + Number(info.offset));
  fs.closeSync(fd);
  const src = readTensorF32(readModelWeights(modelDir).files[0], 'model.layers.0.self_attn.q_proj.weight');
  assert.ok(bytes.equals(quantizeQ8_0(permuteRowsForGguf(src, 64, 64, 4))));
});
