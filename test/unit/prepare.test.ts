import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { prepareDataset, PrepareOptions } from '../../src/core/dataset/prepare';
import { validateDataset } from '../../src/core/dataset/validate';
import { previewRows } from '../../src/core/dataset/preview';
import { DatasetError } from '../../src/core/dataset/diagnostics';
import { readShard, TokenShardData } from '../../src/core/tokenize/shard';
import { Tokenizer } from 'tokenizers';
import { CONVERSATION, makeModelDir, tmpDir, writeJsonl } from './datasetHelpers';

function chatRows(n: number, tag = 'row'): unknown[] {
  return Array.from({ length: n }, (_, i) => ({
    messages: [
      { role: 'user', content: `What is the capital of France? (${tag} ${i})` },
      { role: 'assistant', content: `Paris is the capital. (${tag} ${i})` },
    ],
  }));
}

function docs(shard: TokenShardData): Array<{ ids: number[]; mask: number[] }> {
  const out = [];
  const offs = Array.from(shard.offsets as ArrayLike<number | bigint>, Number);
  for (let d = 0; d + 1 < offs.length; d++) {
    out.push({ ids: Array.from(shard.tokens.subarray(offs[d], offs[d + 1])), mask: Array.from(shard.lossMask.subarray(offs[d], offs[d + 1])) });
  }
  return out;
}

async function decodeDocs(dir: string, shard: TokenShardData): Promise<string[]> {
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  return Promise.all(docs(shard).map((d) => tok.decode(d.ids, false)));
}

function opts(model: string, data: string, extra: Partial<PrepareOptions> = {}): PrepareOptions {
  return { data, modelDir: model, outDir: path.join(tmpDir('out-'), 'data'), seqLen: 256, ...extra };
}

test('prepare: shards, summary.json and counts agree; masks train the answers only', async () => {
  const { dir } = makeModelDir('llama3');
  const data = writeJsonl(chatRows(30));
  const progress: number[] = [];
  const r = await prepareDataset(opts(dir, data, { onProgress: (p) => progress.push(p.bytes / p.totalBytes) }));
  assert.equal(r.evalPath, null);
  assert.ok(!fs.existsSync(path.join(path.dirname(r.trainPath), 'eval.bin')));
  const shard = readShard(r.trainPath);
  const ds = docs(shard);
  assert.equal(ds.length, 30);
  assert.equal(r.summary.rows.read, 30);
  assert.equal(r.summary.rows.train, 30);
  assert.equal(r.summary.train.documents, 30);
  assert.equal(r.summary.train.tokens, shard.tokens.length);
  const targets = ds.reduce((n, d) => n + d.mask.slice(1).reduce((a, b) => a + b, 0), 0);
  assert.equal(r.summary.train.trainedTokens, targets);
  assert.equal(r.summary.template!.source, 'model');
  assert.equal(r.summary.bos.token, '<|begin_of_text|>');
  const onDisk = JSON.parse(fs.readFileSync(r.summaryPath, 'utf8'));
  assert.deepEqual(onDisk.rows, r.summary.rows);
  assert.equal(r.summary.train.lengthHistogram.counts.reduce((a: number, b: number) => a + b, 0), 30);
  assert.equal(progress[progress.length - 1], 1);
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const d0 = ds[0];
  const trained = d0.ids.filter((_, i) => d0.mask[i] === 1);
  assert.equal(await tok.decode(trained, false), 'Paris is the capital. (row 0)<|eot_id|>');
  assert.equal(r.diagnostics.filter((d) => d.severity === 'error').length, 0);
});

test('eval split by fraction: exact size, deterministic by seed, no row in both, duplicates stay together', async () => {
  const { dir } = makeModelDir('chatml');
  const rows = chatRows(40);
  rows.push(rows[3], rows[3], rows[17]);
  const data = writeJsonl(rows);
  const a = await prepareDataset(opts(dir, data, { evalSplit: 0.25, seed: 7 }));
  const b = await prepareDataset(opts(dir, data, { evalSplit: 0.25, seed: 7 }));
  const c = await prepareDataset(opts(dir, data, { evalSplit: 0.25, seed: 8 }));
  assert.ok(a.evalPath);
  assert.deepEqual(fs.readFileSync(a.trainPath), fs.readFileSync(b.trainPath), 'same seed, same train shard');
  assert.deepEqual(fs.readFileSync(a.evalPath!), fs.readFileSync(b.evalPath!), 'same seed, same eval shard');
  const trainA = await decodeDocs(dir, readShard(a.trainPath));
  const evalA = await decodeDocs(dir, readShard(a.evalPath!));
  const evalC = await decodeDocs(dir, readShard(c.evalPath!));
  assert.equal(new Set(evalA).size, 10, 'a quarter of the 40 distinct rows');
  assert.equal(trainA.length + evalA.length, 43);
  for (const t of trainA) assert.ok(!evalA.includes(t), 'no row in both');
  assert.notDeepEqual(evalA.sort(), evalC.sort(), 'another seed picks other rows');
  assert.equal(a.summary.rows.duplicates, 3);
  assert.equal(a.diagnostics.filter((d) => d.code === 'duplicate-row').length, 3);
  assert.equal(a.summary.rows.eval, evalA.length);
  assert.ok(a.summary.eval && a.summary.eval.documents === evalA.length);
});

