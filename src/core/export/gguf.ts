// A GGUF v3 writer (the llama.cpp / ggml file format), little-endian:
//   "GGUF" u32 version=3, u64 tensor_count, u64 kv_count,
//   kv_count x (string key, u32 value_type, value),
//   tensor_count x (string name, u32 n_dims, u64 ne[n_dims] (innermost first), u32 ggml_type, u64 offset),
//   zero padding to general.alignment, then each tensor's data at its (aligned) offset.
// Strings are u64 length + UTF-8 bytes. Tensor data is streamed from callbacks so a model is
// never held whole in memory; the file is written to a temporary name and renamed.
import { f32ToF16 } from '../model/dtype';
import { writeAll, writeFileAtomicWith } from '../util/atomicWrite';
import type { CancellationToken } from '../runtime/process';
import { throwIfCancelled } from './hfModel';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufValueType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

/** The ggml tensor types this writer emits. */
export enum GgmlType { F32 = 0, F16 = 1, Q8_0 = 8 }

/** Q8_0: blocks of 32 along the innermost dimension, each an f16 scale then 32 int8 values. */
export const Q8_0_BLOCK = 32;
const Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK;

export type GgufScalarType = Exclude<GgufValueType, GgufValueType.ARRAY>;

export type GgufValue =
  | { type: GgufScalarType; value: number | bigint | boolean | string }
  | { type: GgufValueType.ARRAY; itemType: GgufScalarType; value: readonly (number | bigint | boolean | string)[] };

export const gv = {
  u32: (v: number): GgufValue => ({ type: GgufValueType.UINT32, value: v }),
  i32: (v: number): GgufValue => ({ type: GgufValueType.INT32, value: v }),
  f32: (v: number): GgufValue => ({ type: GgufValueType.FLOAT32, value: v }),
  bool: (v: boolean): GgufValue => ({ type: GgufValueType.BOOL, value: v }),
  str: (v: string): GgufValue => ({ type: GgufValueType.STRING, value: v }),
  u64: (v: number | bigint): GgufValue => ({ type: GgufValueType.UINT64, value: v }),
  strs: (v: readonly string[]): GgufValue => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.STRING, value: v }),
  i32s: (v: readonly number[]): GgufValue => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.INT32, value: v }),
  f32s: (v: readonly number[]): GgufValue => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.FLOAT32, value: v }),
};

export interface GgufTensor {
  name: string;
  /** numpy / PyTorch order (outermost first), as in safetensors; written reversed as ggml ne. */
  shape: number[];
  type: GgmlType;
  /** fp32 values in row-major order of `shape`; called once, when the tensor is written. */
  data: () => Float32Array;
}

