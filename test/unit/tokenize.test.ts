import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModelTokenizer, resolveTemplate, ModelTokenizer } from '../../src/core/tokenize/modelTokenizer';
import { ExampleRenderer, RenderOptions } from '../../src/core/tokenize/render';
import { encodeRendered, TokenizedExample, utf16Index, codePointIndex, spanTokenRanges, spanTokenRangesFromOffsets } from '../../src/core/tokenize/encode';
import { Example } from '../../src/core/dataset/formats';
import { DatasetError } from '../../src/core/dataset/diagnostics';
import { CONVERSATION, makeModelDir, realTemplate, Style, templateFixture, tmpDir } from './datasetHelpers';

async function tokenizeWith(tok: ModelTokenizer, ex: Example, opts: Partial<RenderOptions> = {}, template: 'model' | 'chatml' | 'alpaca' = 'model'): Promise<TokenizedExample> {
  const { template: t } = resolveTemplate(tok, template);
  const r = new ExampleRenderer(
    t,
    { bosToken: tok.bosToken, eosToken: tok.eosToken, eosId: tok.eosId, hasDefaultPrefix: tok.defaultPrefixIds.length > 0, specialTokens: tok.specialTokens },
    { trainOn: 'completion', assistantTurns: 'all', foldSystemIntoUser: false, ...opts },
  );
  const res = r.render(ex);
  assert.ok(res.ok, res.ok ? '' : res.message);
  const [doc] = await encodeRendered(tok.tokenizer, [res.ok ? res.rendered : (undefined as never)], { prefixIds: tok.defaultPrefixIds, eosId: tok.eosId });
  return doc;
}

/** Decoded text of each maximal run of tokens with the given mask value. */
async function runs(tok: ModelTokenizer, doc: TokenizedExample, value: 0 | 1): Promise<string[]> {
  const out: string[] = [];
  let i = 0;
  while (i < doc.ids.length) {
    if (doc.mask[i] !== value) {
      i++;
      continue;
    }
    let j = i;
    while (j < doc.ids.length && doc.mask[j] === value) j++;
    out.push(await tok.tokenizer.decode(Array.from(doc.ids.subarray(i, j)), false));
    i = j;
  }
  return out;
}

const EXPECTED: Record<Exclude<Style, 'none'>, { answers: string[]; bos: string | null }> = {
  llama3: { answers: ['Paris is the capital.<|eot_id|>', 'About 2.1 million.<|eot_id|>'], bos: '<|begin_of_text|>' },
  chatml: { answers: ['Paris is the capital.<|im_end|>', 'About 2.1 million.<|im_end|>'], bos: null },
  mistral: { answers: [' Paris is the capital.</s>', ' About 2.1 million.</s>'], bos: '<s>' },
  gemma: { answers: ['Paris is the capital.<end_of_turn>', 'About 2.1 million.<end_of_turn>'], bos: '<bos>' },
};

for (const style of ['llama3', 'chatml', 'mistral', 'gemma'] as const) {
  test(`${style}: prompt tokens get 0, answer tokens (with end of turn) get 1, one BOS`, async () => {
    const { dir } = makeModelDir(style);
    const tok = await loadModelTokenizer(dir);
    const doc = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION });
    assert.deepEqual(await runs(tok, doc, 1), EXPECTED[style].answers);
    const masked = (await runs(tok, doc, 0)).join('|');
    for (const m of CONVERSATION.filter((x) => x.role === 'user')) assert.ok(masked.includes(m.content), `${m.content} is masked`);
    for (const m of CONVERSATION.filter((x) => x.role === 'assistant')) assert.ok(!masked.includes(m.content), `${m.content} is not masked`);
    const bos = EXPECTED[style].bos;
    const ids = Array.from(doc.ids);
    if (bos) {
      const bosId = tok.tokenizer.tokenToId(bos)!;
      assert.equal(ids[0], bosId, 'starts with BOS');
      assert.equal(ids.filter((x) => x === bosId).length, 1, 'exactly one BOS (the template writes it; the tokenizer must not add another)');
    } else assert.equal(tok.defaultPrefixIds.length, 0);
    // The answer masks end exactly with the end-of-turn token.
    const lastTrained = ids.length - 1 - [...doc.mask].reverse().indexOf(1);
    assert.equal(tok.tokenizer.idToToken(ids[lastTrained]), EXPECTED[style].answers[1].match(/(<[^>]+>)$/)![1]);
  });
}