test('separate eval file: rows also in the training data are left out and reported', async () => {
  const { dir } = makeModelDir('llama3');
  const train = writeJsonl(chatRows(10));
  const evalRows = [...chatRows(3, 'held out'), chatRows(10)[4]];
  const ev = writeJsonl(evalRows, 'eval.jsonl');
  const r = await prepareDataset(opts(dir, train, { evalData: ev }));
  assert.equal(readShard(r.evalPath!).offsets.length - 1, 3);
  const overlap = r.diagnostics.filter((d) => d.code === 'train-eval-overlap');
  assert.equal(overlap.length, 1);
  assert.equal(overlap[0].file, path.resolve(ev));
  assert.equal(overlap[0].line, 4);
  assert.match(overlap[0].message, /training row 5/);
  assert.equal(r.summary.files[1].rowsSkipped['train-eval-overlap'], 1);
});

test('over-length rows: truncated or dropped, counted and reported, never silent', async () => {
  const { dir } = makeModelDir('llama3');
  const long = { messages: [{ role: 'user', content: 'Tell me. '.repeat(3) }, { role: 'assistant', content: 'Paris is the capital. '.repeat(40) }] };
  const promptOnly = { messages: [{ role: 'user', content: 'What is the capital of France? '.repeat(40) }, { role: 'assistant', content: 'Paris.' }] };
  const data = writeJsonl([...chatRows(3), long, promptOnly]);
  const t = await prepareDataset(opts(dir, data, { seqLen: 64 }));
  const shard = readShard(t.trainPath);
  assert.equal(t.summary.rows.truncated, 1);
  assert.equal(t.summary.rows.droppedOverLength, 1, 'truncation would leave no trained token');
  assert.equal(docs(shard).length, 4);
  assert.ok(docs(shard).every((d) => d.ids.length <= 64));
  const ol = t.diagnostics.filter((d) => d.code === 'over-length');
  assert.deepEqual(ol.map((d) => d.line), [4, 5]);
  assert.match(ol[0].message, /truncated to 64/);
  assert.equal(t.summary.train.lengthHistogram.overSeqLen, 2);
  const d = await prepareDataset(opts(dir, data, { seqLen: 64, overLength: 'drop' }));
  assert.equal(d.summary.rows.droppedOverLength, 2);
  assert.equal(d.summary.rows.truncated, 0);
  assert.equal(d.summary.rows.skippedByReason['over-length'], 2);
  assert.equal(docs(readShard(d.trainPath)).length, 3);
});

test('bad rows and a template that throws on some rows: diagnostics with lines, the good rows used', async () => {
  const { dir } = makeModelDir('gemma');
  const file = path.join(tmpDir(), 'mixed.jsonl');
  fs.writeFileSync(
    file,
    [
      JSON.stringify(chatRows(1)[0]),
      '{"messages": [',
      JSON.stringify({ messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'assistant', content: 'c' }] }),
      JSON.stringify({ messages: [{ role: 'system', content: 'Be nice.' }, ...CONVERSATION] }),
      JSON.stringify(chatRows(2)[1]),
    ].join('\n'),
  );
  const r = await prepareDataset(opts(dir, file));
  assert.equal(r.summary.train.documents, 2);
  const byLine = new Map(r.diagnostics.map((d) => [d.line, d.code]));
  assert.equal(byLine.get(2), 'bad-json');
  assert.equal(byLine.get(3), 'template-error');
  assert.equal(byLine.get(4), 'template-error');
  assert.deepEqual(r.summary.rows.skippedByReason, { 'bad-json': 1, 'template-error': 2 });
  assert.equal(r.summary.rows.skipped, 3);
  const folded = await prepareDataset(opts(dir, file, { foldSystemIntoUser: true }));
  assert.equal(folded.summary.train.documents, 3);
});

