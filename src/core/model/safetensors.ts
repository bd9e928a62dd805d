// safetensors in TypeScript: header reading (no tensor data touched), validation that
// matches the runtime's (native-runtime/src/formats/safetensors.hpp), single-tensor reads,
// model folder weight maps (single file or sharded index), and an atomic writer.
//
// Format: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
// then the data region; offsets are relative to the start of the data region.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DTYPE_BYTES, SafetensorsDType, decodeFloats, encodeFloats, isDType } from './dtype';
import { writeAll, writeFileAtomicWith } from '../util/atomicWrite';

export class SafetensorsError extends Error {
  constructor(
    readonly detail: string,
    readonly file: string,
    readonly field?: string,
    readonly hint?: string,
  ) {
    super(`${file}${field ? ` (${field})` : ''}: ${detail}${hint ? `. ${hint}` : ''}`);
    this.name = 'SafetensorsError';
  }
}

export interface TensorEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte offsets within the data region. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  /** Absolute byte offset of the data region in the file. */
  dataStart: number;
  tensors: TensorEntry[];
  metadata: Record<string, string>;
}

/** Upper bound on the JSON header; the reference implementation uses 100 MB too. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const CORRUPT_HINT = 'The file is damaged or not a safetensors file; download or export it again';

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function readExactly(fd: number, length: number, position: number, file: string, what: string): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = fs.readSync(fd, buf, got, length - got, position + got);
    if (n === 0) throw new SafetensorsError(`file ends inside the ${what}`, file, undefined, CORRUPT_HINT);
    got += n;
  }
  return buf;
}

/** Reads and validates the header of a .safetensors file without reading tensor data. */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new SafetensorsError(
      err.code === 'ENOENT' ? 'file not found' : `cannot open: ${err.message}`,
      file, undefined,
      err.code === 'ENOENT' ? 'Check the model folder path' : 'Check the file permissions',
    );
  }
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) throw new SafetensorsError(`file is ${fileSize} bytes, too short for a header`, file, undefined, CORRUPT_HINT);
    const lenBuf = readExactly(fd, 8, 0, file, 'header length');
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, fileSize - 8))) {
      throw new SafetensorsError(`header length ${headerLen} does not fit in the ${fileSize}-byte file`, file, 'header', CORRUPT_HINT);
    }
    const n = Number(headerLen);
    const text = readExactly(fd, n, 8, file, 'header').toString('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new SafetensorsError(`header is not valid JSON (${(e as Error).message})`, file, 'header', CORRUPT_HINT);
    }
    if (!json || typeof json !== 'object' || Array.isArray(json)) {
      throw new SafetensorsError('header is not a JSON object', file, 'header', CORRUPT_HINT);
    }
    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    const tensors: TensorEntry[] = [];
    const metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
          for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
            if (typeof v !== 'string') throw new SafetensorsError(`metadata value "${k}" is not a string`, file, '__metadata__', CORRUPT_HINT);
            metadata[k] = v;
          }
          continue;
        }
        throw new SafetensorsError('__metadata__ is not an object', file, '__metadata__', CORRUPT_HINT);
      }
      tensors.push(parseEntry(name, raw, file, dataSize));
    }
    const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i].begin < sorted[i - 1].end) {
        throw new SafetensorsError(`byte range overlaps tensor "${sorted[i - 1].name}"`, file, sorted[i].name, CORRUPT_HINT);
      }
    }
    return { file, fileSize, dataStart, tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

function parseEntry(name: string, raw: unknown, file: string, dataSize: number): TensorEntry {
  if (!raw || typeof raw !== 'object') throw new SafetensorsError('tensor entry is not an object', file, name, CORRUPT_HINT);
  const r = raw as Record<string, unknown>;
  if (!isDType(r.dtype)) {
    throw new SafetensorsError(`unknown dtype ${JSON.stringify(r.dtype)}`, file, name,
      `Supported dtypes: ${Object.keys(DTYPE_BYTES).join(', ')}`);
  }
  const shape = r.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`, file, name, CORRUPT_HINT);
  }
  const offs = r.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[0] > offs[1]) {
    throw new SafetensorsError(`data_offsets ${JSON.stringify(offs)} is not [begin, end] with begin <= end`, file, name, CORRUPT_HINT);
  }
  const [begin, end] = offs as [number, number];
  const expected = numel(shape) * DTYPE_BYTES[r.dtype];
  if (end - begin !== expected) {
    throw new SafetensorsError(
      `shape [${shape.join(', ')}] of ${r.dtype} needs ${expected} bytes but data_offsets span ${end - begin}`,
      file, name, CORRUPT_HINT);
  }
  if (end > dataSize) {
    throw new SafetensorsError(`data ends at byte ${end} but the data region has only ${dataSize} bytes (file truncated?)`,
      file, name, CORRUPT_HINT);
  }
  return { name, dtype: r.dtype, shape: shape as number[], begin, end };
}

/** Reads one tensor's raw bytes. */
export function readTensorBytes(header: SafetensorsHeader, name: string): Uint8Array {
  const t = header.tensors.find((x) => x.name === name);
  if (!t) throw new SafetensorsError('tensor not found', header.file, name);
  const fd = fs.openSync(header.file, 'r');
  try {
    return readExactly(fd, t.end - t.begin, header.dataStart + t.begin, header.file, `tensor ${name}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads one floating-point tensor converted to fp32. */
export function readTensorF32(header: SafetensorsHeader, name: string): Float32Array {
  const t = header.tensors.find((x) => x.name === name);
  if (!t) throw new SafetensorsError('tensor not found', header.file, name);
  if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
    throw new SafetensorsError(`dtype ${t.dtype} is not a float type`, header.file, name);
  }
  return decodeFloats(readTensorBytes(header, name), t.dtype);
}

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Raw bytes in `dtype`, or fp32 values converted on write (dtype F32, BF16 or F16). A
   *  function is called only when the tensor is written, so big models need not be held whole. */
  data: Uint8Array | Float32Array | (() => Uint8Array | Float32Array);
}