const SCALAR_SIZE: Partial<Record<GgufValueType, number>> = {
  [GgufValueType.UINT8]: 1, [GgufValueType.INT8]: 1, [GgufValueType.UINT16]: 2, [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4, [GgufValueType.INT32]: 4, [GgufValueType.FLOAT32]: 4, [GgufValueType.BOOL]: 1,
  [GgufValueType.UINT64]: 8, [GgufValueType.INT64]: 8, [GgufValueType.FLOAT64]: 8,
};

/** Growable little-endian byte buffer for the header. */
class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number) { this.ensure(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number) { this.ensure(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number) { this.ensure(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number) { this.ensure(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number) { this.ensure(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number) { this.ensure(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number) { this.ensure(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number) { this.ensure(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  u64(v: number | bigint) { this.ensure(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: number | bigint) { this.ensure(8); this.buf.writeBigInt64LE(BigInt(v), this.length); this.length += 8; }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.ensure(b.length);
    b.copy(this.buf, this.length);
    this.length += b.length;
  }
  pad(alignment: number) {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.ensure(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeScalar(w: ByteWriter, type: GgufScalarType, v: number | bigint | boolean | string, key: string): void {
  const bad = () => new Error(`GGUF metadata "${key}": value ${String(v)} does not fit type ${GgufValueType[type]}`);
  if (type === GgufValueType.STRING) {
    if (typeof v !== 'string') throw bad();
    w.str(v);
    return;
  }
  if (type === GgufValueType.BOOL) {
    if (typeof v !== 'boolean') throw bad();
    w.u8(v ? 1 : 0);
    return;
  }
  if (typeof v === 'string' || typeof v === 'boolean') throw bad();
  if (type === GgufValueType.FLOAT32) return w.f32(Number(v));
  if (type === GgufValueType.FLOAT64) return w.f64(Number(v));
  if (type === GgufValueType.UINT64) return w.u64(v);
  if (type === GgufValueType.INT64) return w.i64(v);
  const n = Number(v);
  if (!Number.isInteger(n)) throw bad();
  switch (type) {
    case GgufValueType.UINT8: return w.u8(n);
    case GgufValueType.INT8: return w.i8(n);
    case GgufValueType.UINT16: return w.u16(n);
    case GgufValueType.INT16: return w.i16(n);
    case GgufValueType.UINT32: return w.u32(n);
    case GgufValueType.INT32: return w.i32(n);
  }
  throw bad();
}

function tensorBytes(t: GgufTensor): number {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.type === GgmlType.Q8_0) return (n / Q8_0_BLOCK) * Q8_0_BLOCK_BYTES;
  return n * (t.type === GgmlType.F32 ? 4 : 2);
}

/** Q8_0 as gguf-py's quants.py computes it: d = absmax / 127 (stored as f16), q = round(x / d)
 *  with halves away from zero, using the unrounded d; an all-zero block has d = 0 and q = 0. */
export function quantizeQ8_0(values: Float32Array): Buffer {
  if (values.length % Q8_0_BLOCK !== 0) throw new Error(`Q8_0 needs a multiple of ${Q8_0_BLOCK} values, got ${values.length}`);
  const blocks = values.length / Q8_0_BLOCK;
  const out = Buffer.alloc(blocks * Q8_0_BLOCK_BYTES);
  for (let b = 0; b < blocks; b++) {
    const base = b * Q8_0_BLOCK;
    let amax = 0;
    for (let i = 0; i < Q8_0_BLOCK; i++) amax = Math.max(amax, Math.abs(values[base + i]));
    const d = Math.fround(amax / 127);
    const o = b * Q8_0_BLOCK_BYTES;
    out.writeUInt16LE(f32ToF16(d), o);
    for (let i = 0; i < Q8_0_BLOCK; i++) {
      const x = d === 0 ? 0 : Math.fround(values[base + i] / d);
      const q = Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
      out.writeInt8(Math.max(-127, Math.min(127, q)), o + 2 + i);
    }
  }
  return out;
}

function encodeTensor(values: Float32Array, type: GgmlType): Buffer {
  if (type === GgmlType.F32) return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  if (type === GgmlType.Q8_0) return quantizeQ8_0(values);
  const out = Buffer.alloc(values.length * 2);
  for (let i = 0; i < values.length; i++) out.writeUInt16LE(f32ToF16(values[i]), i * 2);
  return out;
}

export interface GgufWriteProgress {
  tensor: string;
  index: number;
  count: number;
  bytesWritten: number;
  bytesTotal: number;
}

/** Writes a GGUF v3 file. `general.alignment` is taken from the metadata when present. A
 *  cancelled `token` stops it before the next tensor, leaving no file behind. */
export function writeGguf(file: string, metadata: ReadonlyMap<string, GgufValue> | Record<string, GgufValue>,
  tensors: readonly GgufTensor[], onProgress?: (p: GgufWriteProgress) => void, token?: CancellationToken): number {
  const kv = metadata instanceof Map ? [...metadata.entries()] : Object.entries(metadata);
  const alignEntry = kv.find(([k]) => k === 'general.alignment');
  const alignment = alignEntry ? Number(alignEntry[1].value) : GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || alignment % 8 !== 0) {
    throw new Error(`general.alignment must be a positive multiple of 8, got ${alignment}`);
  }
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`GGUF: duplicate tensor name ${t.name}`);
    names.add(t.name);
    // llama.cpp's GGML_MAX_NAME is 64 including the terminator.
    if (Buffer.byteLength(t.name) >= 64) throw new Error(`GGUF: tensor name "${t.name}" is longer than 63 bytes`);
    if (t.shape.length === 0 || t.shape.length > 4 || t.shape.some((d) => !Number.isInteger(d) || d <= 0)) {
      throw new Error(`GGUF: tensor ${t.name} has shape [${t.shape.join(', ')}]; need 1 to 4 positive dimensions`);
    }
    if (t.type === GgmlType.Q8_0 && t.shape[t.shape.length - 1] % Q8_0_BLOCK !== 0) {
      throw new Error(`GGUF: tensor ${t.name} cannot be Q8_0: its rows of ${t.shape[t.shape.length - 1]} are not a multiple of ${Q8_0_BLOCK}`);
    }
  }

  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(kv.length);
  for (const [key, val] of kv) {
    w.str(key);
    w.u32(val.type);
    if (val.type === GgufValueType.ARRAY) {
      const item: GgufScalarType = val.itemType;
      if (item !== GgufValueType.STRING && SCALAR_SIZE[item] === undefined) {
        throw new Error(`GGUF metadata "${key}": unsupported array item type`);
      }
      w.u32(val.itemType);
      w.u64(val.value.length);
      for (const item of val.value) writeScalar(w, val.itemType, item, key);
    } else {
      writeScalar(w, val.type, val.value, key);
    }
  }
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    offsets.push(offset);
    offset += tensorBytes(t);
    offset += (alignment - (offset % alignment)) % alignment;
  }
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) w.u64(d);
    w.u32(t.type);
    w.u64(offsets[i]);
  });
  w.pad(alignment);

  return writeFileAtomicWith(file, (fd) => {
    let written = 0;
    written += writeAll(fd, w.bytes());
    const total = offset;
    let dataPos = 0;
    tensors.forEach((t, i) => {
      throwIfCancelled(token, file);
      const values = t.data();
      const expected = t.shape.reduce((a, b) => a * b, 1);
      if (values.length !== expected) throw new Error(`GGUF: tensor ${t.name} has ${values.length} values, shape [${t.shape.join(', ')}] needs ${expected}`);
      if (dataPos < offsets[i]) {
        written += writeAll(fd, Buffer.alloc(offsets[i] - dataPos));
        dataPos = offsets[i];
      }
      const bytes = encodeTensor(values, t.type);
      written += writeAll(fd, bytes);
      dataPos += bytes.length;
      onProgress?.({ tensor: t.name, index: i, count: tensors.length, bytesWritten: dataPos, bytesTotal: total });
    });
    if (dataPos < offset) written += writeAll(fd, Buffer.alloc(offset - dataPos));
    return written;
  });
}

