// The token shard as the contract between TypeScript and the runtime: a shard written here is
// read by lora-runtime, which counts the same target tokens; a damaged one is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { ShardWriter } from '../../src/core/tokenize/shard';
import { bundledRuntimePath } from '../../src/core/runtime/locate';
import { Rng } from '../../src/core/fixtures/rng';

const runtime = process.env.LORA_STUDIO_RUNTIME || bundledRuntimePath(path.resolve(__dirname, '..', '..', '..'));
// A hung runtime fails the test instead of hanging the suite.
const RUNTIME_TIMEOUT_MS = 180_000;
const skip = fs.existsSync(runtime) ? false : `lora-runtime not built (${runtime}); run npm run build:native`;

test('shard round trip: lora-runtime eval reads a TypeScript shard and scores the same targets', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shard-rt-'));
  const model = path.join(dir, 'model');
  const info = writeTinyModel(model, { hidden: 32, layers: 1, heads: 2, kvHeads: 1 });
  const vocab = info.config.vocab_size as number;
  const shard = path.join(dir, 'eval.bin');
  const w = new ShardWriter(shard, vocab);
  const rng = new Rng(5);
  for (let d = 0; d < 25; d++) {
    const len = 2 + rng.int(50);
    const toks = Array.from({ length: len }, () => rng.int(vocab));
    const mask = toks.map((_, i) => (i > len / 3 ? 1 : 0));
    w.addDocument(toks, mask);
  }
  const counts = await w.finish();
  const r = spawnSync(runtime, ['eval', '--model', model, '--data', shard, '--seq-len', '64'], { encoding: 'utf8', timeout: RUNTIME_TIMEOUT_MS, killSignal: 'SIGKILL' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const res = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.equal(res.tokens, counts.targets);
  // an untrained random model predicts roughly uniformly: loss near ln(vocab)
  assert.ok(Math.abs(res.loss - Math.log(vocab)) < 0.5, `loss ${res.loss} vs ln V ${Math.log(vocab)}`);

  const bad = path.join(dir, 'bad.bin');
  const bytes = fs.readFileSync(shard);
  bytes.write('XXXX', 0, 'latin1');
  fs.writeFileSync(bad, bytes);
  const rb = spawnSync(runtime, ['eval', '--model', model, '--data', bad], { encoding: 'utf8', timeout: RUNTIME_TIMEOUT_MS, killSignal: 'SIGKILL' });
  assert.equal(rb.status, 2);
  const err = JSON.parse(rb.stdout.trim().split('\n')[0]);
  assert.equal(err.type, 'error');
  assert.match(`${err.message} ${err.hint ?? ''} ${err.field ?? ''}`, /magic|LoRA Studio/i);
});
