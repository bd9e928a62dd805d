import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ShardFormatError, ShardWriter, readShard, shardCounts, writeShard } from '../../src/core/tokenize/shard';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'shard-test-'));
}

test('shard: writer produces the exact DESIGN.md byte layout', async () => {
  const file = path.join(tmp(), 'train.bin');
  const w = new ShardWriter(file, 1000);
  w.addDocument([5, 6, 7], [0, 1, 1]);
  w.addDocument([], []);
  w.addDocument([999, 1], [1, 1]);
  const counts = await w.finish();
  // targets: doc0 tokens 1,2 (mask 1, not first); doc2 token 1 (first token never a target)
  assert.deepEqual(counts, { documents: 3, tokens: 5, targets: 3 });
  const b = fs.readFileSync(file);
  assert.equal(b.toString('latin1', 0, 4), 'LSTK');
  assert.equal(b.readUInt32LE(4), 1);
  assert.equal(b.readUInt32LE(8), 1000);
  assert.equal(b.readBigUInt64LE(12), 3n);
  assert.equal(b.readBigUInt64LE(20), 5n);
  const offs = [0, 1, 2, 3].map((i) => Number(b.readBigUInt64LE(28 + i * 8)));
  assert.deepEqual(offs, [0, 3, 3, 5]);
  const toks = [0, 1, 2, 3, 4].map((i) => b.readUInt32LE(60 + i * 4));
  assert.deepEqual(toks, [5, 6, 7, 999, 1]);
  assert.deepEqual(Array.from(b.subarray(80)), [0, 1, 1, 1, 1]);
  assert.equal(b.length, 85);
  assert.deepEqual(fs.readdirSync(path.dirname(file)), ['train.bin'], 'temp files removed');
});

test('shard: round trip across buffer boundaries', async () => {
  const file = path.join(tmp(), 'big.bin');
  const w = new ShardWriter(file, 50000);
  const docs: number[][] = [];
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let d = 0; d < 300; d++) {
    const len = Math.floor(rnd() * 700);
    const doc = Array.from({ length: len }, () => Math.floor(rnd() * 50000));
    docs.push(doc);
    w.addDocument(doc, doc.map((_, i) => (i % 3 === 0 ? 0 : 1)));
  }
  const counts = await w.finish();
  const s = readShard(file);
  assert.equal(s.vocabSize, 50000);
  assert.deepEqual(Array.from(s.tokens), docs.flat());
  assert.deepEqual(shardCounts(s), counts);
  assert.equal(Number(s.offsets[s.offsets.length - 1]), docs.flat().length);
});

test('shard: writer rejects bad ids and masks, naming document and position', () => {
  const w = new ShardWriter(path.join(tmp(), 'x.bin'), 10);
  assert.throws(() => w.addDocument([1, 10], [0, 1]), /document 0, token 1: id 10 is outside the vocabulary \[0, 10\)/);
  assert.throws(() => w.addDocument([1, -1], [0, 1]), /id -1/);
  assert.throws(() => w.addDocument([1, 2], [0, 2]), /loss mask 2 is not 0 or 1/);
  assert.throws(() => w.addDocument([1, 2], [0]), /2 tokens but 1 mask values/);
  w.addDocument([1, 2], [0, 1]);
  assert.equal(w.documents, 1, 'rejected documents are not counted');
  w.abort();
  assert.throws(() => new ShardWriter(path.join(tmp(), 'y.bin'), 0), /positive 32-bit/);
});

test('shard: reader rejects every kind of corruption with the field named', async () => {
  const dir = tmp();
  const good = path.join(dir, 'good.bin');
  await writeShard(good, { vocabSize: 100, offsets: [0, 2, 4], tokens: new Uint32Array([1, 2, 3, 4]), lossMask: new Uint8Array([0, 1, 0, 1]) });
  const orig = fs.readFileSync(good);
  const bad = path.join(dir, 'bad.bin');
  const mutate = (f: (b: Buffer) => Buffer, re: RegExp, field: string) => {
    fs.writeFileSync(bad, f(Buffer.from(orig)));
    assert.throws(() => readShard(bad), (e: unknown) => {
      assert.ok(e instanceof ShardFormatError, String(e));
      assert.equal(e.field, field);
      assert.match(e.message, re);
      assert.ok(e.message.includes(bad));
      return true;
    });
  };
  mutate((b) => { b.write('GGUF', 0, 'latin1'); return b; }, /not a LoRA Studio token shard/, 'magic');
  mutate((b) => { b.writeUInt32LE(2, 4); return b; }, /version 2 is not supported/, 'version');
  mutate((b) => b.subarray(0, b.length - 1), /truncated/, 'size');
  mutate((b) => b.subarray(0, 10), /shorter than/, 'header');
  mutate((b) => { b.writeBigUInt64LE(3n, 28 + 16); return b; }, /is 3, must equal the token count 4/, 'offsets[2]');
  mutate((b) => { b.writeBigUInt64LE(5n, 28 + 8); b.writeBigUInt64LE(4n, 28 + 16); return b; }, /smaller than offsets\[1\]/, 'offsets[2]');
  mutate((b) => { b.writeUInt32LE(100, 52 + 8); return b; }, /id 100 is outside/, 'tokens[2]');
  mutate((b) => { b[b.length - 1] = 2; return b; }, /not 0 or 1/, 'loss_mask[3]');
  assert.throws(() => readShard(good, 50), /exceeds the model's 50/);
  assert.throws(() => readShard(path.join(dir, 'none.bin')), /not found/);
  assert.equal(readShard(good).tokens.length, 4);
});
