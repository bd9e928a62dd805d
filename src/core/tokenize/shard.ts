// Token shards (*.bin), the runtime's training input. Layout (DESIGN.md, little-endian):
//   magic "LSTK", u32 version (1), u32 vocab size, u64 document count, u64 token count,
//   u64 offsets[documents + 1], u32 tokens[token count], u8 loss_mask[token count].
// The writer streams tokens and masks to side files while documents arrive (the offsets
// table comes first in the file, so its size is only known at the end), then assembles
// the shard under a temporary name and renames it, so a reader never sees a torn file.
import * as fs from 'node:fs';
import * as path from 'node:path';

export const SHARD_MAGIC = 'LSTK';
export const SHARD_VERSION = 1;
const HEADER_BYTES = 4 + 4 + 4 + 8 + 8;

export interface TokenShardData {
  vocabSize: number;
  offsets: BigUint64Array | number[];
  tokens: Uint32Array;
  lossMask: Uint8Array;
}

export interface ShardCounts {
  documents: number;
  tokens: number;
  /** Tokens with mask 1 that are not the first of their document: the loss terms. */
  targets: number;
}

export class ShardFormatError extends Error {
  constructor(readonly file: string, readonly field: string, detail: string, readonly hint?: string) {
    super(`${file}: ${field}: ${detail}${hint ? `. ${hint}` : ''}`);
    this.name = 'ShardFormatError';
  }
}

const BUFFER_TOKENS = 1 << 16;

export class ShardWriter {
  private readonly tmpBase: string;
  private tokensFd: number;
  private maskFd: number;
  private readonly tokenBuf = new Uint32Array(BUFFER_TOKENS);
  private readonly maskBuf = new Uint8Array(BUFFER_TOKENS);
  private buffered = 0;
  private offsets: number[] = [0];
  private tokenCount = 0;
  private targetCount = 0;
  private state: 'open' | 'finished' | 'failed' = 'open';

  constructor(readonly path: string, readonly vocabSize: number) {
    if (!Number.isInteger(vocabSize) || vocabSize <= 0 || vocabSize > 0xffffffff) {
      throw new RangeError(`ShardWriter: vocab size must be a positive 32-bit integer, got ${vocabSize}`);
    }
    fs.mkdirSync(pathDir(path), { recursive: true });
    this.tmpBase = `${path}.tmp-${process.pid}-${Date.now().toString(36)}`;
    this.tokensFd = fs.openSync(`${this.tmpBase}.tokens`, 'w');
    this.maskFd = fs.openSync(`${this.tmpBase}.mask`, 'w');
  }

  get documents(): number {
    return this.offsets.length - 1;
  }

