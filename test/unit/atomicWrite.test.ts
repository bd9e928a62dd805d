import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { writeFileAtomic, writeFileAtomicWith, writeJsonAtomic } from '../../src/core/util/atomicWrite';

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'atomic-'));
}

test('atomic write: creates folders, writes text, bytes and JSON, leaves no temporary file', () => {
  const dir = tempDir();
  const file = path.join(dir, 'a', 'b', 'out.json');
  writeJsonAtomic(file, { x: 1 });
  assert.equal(fs.readFileSync(file, 'utf8'), '{\n  "x": 1\n}\n');
  writeFileAtomic(file, new Uint8Array([104, 105]));
  assert.equal(fs.readFileSync(file, 'utf8'), 'hi');
  assert.deepEqual(fs.readdirSync(path.dirname(file)), ['out.json']);
});

test('atomic write: a writer that throws leaves the old file intact and removes its temporary file', () => {
  const dir = tempDir();
  const file = path.join(dir, 'model.bin');
  writeFileAtomic(file, 'old contents');
  assert.throws(
    () => writeFileAtomicWith(file, (fd) => {
      fs.writeSync(fd, 'half of the new');
      throw new Error('disk full');
    }),
    /disk full/,
  );
  assert.equal(fs.readFileSync(file, 'utf8'), 'old contents');
  assert.deepEqual(fs.readdirSync(dir), ['model.bin']);
});