test('Mistral v0.3 with system prompts: every row reported as losing content; folding fixes it', async () => {
  const { dir } = makeModelDir('mistral');
  const data = writeJsonl([{ messages: [{ role: 'system', content: 'You are a geography tutor.' }, ...CONVERSATION] }, ...chatRows(2)]);
  const r = await prepareDataset(opts(dir, data));
  const lost = r.diagnostics.filter((d) => d.code === 'template-lost-content');
  assert.equal(lost.length, 1);
  assert.equal(lost[0].row, 1);
  assert.match(lost[0].message, /message 0 \(system\)/);
  assert.equal(r.summary.train.documents, 2);
  const f = await prepareDataset(opts(dir, data, { foldSystemIntoUser: true }));
  assert.equal(f.summary.train.documents, 3);
  const texts = await decodeDocs(dir, readShard(f.trainPath));
  assert.ok(texts.some((t) => t.includes('You are a geography tutor.')));
});

test('no usable rows: a DatasetError carrying the diagnostics', async () => {
  const { dir } = makeModelDir('llama3');
  const data = writeJsonl([{ foo: 1 }, { bar: 2 }]);
  const out = opts(dir, data);
  await assert.rejects(prepareDataset(out), (e: unknown) => {
    assert.ok(e instanceof DatasetError);
    assert.match(e.message, /no usable training rows/);
    assert.equal(e.diagnostics.length, 2);
    assert.equal(e.diagnostics[0].code, 'unknown-format');
    return true;
  });
  assert.ok(!fs.existsSync(path.join(out.outDir, 'train.bin')), 'no shard left behind');
  await assert.rejects(prepareDataset(opts(dir, path.join(tmpDir(), 'missing.jsonl'))), /dataset file not found/);
});

test('bad options are rejected by name', async () => {
  const { dir } = makeModelDir('llama3');
  const data = writeJsonl(chatRows(2));
  await assert.rejects(prepareDataset(opts(dir, data, { seqLen: 1 })), /invalid option seqLen/);
  await assert.rejects(prepareDataset(opts(dir, data, { evalSplit: 1.5 })), /invalid option evalSplit/);
  await assert.rejects(prepareDataset(opts(dir, data, { template: 'vicuna' as never })), /invalid option template/);
});

test('a model without a chat template: the fallback is used and reported', async () => {
  const { dir } = makeModelDir('none');
  const data = writeJsonl(chatRows(3));
  const r = await prepareDataset(opts(dir, data));
  assert.equal(r.summary.template!.source, 'alpaca');
  assert.equal(r.summary.template!.fallback, true);
  assert.equal(r.diagnostics.filter((d) => d.code === 'fallback-template').length, 1);
  const chosen = await prepareDataset(opts(dir, data, { template: 'chatml' }));
  assert.equal(chosen.summary.template!.source, 'chatml');
  assert.equal(chosen.diagnostics.filter((d) => d.code === 'fallback-template').length, 0);
});

test('CSV alpaca and text datasets prepare end to end', async () => {
  const { dir } = makeModelDir('mistral');
  const csv = path.join(tmpDir(), 'd.csv');
  fs.writeFileSync(csv, 'instruction,input,output\n"What is the capital of France?",,"Paris is the capital."\n"Say it, twice","Paris","Paris, Paris"\n');
  const r = await prepareDataset(opts(dir, csv));
  assert.equal(r.summary.files[0].kind, 'csv');
  assert.equal(r.summary.files[0].format, 'alpaca');
  const texts = await decodeDocs(dir, readShard(r.trainPath));
  assert.equal(texts[1], '<s>[INST] Say it, twice\n\nParis[/INST] Paris, Paris</s>');
  const text = writeJsonl([{ text: 'Paris is the capital.' }]);
  const t = await prepareDataset(opts(dir, text));
  const [doc] = docs(readShard(t.trainPath));
  assert.deepEqual(doc.mask.slice(1), doc.mask.slice(1).map(() => 1));
  assert.equal(t.summary.train.trainedTokens, doc.ids.length - 1);
});