  /** Appends one document. Throws RangeError (naming the document and position) for an id
   *  outside [0, vocab) or a mask value other than 0/1; the shard stays usable after it. */
  addDocument(tokens: ArrayLike<number>, lossMask: ArrayLike<number>): void {
    if (this.state !== 'open') throw new Error(`ShardWriter(${this.path}): addDocument after finish`);
    if (tokens.length !== lossMask.length) {
      throw new RangeError(`document ${this.documents}: ${tokens.length} tokens but ${lossMask.length} mask values`);
    }
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw new RangeError(`document ${this.documents}, token ${i}: id ${t} is outside the vocabulary [0, ${this.vocabSize})`);
      }
      const m = lossMask[i];
      if (m !== 0 && m !== 1) throw new RangeError(`document ${this.documents}, token ${i}: loss mask ${m} is not 0 or 1`);
    }
    for (let i = 0; i < tokens.length; i++) {
      this.tokenBuf[this.buffered] = tokens[i];
      this.maskBuf[this.buffered] = lossMask[i];
      if (i > 0 && lossMask[i] === 1) this.targetCount++;
      if (++this.buffered === BUFFER_TOKENS) this.flush();
    }
    this.tokenCount += tokens.length;
    this.offsets.push(this.tokenCount);
  }

  private flush(): void {
    if (this.buffered === 0) return;
    writeAll(this.tokensFd, littleEndianU32(this.tokenBuf.subarray(0, this.buffered)));
    writeAll(this.maskFd, this.maskBuf.subarray(0, this.buffered));
    this.buffered = 0;
  }

  /** Writes the shard and returns its counts. */
  async finish(): Promise<ShardCounts> {
    if (this.state !== 'open') throw new Error(`ShardWriter(${this.path}): finish called twice`);
    const out = `${this.tmpBase}.bin`;
    try {
      this.flush();
      fs.closeSync(this.tokensFd);
      fs.closeSync(this.maskFd);
      this.tokensFd = this.maskFd = -1;
      const fd = fs.openSync(out, 'w');
      try {
        const head = Buffer.alloc(HEADER_BYTES);
        head.write(SHARD_MAGIC, 0, 'latin1');
        head.writeUInt32LE(SHARD_VERSION, 4);
        head.writeUInt32LE(this.vocabSize, 8);
        head.writeBigUInt64LE(BigInt(this.documents), 12);
        head.writeBigUInt64LE(BigInt(this.tokenCount), 20);
        writeAll(fd, head);
        const offs = Buffer.alloc(this.offsets.length * 8);
        this.offsets.forEach((o, i) => offs.writeBigUInt64LE(BigInt(o), i * 8));
        writeAll(fd, offs);
        await appendFile(fd, `${this.tmpBase}.tokens`);
        await appendFile(fd, `${this.tmpBase}.mask`);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(out, this.path);
      this.state = 'finished';
      return { documents: this.documents, tokens: this.tokenCount, targets: this.targetCount };
    } catch (e) {
      this.state = 'failed';
      fs.rmSync(out, { force: true });
      throw e;
    } finally {
      fs.rmSync(`${this.tmpBase}.tokens`, { force: true });
      fs.rmSync(`${this.tmpBase}.mask`, { force: true });
    }
  }

  /** Abandons the shard and removes its temporary files. */
  abort(): void {
    if (this.state !== 'open') return;
    this.state = 'failed';
    for (const fd of [this.tokensFd, this.maskFd]) if (fd >= 0) fs.closeSync(fd);
    fs.rmSync(`${this.tmpBase}.tokens`, { force: true });
    fs.rmSync(`${this.tmpBase}.mask`, { force: true });
  }
}

function pathDir(p: string): string {
  return path.dirname(path.resolve(p));
}

const littleEndianHost = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function littleEndianU32(a: Uint32Array): Uint8Array {
  if (littleEndianHost) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = Buffer.alloc(a.byteLength);
  for (let i = 0; i < a.length; i++) out.writeUInt32LE(a[i], i * 4);
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.byteLength) off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
}

async function appendFile(fd: number, src: string): Promise<void> {
  const stream = fs.createReadStream(src, { highWaterMark: 1 << 20 });
  for await (const chunk of stream) writeAll(fd, chunk as Buffer);
}