function tensorBytes(t: TensorToWrite): Uint8Array {
  const d = typeof t.data === 'function' ? t.data() : t.data;
  if (d instanceof Float32Array) {
    if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
      throw new Error(`tensor ${t.name}: fp32 values can only be written as F32, BF16 or F16, not ${t.dtype}`);
    }
    return encodeFloats(d, t.dtype);
  }
  return d;
}

/** Builds the header JSON, padded with spaces to a multiple of 8 bytes like the Python writer. */
export function buildHeader(tensors: readonly { name: string; dtype: SafetensorsDType; shape: number[] }[],
  metadata: Record<string, string> | null): { header: Buffer; sizes: number[] } {
  const obj: Record<string, unknown> = {};
  if (metadata) obj.__metadata__ = metadata;
  let offset = 0;
  const sizes: number[] = [];
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new Error(`duplicate tensor name ${t.name}`);
    seen.add(t.name);
    const size = numel(t.shape) * DTYPE_BYTES[t.dtype];
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    sizes.push(size);
    offset += size;
  }
  let json = Buffer.from(JSON.stringify(obj), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const header = Buffer.alloc(8 + json.length);
  header.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(header, 8);
  return { header, sizes };
}

/** Writes a .safetensors file to a temporary name, fsyncs, and renames it into place. */
export function writeSafetensors(file: string, tensors: readonly TensorToWrite[],
  metadata: Record<string, string> | null = { format: 'pt' }): number {
  const { header, sizes } = buildHeader(tensors, metadata);
  return writeFileAtomicWith(file, (fd) => {
    let total = writeAll(fd, header);
    tensors.forEach((t, i) => {
      const bytes = tensorBytes(t);
      if (bytes.byteLength !== sizes[i]) {
        throw new Error(`tensor ${t.name}: ${bytes.byteLength} bytes given, shape [${t.shape.join(', ')}] of ${t.dtype} needs ${sizes[i]}`);
      }
      total += writeAll(fd, bytes);
    });
    return total;
  });
}

