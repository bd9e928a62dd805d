// The playground's core: ONNX pair preparation (merge through the process layer, export,
// cache), the chat template on the prompt, streaming generation with EOS / max-token stops,
// and pinned prompts. Tiny generated models; a stand-in runtime does the merge in TypeScript,
// and the real `lora-runtime merge` is used where the binary has it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { OnnxGenerator } from '../../src/core/export/onnxGenerate';
import { IncrementalDecoder, PlaygroundError, PlaygroundSession, preparePlayground, readPinnedPrompts, runPinnedForRun, runPinnedPrompts, PINNED_PROMPTS_FILE } from '../../src/core/playground';
import { runtimeWith, writeRandomAdapter } from './exportReference';
import { standInCalls, writeMergeStandIn } from './playgroundHelpers';

const dirs: string[] = [];
function tmp(tag: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `lora-playground-${tag}-`));
  dirs.push(d);
  return d;
}
test.after(async () => {
  if (shared) await (await shared).session.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

interface Fixture { root: string; modelDir: string; adapterDir: string; cacheDir: string; runtime: string }

function fixture(tag: string): Fixture {
  const root = tmp(tag);
  const modelDir = path.join(root, 'model');
  writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
  const runDir = path.join(root, 'run');
  const adapterDir = path.join(runDir, 'adapter');
  writeRandomAdapter(adapterDir, modelDir, { r: 4, alpha: 8, seed: 3 });
  return { root, modelDir, adapterDir, cacheDir: path.join(runDir, 'playground'), runtime: writeMergeStandIn(path.join(root, 'lora-runtime')) };
}

/** Probability of the greedy first token: differs between two graphs whose logits differ. */
async function firstTokenProbability(onnxDir: string, ids: number[]): Promise<number> {
  const g = await OnnxGenerator.load(onnxDir);
  try {
    for await (const t of g.generate(ids, { maxTokens: 1, stopTokens: [] })) return t.probability;
    throw new Error('no token');
  } finally {
    await g.release();
  }
}

let shared: Promise<{ f: Fixture; session: PlaygroundSession }> | null = null;
function sharedSession(): Promise<{ f: Fixture; session: PlaygroundSession }> {
  shared ??= (async () => {
    const f = fixture('session');
    const p = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: f.runtime });
    const session = await PlaygroundSession.open({ modelDir: f.modelDir, baseOnnx: p.baseOnnx, adapterOnnx: p.adapterOnnx, preferCuda: true });
    return { f, session };
  })();
  return shared;
}

test('preparePlayground merges through the runtime, exports both graphs, and reuses them while nothing changed', async () => {
  const f = fixture('prepare');
  const phases: string[] = [];
  const messages: string[] = [];
  const p = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: f.runtime, onProgress: (e) => {
    if (phases.at(-1) !== e.phase) phases.push(e.phase);
    messages.push(e.message);
  } });
  assert.deepEqual(phases, ['export-base', 'merge', 'export-adapter']);
  assert.ok(messages.includes('Exporting the base model to ONNX: Layer 2 of 2'), 'the ONNX writer\'s layers are reported');
  assert.deepEqual(p.rebuilt, { merged: true, base: true, adapter: true });
  assert.ok(fs.existsSync(path.join(p.baseOnnx, 'model.onnx')));
  assert.ok(fs.existsSync(path.join(p.adapterOnnx, 'model.onnx')));
  const calls = standInCalls(f.runtime);
  assert.equal(calls.length, 1);
  assert.match(calls[0]!, /^merge --model .* --adapter .* --out .* --dtype f32$/);
  assert.deepEqual(fs.readdirSync(f.cacheDir).filter((n) => n.includes('.tmp-')), [], 'no temporary folders left');

  const ids = [1, 5, 9, 14, 3];
  const pb = await firstTokenProbability(p.baseOnnx, ids);
  const pa = await firstTokenProbability(p.adapterOnnx, ids);
  assert.notEqual(pa, pb, 'the adapter column runs the merged weights');

  const again = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: f.runtime, onProgress: (e) => phases.push(e.phase) });
  assert.deepEqual(again.rebuilt, { merged: false, base: false, adapter: false });
  assert.equal(phases[phases.length - 1], 'cached');
  assert.equal(standInCalls(f.runtime).length, 1, 'no second merge');

  // A retrained adapter (new file contents and mtime) is merged and exported again; the base is kept.
  writeRandomAdapter(f.adapterDir, f.modelDir, { r: 4, alpha: 8, seed: 4 });
  const future = new Date(Date.now() + 5000);
  fs.utimesSync(path.join(f.adapterDir, 'adapter_model.safetensors'), future, future);
  const third = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: f.runtime });
  assert.deepEqual(third.rebuilt, { merged: true, base: false, adapter: true });
  assert.equal(standInCalls(f.runtime).length, 2);
  assert.notEqual(await firstTokenProbability(third.adapterOnnx, ids), pa);
});