/** Reads and validates a shard the way the runtime does. Throws ShardFormatError. */
export function readShard(file: string, modelVocab = 0): TokenShardData {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ShardFormatError(file, 'file', err.code === 'ENOENT' ? 'not found' : err.message,
      'Prepare the dataset again (lora-studio prepare)');
  }
  const redo = 'Prepare the dataset again (lora-studio prepare)';
  if (buf.length < HEADER_BYTES) throw new ShardFormatError(file, 'header', `file is ${buf.length} bytes, shorter than the ${HEADER_BYTES}-byte header`, redo);
  if (buf.toString('latin1', 0, 4) !== SHARD_MAGIC) {
    throw new ShardFormatError(file, 'magic', `expected "${SHARD_MAGIC}", found ${JSON.stringify(buf.toString('latin1', 0, 4))}`,
      'This is not a LoRA Studio token shard; create one with lora-studio prepare');
  }
  const version = buf.readUInt32LE(4);
  if (version !== SHARD_VERSION) {
    throw new ShardFormatError(file, 'version', `version ${version} is not supported (expected ${SHARD_VERSION})`,
      'The shard was written by another LoRA Studio version; prepare the dataset again');
  }
  const vocabSize = buf.readUInt32LE(8);
  if (vocabSize === 0) throw new ShardFormatError(file, 'vocab_size', 'vocab size is 0', redo);
  if (modelVocab > 0 && vocabSize > modelVocab) {
    throw new ShardFormatError(file, 'vocab_size', `shard vocab ${vocabSize} exceeds the model's ${modelVocab}`,
      'The shard was tokenized for another model; prepare it with this model');
  }
  const docs = buf.readBigUInt64LE(12);
  const ntok = buf.readBigUInt64LE(20);
  const expected = BigInt(HEADER_BYTES) + (docs + 1n) * 8n + ntok * 5n;
  if (expected !== BigInt(buf.length)) {
    throw new ShardFormatError(file, 'size', `header says ${docs} documents and ${ntok} tokens (${expected} bytes) but the file has ${buf.length} bytes`,
      'The file is truncated or damaged; ' + redo.toLowerCase());
  }
  const nDocs = Number(docs);
  const nTok = Number(ntok);
  const offsets = new BigUint64Array(nDocs + 1);
  let prev = 0n;
  for (let i = 0; i <= nDocs; i++) {
    const o = buf.readBigUInt64LE(HEADER_BYTES + i * 8);
    if (i === 0 && o !== 0n) throw new ShardFormatError(file, 'offsets[0]', `is ${o}, must be 0`, redo);
    if (o < prev) throw new ShardFormatError(file, `offsets[${i}]`, `${o} is smaller than offsets[${i - 1}] = ${prev}`, redo);
    offsets[i] = o;
    prev = o;
  }
  if (prev !== ntok) throw new ShardFormatError(file, `offsets[${nDocs}]`, `is ${prev}, must equal the token count ${ntok}`, redo);
  const tokStart = HEADER_BYTES + (nDocs + 1) * 8;
  const tokens = new Uint32Array(nTok);
  for (let i = 0; i < nTok; i++) tokens[i] = buf.readUInt32LE(tokStart + i * 4);
  const limit = modelVocab > 0 ? Math.min(modelVocab, vocabSize) : vocabSize;
  for (let i = 0; i < nTok; i++) {
    if (tokens[i] >= limit) {
      throw new ShardFormatError(file, `tokens[${i}]`, `id ${tokens[i]} is outside the vocabulary [0, ${limit})`,
        modelVocab > 0 ? 'The shard was tokenized for another model; prepare it with this model' : redo);
    }
  }
  const maskStart = tokStart + nTok * 4;
  const lossMask = new Uint8Array(buf.buffer, buf.byteOffset + maskStart, nTok).slice();
  for (let i = 0; i < nTok; i++) {
    if (lossMask[i] > 1) throw new ShardFormatError(file, `loss_mask[${i}]`, `value ${lossMask[i]} is not 0 or 1`, redo);
  }
  return { vocabSize, offsets, tokens, lossMask };
}

/** Counts documents, tokens and loss targets of a shard that has been read. */
export function shardCounts(shard: TokenShardData): ShardCounts {
  const offs = Array.from(shard.offsets as ArrayLike<number | bigint>, (x) => Number(x));
  let targets = 0;
  for (let d = 0; d + 1 < offs.length; d++) {
    for (let i = offs[d] + 1; i < offs[d + 1]; i++) targets += shard.lossMask[i];
  }
  return { documents: Math.max(0, offs.length - 1), tokens: shard.tokens.length, targets };
}

/** Writes a complete in-memory shard (tests and tools). */
export async function writeShard(file: string, shard: TokenShardData): Promise<ShardCounts> {
  const w = new ShardWriter(file, shard.vocabSize);
  const offs = Array.from(shard.offsets as ArrayLike<number | bigint>, (x) => Number(x));
  try {
    for (let d = 0; d + 1 < offs.length; d++) {
      w.addDocument(shard.tokens.subarray(offs[d], offs[d + 1]), shard.lossMask.subarray(offs[d], offs[d + 1]));
    }
  } catch (e) {
    w.abort();
    throw e;
  }
  return w.finish();
}