test('the tokenizer adds BOS when the template does not write it (ChatML template on a Llama 3 tokenizer)', async () => {
  const { dir } = makeModelDir('llama3');
  const tok = await loadModelTokenizer(dir);
  assert.deepEqual(tok.defaultPrefixIds, [tok.bosId]);
  const doc = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION.slice(0, 2) }, {}, 'chatml');
  assert.equal(doc.ids[0], tok.bosId);
  assert.equal(Array.from(doc.ids).filter((x) => x === tok.bosId).length, 1);
  // ChatML's <|im_end|> is not a token of this vocabulary: the answer is not closed by a
  // special token, so EOS is inserted after it and trained.
  assert.deepEqual(await runs(tok, doc, 1), ['Paris is the capital.<|im_end|>\n<|eot_id|>']);
});

test('plain text and completion rows: BOS as the tokenizer adds it, EOS appended and trained', async () => {
  const { dir } = makeModelDir('mistral');
  const tok = await loadModelTokenizer(dir);
  const t = await tokenizeWith(tok, { kind: 'text', text: 'Paris is the capital.' });
  assert.equal(t.ids[0], tok.bosId);
  assert.equal(t.ids[t.ids.length - 1], tok.eosId);
  assert.equal(t.mask[0], 0, 'BOS is context, never a target');
  assert.ok(t.mask.subarray(1).every((m) => m === 1));
  const c = await tokenizeWith(tok, { kind: 'completion', prompt: 'What is the capital of France?', completion: ' Paris is the capital.' });
  assert.deepEqual(await runs(tok, c, 1), [' Paris is the capital.</s>']);
  assert.deepEqual(await runs(tok, c, 0), ['<s>What is the capital of France?']);
  const all = await tokenizeWith(tok, { kind: 'completion', prompt: 'Q', completion: ' A' }, { trainOn: 'all' });
  assert.ok(all.mask.subarray(1).every((m) => m === 1));
});

test('masks stay aligned after characters outside the BMP (emoji) and accents', async () => {
  const { dir } = makeModelDir('chatml');
  const tok = await loadModelTokenizer(dir);
  const msgs = [
    { role: 'user' as const, content: 'Dïd yöu sëe 😀😀 thé capital?' },
    { role: 'assistant' as const, content: 'Oui 🇫🇷, Paris.' },
  ];
  const doc = await tokenizeWith(tok, { kind: 'chat', messages: msgs });
  assert.deepEqual(await runs(tok, doc, 1), ['Oui 🇫🇷, Paris.<|im_end|>']);
});

test('utf16Index and codePointIndex are inverse across surrogate pairs', () => {
  const s = 'a😀b😀c';
  assert.equal(codePointIndex(s, 3), 2);
  assert.equal(utf16Index(s, 2), 3);
  assert.equal(utf16Index(s, 4), 6);
  for (let cp = 0; cp <= 5; cp++) assert.equal(codePointIndex(s, utf16Index(s, cp)), cp);
});

test('model folder without tokenizer.json: a clear error naming the folder', async () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'config.json'), '{}');
  await assert.rejects(loadModelTokenizer(dir), (e: unknown) => {
    assert.ok(e instanceof DatasetError);
    assert.match(e.message, /no tokenizer\.json/);
    assert.ok(e.message.includes(dir));
    return true;
  });
  fs.writeFileSync(path.join(dir, 'tokenizer.model'), 'x');
  await assert.rejects(loadModelTokenizer(dir), /SentencePiece/);
  await assert.rejects(loadModelTokenizer(path.join(dir, 'nope')), /model folder not found/);
});

test('broken tokenizer_config.json is reported with line and column', async () => {
  const { dir } = makeModelDir('llama3');
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{\n  "bos_token": "<s>",\n  oops\n}');
  await assert.rejects(loadModelTokenizer(dir), /tokenizer_config\.json:3:3: tokenizer_config\.json is not valid JSON/);
});

test('config.json vocab_size bounds the shard vocabulary; special tokens are read', async () => {
  const { dir, info } = makeModelDir('gemma');
  const cfg = path.join(dir, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({ vocab_size: info.vocabSize + 64 }));
  const tok = await loadModelTokenizer(dir);
  assert.equal(tok.vocabSize, info.vocabSize + 64);
  assert.equal(tok.bosToken, '<bos>');
  assert.equal(tok.eosToken, '<eos>');
  assert.ok(tok.specialTokens.has('<end_of_turn>'));
  assert.ok(tok.modelTemplate && tok.modelTemplate.source.includes('System role not supported'));
});

test('a model without a chat template falls back to a built-in one (reported by the caller)', async () => {
  const { dir } = makeModelDir('none');
  const tok = await loadModelTokenizer(dir);
  const r = resolveTemplate(tok, 'model');
  assert.equal(r.fallbackFrom, 'model');
  assert.equal(r.template.info.source, 'alpaca');
  const doc = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION.slice(0, 2) });
  assert.deepEqual(await runs(tok, doc, 1), ['Paris is the capital.<|endoftext|>']);
});