test('preparePlayground reports a failed merge with the runtime\'s message, and a missing adapter by folder', async () => {
  const f = fixture('fail');
  const failing = path.join(f.root, 'failing-runtime');
  fs.writeFileSync(failing, `#!/bin/sh\necho '{"v":1,"event":"error","code":"bad_input","message":"adapter_config.json: r must be positive","hint":"retrain"}'\nexit 2\n`, { mode: 0o755 });
  await assert.rejects(preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: failing }),
    (e: Error) => e instanceof PlaygroundError && /merge failed \(exit 2\): adapter_config\.json: r must be positive \(retrain\)/.test(e.message));
  assert.ok(!fs.existsSync(path.join(f.cacheDir, 'merged')), 'no merged folder after a failure');
  await assert.rejects(preparePlayground({ modelDir: f.modelDir, adapterDir: path.join(f.root, 'nowhere'), cacheDir: f.cacheDir, runtimePath: f.runtime }),
    (e: Error) => e instanceof PlaygroundError && /nowhere has no adapter_model\.safetensors.*final adapter/.test(e.message));
  await assert.rejects(preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: path.join(f.root, 'missing-binary') }),
    (e: Error) => e instanceof PlaygroundError && /cannot start .*missing-binary.*runtimePath/.test(e.message));
});

test('the prompt goes through the model\'s chat template with the assistant turn opened', async () => {
  const { session } = await sharedSession();
  const rendered = session.renderPrompt('What is LoRA?', 'Be brief.');
  assert.match(rendered, /<\|start_header_id\|>system<\|end_header_id\|>\n\nBe brief\.<\|eot_id\|>/);
  assert.match(rendered, /<\|start_header_id\|>user<\|end_header_id\|>\n\nWhat is LoRA\?<\|eot_id\|>/);
  assert.ok(rendered.endsWith('<|start_header_id|>assistant<|end_header_id|>\n\n'), JSON.stringify(rendered.slice(-60)));
  const ids = await session.promptIds('What is LoRA?');
  const back = await session.tokenizer.tokenizer.decode(ids, false);
  assert.equal(back, session.renderPrompt('What is LoRA?'), 'the ids are the rendered template, BOS once');
  const eot = session.tokenizer.tokenizer.tokenToId('<|eot_id|>')!;
  assert.ok(session.stopTokens.includes(eot), 'end of turn stops generation');
  assert.ok(session.stopTokens.includes(session.tokenizer.eosId!), 'EOS stops generation');
  assert.equal(session.templateFallback, false);
});

test('both columns stream decoded text that adds up to the answer, up to max tokens', async () => {
  const { session } = await sharedSession();
  const streamed = { base: '', adapter: '' };
  const events: string[] = [];
  const r = await session.generate('Tell me a story', { temperature: 0, topP: 1, maxTokens: 12 }, {
    onText: (side, delta, stats) => {
      streamed[side] += delta;
      events.push(side);
      assert.ok(stats.tokens >= 1 && stats.tokens <= 12);
    },
  });
  for (const side of ['base', 'adapter'] as const) {
    assert.equal(streamed[side], r[side].text, `${side}: the deltas add up to the final text`);
    assert.ok(r[side].tokens > 0 && r[side].tokens <= 12);
    if (r[side].stopReason === 'max_tokens') assert.equal(r[side].tokens, 12);
    else assert.equal(r[side].stopReason, 'eos');
    assert.ok(r[side].tokensPerS >= 0 && Number.isFinite(r[side].tokensPerS));
  }
  assert.ok(events.includes('base') && events.includes('adapter'), 'both columns streamed');
  // Greedy and reproducible: the same prompt gives the same answer.
  const again = await session.generate('Tell me a story', { temperature: 0, topP: 1, maxTokens: 12 });
  assert.equal(again.base.text, r.base.text);
  assert.equal(again.adapter.text, r.adapter.text);
});