test('cancellation stops preparation and leaves no shard', async () => {
  const { dir } = makeModelDir('llama3');
  const data = writeJsonl(chatRows(3000));
  const ac = new AbortController();
  const o = opts(dir, data, { signal: ac.signal, onProgress: (p) => p.rows > 0 && ac.abort() });
  await assert.rejects(prepareDataset(o), (e: unknown) => (e as Error).name === 'AbortError');
  assert.ok(!fs.existsSync(path.join(o.outDir, 'train.bin')));
  const leftovers = fs.existsSync(o.outDir) ? fs.readdirSync(o.outDir) : [];
  assert.deepEqual(leftovers, [], 'temporary files removed');
});

test('validateDataset without a model: reading, format and duplicate diagnostics, nothing written', async () => {
  const rows = [...chatRows(4), chatRows(4)[1], { messages: [{ role: 'user', content: 'q' }, { role: 'robot', content: 'a' }] }];
  const data = writeJsonl(rows);
  const r = await validateDataset(data);
  assert.ok(r.summary);
  assert.equal(r.summary!.rows.read, 6);
  assert.equal(r.summary!.rows.usable, 5);
  assert.deepEqual(r.diagnostics.map((d) => [d.code, d.line]), [
    ['duplicate-row', 5],
    ['unknown-role', 6],
  ]);
  const split = await validateDataset(writeJsonl(chatRows(20)), { evalSplit: 0.1 });
  assert.equal(split.summary!.rows.eval, 2);
  assert.equal(split.summary!.rows.train, 18);
  assert.deepEqual(split.diagnostics, []);
  const bad = await validateDataset(path.join(tmpDir(), 'nope.jsonl'));
  assert.equal(bad.summary, null);
  assert.equal(bad.diagnostics[0].code, 'file-not-found');
});

test('validateDataset with a model also reports over-length rows and template problems', async () => {
  const { dir } = makeModelDir('gemma');
  const data = writeJsonl([...chatRows(2), { messages: [{ role: 'system', content: 'S' }, ...CONVERSATION.slice(0, 2)] }]);
  const r = await validateDataset(data, { modelDir: dir, seqLen: 24 });
  const codes = r.diagnostics.map((d) => d.code).sort();
  assert.ok(codes.includes('template-error'));
  assert.ok(codes.includes('over-length'));
  const noModel = await validateDataset(data, { modelDir: path.join(tmpDir(), 'no-model') });
  assert.equal(noModel.diagnostics[noModel.diagnostics.length - 1].code, 'unusable-dataset');
  assert.match(noModel.diagnostics[noModel.diagnostics.length - 1].message, /model folder not found/);
});

test('previewRows: segments alternate masked/trained and rebuild the rendered text', async () => {
  const { dir } = makeModelDir('chatml');
  const data = writeJsonl([{ messages: CONVERSATION }, ...chatRows(5), { messages: [{ role: 'user', content: 'x' }, { role: 'user', content: 'y' }] }]);
  const rows = await previewRows({ data, modelDir: dir, n: 3 });
  assert.equal(rows.length, 3);
  const first = rows[0];
  assert.deepEqual(first.segments.filter((s) => s.trained).map((s) => s.text), ['Paris is the capital.<|im_end|>', 'About 2.1 million.<|im_end|>']);
  assert.ok(first.segments[0].text.startsWith('<|im_start|>system\nYou are Qwen'));
  for (let i = 1; i < first.segments.length; i++) assert.notEqual(first.segments[i].trained, first.segments[i - 1].trained);
  assert.equal(first.segments.reduce((n, s) => n + s.tokenIds.length, 0), first.tokens);
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  assert.equal(first.segments.map((s) => s.text).join(''), await tok.decode(first.segments.flatMap((s) => s.tokenIds), false));
  const short = await previewRows({ data, modelDir: dir, n: 1, seqLen: 8 });
  assert.equal(short[0].truncatedAt, 8);
});

test('previewRows keeps text exact around characters outside the BMP and inserted EOS tokens', async () => {
  const { dir } = makeModelDir('llama3', { template: "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}" });
  const msgs = [
    { role: 'user', content: 'Où est 😀 Paris?' },
    { role: 'assistant', content: 'En France 🇫🇷.' },
  ];
  const [row] = await previewRows({ data: writeJsonl([{ messages: msgs }]), modelDir: dir, n: 1 });
  assert.deepEqual(
    row.segments.map((s) => [s.trained, s.text]),
    [
      [false, '<|begin_of_text|>user: Où est 😀 Paris?\nassistant: '],
      [true, 'En France 🇫🇷.\n<|eot_id|>'],
    ],
  );
});