test('a chat template that does not parse is a clear error naming tokenizer_config.json', async () => {
  const { dir } = makeModelDir('chatml', { template: '{% if messages %}unclosed' });
  const tok = await loadModelTokenizer(dir);
  assert.throws(() => resolveTemplate(tok, 'model'), /tokenizer_config\.json: chat_template: the chat template does not parse/);
  assert.doesNotThrow(() => resolveTemplate(tok, 'chatml'));
});

test('span-to-token lookup by boundaries matches the per-token offsets', async () => {
  const { dir } = makeModelDir('llama3');
  const tok = await loadModelTokenizer(dir);
  const texts = ['Hé 😀x<|eot_id|>abc and more', 'Paris is the capital.<|eot_id|>', 'ünïcödé   spaces\n\nnewlines 🇫🇷 flags'];
  for (const text of texts) {
    const enc = await tok.tokenizer.encode(text, null, { addSpecialTokens: false });
    const n = enc.getLength();
    const cps = [...text].length;
    for (let a = 0; a < cps; a += 2) {
      for (let b = a + 1; b <= cps; b += 3) {
        assert.deepEqual(spanTokenRanges(enc, n, [[a, b]]), spanTokenRangesFromOffsets(enc, n, [[a, b]]), `${JSON.stringify(text)} [${a}, ${b})`);
      }
    }
  }
});

test('Llama 3.1 (date header, tool branches): the system header is masked, answers trained, one BOS', async () => {
  const { dir } = makeModelDir('llama3', { template: templateFixture('llama3_1.jinja') });
  const tok = await loadModelTokenizer(dir);
  const doc = await tokenizeWith(tok, { kind: 'chat', messages: [{ role: 'system', content: 'Answer briefly.' }, ...CONVERSATION] });
  assert.deepEqual(await runs(tok, doc, 1), EXPECTED.llama3.answers);
  const masked = (await runs(tok, doc, 0))[0];
  assert.ok(masked.startsWith('<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nAnswer briefly.<|eot_id|>'));
  assert.equal(Array.from(doc.ids).filter((x) => x === tok.bosId).length, 1);
});

test('truncation and padding configured in tokenizer.json are switched off', async () => {
  const { dir } = makeModelDir('chatml');
  const file = path.join(dir, 'tokenizer.json');
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  json.truncation = { direction: 'Right', max_length: 8, strategy: 'LongestFirst', stride: 0 };
  json.padding = { strategy: { Fixed: 1024 }, direction: 'Right', pad_to_multiple_of: null, pad_id: 0, pad_type_id: 0, pad_token: '<|endoftext|>' };
  fs.writeFileSync(file, JSON.stringify(json));
  const tok = await loadModelTokenizer(dir);
  const doc = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION });
  assert.ok(doc.ids.length > 8 && doc.ids.length < 1024, `${doc.ids.length} tokens: neither truncated to 8 nor padded to 1024`);
  assert.deepEqual(await runs(tok, doc, 1), EXPECTED.chatml.answers);
});

test('a chat template saved beside the config (chat_template.jinja / chat_template.json) is found', async () => {
  const { dir } = makeModelDir('gemma', { template: null });
  assert.equal((await loadModelTokenizer(dir)).modelTemplate, null);
  fs.writeFileSync(path.join(dir, 'chat_template.json'), JSON.stringify({ chat_template: realTemplate('gemma') }));
  assert.equal((await loadModelTokenizer(dir)).modelTemplate!.source, realTemplate('gemma'));
  fs.writeFileSync(path.join(dir, 'chat_template.jinja'), realTemplate('chatml'));
  const tok = await loadModelTokenizer(dir);
  assert.equal(tok.modelTemplate!.source, realTemplate('chatml'));
  assert.equal(resolveTemplate(tok, 'model').fallbackFrom, undefined);
});

test('token masks for the options: last assistant turn only, and everything', async () => {
  const { dir } = makeModelDir('gemma');
  const tok = await loadModelTokenizer(dir);
  const last = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION }, { assistantTurns: 'last' });
  assert.deepEqual(await runs(tok, last, 1), [EXPECTED.gemma.answers[1]]);
  const all = await tokenizeWith(tok, { kind: 'chat', messages: CONVERSATION }, { trainOn: 'all' });
  assert.deepEqual(Array.from(all.mask.subarray(1)), new Array(all.mask.length - 1).fill(1));
  assert.deepEqual(Array.from(all.ids), Array.from(last.ids), 'the options change the mask, never the tokens');
});