test('streamed text: characters split across byte-level tokens come out whole, and the pieces add up to the full decode', async () => {
  const { session } = await sharedSession();
  const tok = session.tokenizer.tokenizer;
  const sample = 'Größe 世界 🙂 and plain words, twice: 世界 🙂!';
  const ids = (await tok.encode(sample, null, { addSpecialTokens: false })).getIds();
  assert.ok(ids.length > [...sample].length / 2, 'the sample is split into many byte-level tokens');
  const dec = new IncrementalDecoder((x) => tok.decode(x, true));
  const pieces: string[] = [];
  for (const id of ids) pieces.push(await dec.push(id));
  pieces.push(await dec.finish());
  assert.equal(pieces.join(''), await tok.decode(ids, true));
  assert.ok(pieces.every((p) => !p.includes('\uFFFD')), 'no piece holds half a character');
  assert.ok(pieces.filter(Boolean).length > 5, 'text streams in many pieces');
  const cut = new IncrementalDecoder((x) => tok.decode(x, true));
  const emoji = (await tok.encode('🙂', null, { addSpecialTokens: false })).getIds();
  assert.ok(emoji.length > 1, 'the emoji spans several byte tokens');
  assert.equal(await cut.push(emoji[0]!), '', 'half a character is held back');
});

test('generation stops at the first stop token and counts only the tokens before it', async () => {
  const { session } = await sharedSession();
  const ids = await session.promptIds('Count with me');
  const seen: number[] = [];
  const free = await session.generateSide('base', ids, { temperature: 0, topP: 1, maxTokens: 8 });
  // The stream's token ids, recovered by generating once more with a probe on the iterator.
  const g = (session as unknown as { generators: { base: OnnxGenerator } }).generators.base;
  for await (const t of g.generate(ids, { maxTokens: free.tokens, stopTokens: session.stopTokens })) seen.push(t.token);
  assert.equal(seen.length, free.tokens);
  assert.ok(seen.length >= 3, `the tiny model generated ${seen.length} tokens before a stop token`);
  const k = seen.indexOf(seen[2]!);
  const stopped = await session.generateSide('base', ids, { temperature: 0, topP: 1, maxTokens: 8, stopTokens: [seen[2]!] });
  assert.equal(stopped.tokens, k);
  assert.equal(stopped.stopReason, 'eos');
  assert.equal(stopped.text, await session.tokenizer.tokenizer.decode(seen.slice(0, k), true));
  const cancelled = await session.generateSide('adapter', ids, { temperature: 0.8, topP: 0.9, maxTokens: 8 }, {}, () => true);
  assert.equal(cancelled.stopReason, 'cancelled');
  assert.equal(cancelled.tokens, 0);
});

