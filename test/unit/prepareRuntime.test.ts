// Round trip: a shard written by the TypeScript pipeline is read by the native runtime, and
// `lora-runtime eval` scores exactly the tokens the summary says are trained.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { prepareDataset } from '../../src/core/dataset/prepare';
import { CONVERSATION, tmpDir, writeJsonl } from './datasetHelpers';

function runtimeBinary(): string | null {
  const candidates = [process.env.LORA_RUNTIME, path.join(__dirname, '..', '..', '..', 'native-runtime', 'build', 'lora-runtime')];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  return null;
}

test('a TypeScript shard is read back by lora-runtime eval with the same target count', async (t) => {
  const bin = runtimeBinary();
  if (!bin) {
    t.skip('lora-runtime is not built (npm run build:native)');
    return;
  }
  const model = path.join(tmpDir('rt-model-'), 'model');
  writeTinyModel(model, { tokenizerStyle: 'llama3', hidden: 32, layers: 1, heads: 2, kvHeads: 1, seed: 3 });
  const rows = Array.from({ length: 12 }, (_, i) => ({
    messages: [
      { role: 'user', content: `${CONVERSATION[0].content} (${i})` },
      { role: 'assistant', content: `${CONVERSATION[1].content} (${i})` },
    ],
  }));
  const data = writeJsonl(rows);
  const res = await prepareDataset({ data, modelDir: model, outDir: path.join(tmpDir(), 'data'), seqLen: 128, evalSplit: 0.25, seed: 1 });
  const shards: Array<[string, number]> = [
    [res.trainPath, res.summary.train.trainedTokens],
    [res.evalPath!, res.summary.eval!.trainedTokens],
  ];
  for (const [shard, trained] of shards) {
    assert.ok(trained > 0);
    const r: SpawnSyncReturns<string> = spawnSync(bin, ['eval', '--model', model, '--data', shard, '--seq-len', '128', '--threads', '1'], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, `lora-runtime eval failed: ${r.stderr}${r.stdout}`);
    const line = r.stdout.trim().split('\n').filter((l: string) => l.startsWith('{')).pop()!;
    const out = JSON.parse(line) as { loss: number; tokens: number };
    assert.equal(out.tokens, trained, 'the runtime scores exactly the trained tokens');
    assert.ok(Number.isFinite(out.loss) && out.loss > 0, `loss ${out.loss}`);
  }
});