export interface ModelWeightEntry extends TensorEntry {
  /** The .safetensors file holding the tensor. */
  file: string;
}

export interface ModelWeights {
  files: SafetensorsHeader[];
  tensors: Map<string, ModelWeightEntry>;
  /** Sum of all tensor bytes as stored. */
  totalBytes: number;
}

/** Reads every weight header of an HF model folder: model.safetensors, or the shards named by
 *  model.safetensors.index.json. Checks that the index and the shards agree. */
export function readModelWeights(modelDir: string): ModelWeights {
  const indexPath = path.join(modelDir, 'model.safetensors.index.json');
  const single = path.join(modelDir, 'model.safetensors');
  let files: string[];
  let weightMap: Record<string, string> | null = null;
  if (fs.existsSync(indexPath)) {
    let index: unknown;
    try {
      index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
    } catch (e) {
      throw new SafetensorsError(`not valid JSON (${(e as Error).message})`, indexPath, undefined, 'Restore the file from the model repository');
    }
    const wm = (index as { weight_map?: unknown })?.weight_map;
    if (!wm || typeof wm !== 'object' || Array.isArray(wm)) {
      throw new SafetensorsError('missing "weight_map" object', indexPath, 'weight_map', 'Restore the file from the model repository');
    }
    weightMap = {};
    for (const [k, v] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof v !== 'string' || v.includes('/') || v.includes('\\') || v === '..') {
        throw new SafetensorsError(`entry for "${k}" is not a file name in the model folder`, indexPath, `weight_map.${k}`);
      }
      weightMap[k] = v;
    }
    files = [...new Set(Object.values(weightMap))].sort();
  } else if (fs.existsSync(single)) {
    files = ['model.safetensors'];
  } else {
    // Other *.safetensors names (e.g. Mistral's consolidated.safetensors) use another tensor
    // naming and are not what transformers or the runtime load, so they are not guessed at.
    const exists = fs.existsSync(modelDir);
    const others = exists ? fs.readdirSync(modelDir).filter((f) => f.endsWith('.safetensors')) : [];
    throw new SafetensorsError(
      exists ? 'no model.safetensors or model.safetensors.index.json' : 'folder not found',
      modelDir, undefined,
      !exists ? 'Check the model folder path'
        : others.length ? `Found ${others.join(', ')}, which is not the Hugging Face transformers layout; use the repository's model*.safetensors files`
          : 'Pick an HF model folder with safetensors weights (convert .bin/.pt checkpoints with transformers first)');
  }
  const headers = files.map((f) => readSafetensorsHeader(path.join(modelDir, f)));
  const tensors = new Map<string, ModelWeightEntry>();
  let totalBytes = 0;
  for (const h of headers) {
    for (const t of h.tensors) {
      if (tensors.has(t.name)) throw new SafetensorsError(`tensor also present in ${tensors.get(t.name)!.file}`, h.file, t.name);
      if (weightMap && weightMap[t.name] !== undefined && path.join(modelDir, weightMap[t.name]) !== h.file) {
        throw new SafetensorsError(`index says this tensor is in ${weightMap[t.name]}`, h.file, t.name,
          'The index and the shards disagree; restore the files from the model repository');
      }
      tensors.set(t.name, { ...t, file: h.file });
      totalBytes += t.end - t.begin;
    }
  }
  if (weightMap) {
    for (const [name, f] of Object.entries(weightMap)) {
      if (!tensors.has(name)) {
        throw new SafetensorsError(`index lists "${name}" in ${f} but that shard has no such tensor`, indexPath, `weight_map.${name}`,
          'A shard is missing or truncated; download the model again');
      }
    }
  }
  return { files: headers, tensors, totalBytes };
}