test('pinned prompts: read from the workspace file, both answers saved beside the run', async () => {
  const { f, session } = await sharedSession();
  const ws = tmp('workspace');
  assert.deepEqual(readPinnedPrompts(ws), [], 'no file: no pinned prompts');
  fs.mkdirSync(path.join(ws, '.lora-studio'));
  const file = path.join(ws, PINNED_PROMPTS_FILE);
  fs.writeFileSync(file, '[\n  "first",\n  "second"\n  "third"\n]\n');
  assert.throws(() => readPinnedPrompts(ws), (e: Error) => e instanceof PlaygroundError && e.message.includes(`${file}:4:`) && /not valid JSON/.test(e.message));
  fs.writeFileSync(file, '["ok", 3]');
  assert.throws(() => readPinnedPrompts(ws), /item \[1\] is not a non-empty string/);
  fs.writeFileSync(file, '{"prompts": []}');
  assert.throws(() => readPinnedPrompts(ws), /expected an array of prompt strings, found object/);
  fs.writeFileSync(file, JSON.stringify(['Say hello', 'Name a colour']));
  const prompts = readPinnedPrompts(ws);
  assert.deepEqual(prompts, ['Say hello', 'Name a colour']);

  const runDir = path.dirname(f.adapterDir);
  const seen: number[] = [];
  const r = await runPinnedPrompts({ session, prompts, runDir, adapterDir: f.adapterDir, settings: { temperature: 0, topP: 1, maxTokens: 6 }, onPrompt: (i) => seen.push(i) });
  assert.deepEqual(seen, [0, 1]);
  assert.equal(r.file, path.join(runDir, 'playground', 'pinned-outputs.json'));
  const saved = JSON.parse(fs.readFileSync(r.file, 'utf8'));
  assert.equal(saved.v, 1);
  assert.equal(saved.adapter, path.resolve(f.adapterDir));
  assert.deepEqual(saved.outputs.map((o: { prompt: string }) => o.prompt), prompts);
  const direct = await session.generate('Say hello', { temperature: 0, topP: 1, maxTokens: 6, seed: 0 });
  assert.equal(saved.outputs[0].base.text, direct.base.text);
  assert.equal(saved.outputs[0].adapter.text, direct.adapter.text);
  assert.ok(saved.outputs.every((o: { base: { tokens: number }; adapter: { tokens: number } }) => o.base.tokens > 0 && o.adapter.tokens > 0));
});

test('runPinnedForRun: a finished run folder answers the workspace\'s pinned prompts without a playground open', async () => {
  const f = fixture('pinned-run');
  const runDir = path.dirname(f.adapterDir);
  const ws = tmp('pinned-ws');
  assert.equal(await runPinnedForRun({ runDir, workspaceDir: ws, runtimePath: f.runtime }), null, 'no pinned prompts: nothing runs');
  assert.equal(standInCalls(f.runtime).length, 0, 'and nothing is merged');
  fs.mkdirSync(path.join(ws, '.lora-studio'));
  fs.writeFileSync(path.join(ws, PINNED_PROMPTS_FILE), JSON.stringify(['One', 'Two', 'Three']));
  await assert.rejects(runPinnedForRun({ runDir, workspaceDir: ws, runtimePath: f.runtime }), /run\.json: field "model" is missing/);
  fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ v: 1, model: f.modelDir }));
  const progress: string[] = [];
  const r = await runPinnedForRun({ runDir, workspaceDir: ws, runtimePath: f.runtime, settings: { temperature: 0, topP: 1, maxTokens: 4 }, onProgress: (m) => progress.push(m) });
  assert.ok(r);
  assert.equal(r.file, path.join(runDir, 'playground', 'pinned-outputs.json'));
  assert.deepEqual(JSON.parse(fs.readFileSync(r.file, 'utf8')).outputs.map((o: { prompt: string }) => o.prompt), ['One', 'Two', 'Three']);
  assert.ok(progress.includes('Pinned prompt 3/3'), progress.join(' | '));
});

const mergeCmd = runtimeWith('merge');

test('with the real lora-runtime merge: the adapter column differs from the base and equals the TypeScript merge', { skip: mergeCmd.skip }, async () => {
  const f = fixture('runtime');
  const p = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: f.cacheDir, runtimePath: mergeCmd.runtime! });
  const ref = fixture('reference');
  const pr = await preparePlayground({ modelDir: f.modelDir, adapterDir: f.adapterDir, cacheDir: ref.cacheDir, runtimePath: ref.runtime });
  const ids = [2, 7, 11, 4];
  const runtimeP = await firstTokenProbability(p.adapterOnnx, ids);
  assert.notEqual(runtimeP, await firstTokenProbability(p.baseOnnx, ids));
  assert.ok(Math.abs(runtimeP - (await firstTokenProbability(pr.adapterOnnx, ids))) < 1e-4);
});
