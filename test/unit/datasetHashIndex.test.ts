import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HashIndex, HashList, hash53 } from '../../src/core/dataset/hashIndex';

test('HashIndex keeps the first row of each 48-bit hash across growth', () => {
  const idx = new HashIndex(4);
  const ref = new Map<number, number>();
  let x = 987654321;
  for (let row = 1; row <= 50000; row++) {
    x = (x * 48271) % 2147483647;
    // Repeat some hashes, and use values above 2^32 so that the low bits collide often.
    const h = row % 7 === 0 ? [...ref.keys()][row % ref.size] : x * 65536 + (row % 65536);
    const stored = idx.add(h, row);
    if (!ref.has(h)) ref.set(h, row);
    assert.equal(stored, ref.get(h));
  }
  assert.equal(idx.size, ref.size);
  for (const [h, row] of ref) assert.equal(idx.get(h), row);
  assert.equal(idx.get(123), undefined);
  assert.equal(idx.has(2 ** 47 + 5), false);
  assert.equal(idx.add(0, 9), 9, 'zero is a valid hash');
  assert.equal(idx.get(0), 9);
});

test('HashList sorts and removes repeats', () => {
  const l = new HashList();
  for (const v of [5, 3, 2 ** 40, 3, 1, 5, 2 ** 40]) l.push(v);
  for (let i = 0; i < 3000; i++) l.push(7);
  assert.deepEqual(Array.from(l.sortedUnique()), [1, 3, 5, 7, 2 ** 40]);
});

test('hash53: deterministic, seed-dependent, 53-bit, evenly spread', () => {
  assert.equal(hash53('abc', 1), hash53('abc', 1));
  assert.notEqual(hash53('abc', 1), hash53('abc', 2));
  assert.notEqual(hash53('abc', 1), hash53('abd', 1));
  const n = 20000;
  const buckets = new Array(10).fill(0);
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const h = hash53(`{"text":"row ${i}"}`, 42);
    assert.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 53);
    seen.add(h);
    buckets[Math.floor((h / 2 ** 53) * 10)]++;
  }
  assert.equal(seen.size, n, 'no collisions among 20k similar strings');
  for (const b of buckets) assert.ok(Math.abs(b - n / 10) < n / 10 * 0.1, `bucket ${b} within 10% of ${n / 10}`);
});
