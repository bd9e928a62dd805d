import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  SafetensorsError, readModelWeights, readSafetensorsHeader, readTensorBytes, readTensorF32, writeSafetensors,
} from '../../src/core/model/safetensors';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/core/model/dtype';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'st-test-'));
}

function rawFile(file: string, header: unknown, dataBytes: number, headerLenOverride?: bigint): void {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
}

test('safetensors: write then read back header and values in F32, BF16, F16', () => {
  const dir = tmp();
  const file = path.join(dir, 'a.safetensors');
  const values = new Float32Array([0, 1, -2.5, 0.1, 3.14159, -0.02, 65504, 1e-3]);
  writeSafetensors(file, [
    { name: 'x.f32', dtype: 'F32', shape: [2, 4], data: values },
    { name: 'x.bf16', dtype: 'BF16', shape: [8], data: values },
    { name: 'x.f16', dtype: 'F16', shape: [4, 2], data: () => values },
    { name: 'ids', dtype: 'I32', shape: [2], data: new Uint8Array([1, 0, 0, 0, 2, 0, 0, 0]) },
  ], { format: 'pt', note: 'hello' });
  const h = readSafetensorsHeader(file);
  assert.equal((h.dataStart - 8) % 8, 0, 'header padded to 8 bytes');
  assert.deepEqual(h.metadata, { format: 'pt', note: 'hello' });
  assert.deepEqual(h.tensors.map((t) => [t.name, t.dtype, t.shape]), [
    ['x.f32', 'F32', [2, 4]], ['x.bf16', 'BF16', [8]], ['x.f16', 'F16', [4, 2]], ['ids', 'I32', [2]],
  ]);
  assert.deepEqual(Array.from(readTensorF32(h, 'x.f32')), Array.from(values));
  const bf = readTensorF32(h, 'x.bf16');
  const hf = readTensorF32(h, 'x.f16');
  values.forEach((v, i) => {
    assert.ok(Math.abs(bf[i] - v) <= Math.abs(v) * 2 ** -8 + 1e-30, `bf16 ${v} -> ${bf[i]}`);
    assert.ok(Math.abs(hf[i] - v) <= Math.abs(v) * 2 ** -11 + 2 ** -24, `f16 ${v} -> ${hf[i]}`);
  });
  assert.deepEqual(Array.from(readTensorBytes(h, 'ids')), [1, 0, 0, 0, 2, 0, 0, 0]);
  assert.deepEqual(fs.readdirSync(dir), ['a.safetensors'], 'no temp file left behind');
});

test('dtype: bf16 rounds to nearest even and f16 handles subnormals, overflow and NaN', () => {
  assert.equal(f32ToBf16(1), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down to 1.0)
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80);
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(1e6), 0x7c00);
  assert.equal(f16ToF32(f32ToF16(2 ** -24)), 2 ** -24);
  assert.equal(f16ToF32(f32ToF16(-2)), -2);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
});

test('safetensors: rejects bad headers with the file and tensor named', () => {
  const dir = tmp();
  const f = path.join(dir, 'bad.safetensors');
  const cases: [unknown, number, RegExp, bigint?][] = [
    [{ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } }, 8, /w.*data ends at byte 16.*truncated/],
    [{ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, 16, /w.*needs 16 bytes but data_offsets span 12/],
    [{ w: { dtype: 'Q4', shape: [2], data_offsets: [0, 2] } }, 2, /unknown dtype "Q4"/],
    [{ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, 0, /shape .* non-negative/],
    [{ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12, /overlaps/],
    [{ w: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 4, /header length .* does not fit/, 1n << 40n],
  ];
  for (const [header, bytes, re, lenOverride] of cases) {
    rawFile(f, header, bytes, lenOverride);
    assert.throws(() => readSafetensorsHeader(f), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError);
      assert.match(e.message, re);
      assert.ok(e.message.startsWith(f), 'message names the file');
      return true;
    });
  }
  fs.writeFileSync(f, Buffer.from([1, 2, 3]));
  assert.throws(() => readSafetensorsHeader(f), /too short/);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(5n);
  fs.writeFileSync(f, Buffer.concat([len, Buffer.from('{nope')]));
  assert.throws(() => readSafetensorsHeader(f), /not valid JSON/);
  assert.throws(() => readSafetensorsHeader(path.join(dir, 'missing.safetensors')), /file not found/);
});

test('safetensors: model weights from a sharded index, and index/shard disagreements', () => {
  const dir = tmp();
  writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), [{ name: 'a', dtype: 'F32', shape: [2], data: new Float32Array(2) }]);
  writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), [{ name: 'b', dtype: 'BF16', shape: [3], data: new Float32Array(3) }]);
  const index = { metadata: { total_size: 14 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } };
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  const w = readModelWeights(dir);
  assert.equal(w.totalBytes, 14);
  assert.equal(w.tensors.get('b')!.dtype, 'BF16');
  assert.equal(path.basename(w.tensors.get('a')!.file), 'model-00001-of-00002.safetensors');

  index.weight_map = { ...index.weight_map, c: 'model-00002-of-00002.safetensors' } as typeof index.weight_map;
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  assert.throws(() => readModelWeights(dir), /index lists "c"/);
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '../etc/passwd' } }));
  assert.throws(() => readModelWeights(dir), /not a file name in the model folder/);
  const empty = tmp();
  assert.throws(() => readModelWeights(empty), /no model.safetensors/);
  writeSafetensors(path.join(empty, 'consolidated.safetensors'), [{ name: 'layers.0.attention.wq.weight', dtype: 'F32', shape: [1], data: new Float32Array(1) }]);
  assert.throws(() => readModelWeights(empty), /Found consolidated\.safetensors, which is not the Hugging Face transformers layout/);
});
