// Crash-safe file output for everything core writes (run.json, pid files, shards' summaries,
// safetensors, GGUF, playground caches): the bytes go to a temporary name in the same folder,
// are flushed to disk, and the file is renamed into place, so a reader sees either the old
// file or the complete new one, and a crash or a full disk never leaves a torn file behind.
import * as fs from 'node:fs';
import * as path from 'node:path';

function tempName(file: string): string {
  return `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Writes bytes a chunk at a time to `fd`, looping over short writes. Returns the byte count. */
export function writeAll(fd: number, bytes: Uint8Array): number {
  let off = 0;
  while (off < bytes.byteLength) off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
  return bytes.byteLength;
}

/**
 * Streams a file: `write(fd)` writes through the descriptor of a temporary file, which is
 * then fsynced and renamed onto `file`. If `write` throws, the temporary file is removed and
 * the error propagates; an existing `file` is left as it was. Returns what `write` returned.
 */
export function writeFileAtomicWith<T>(file: string, write: (fd: number) => T): T {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = tempName(file);
  const fd = fs.openSync(tmp, 'w');
  let result: T;
  try {
    result = write(fd);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return result;
}

/** Writes a whole string or byte array atomically. */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  writeFileAtomicWith(file, (fd) => writeAll(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data));
}

/** Writes JSON (indented by `indent`, with a final newline) atomically. */
export function writeJsonAtomic(file: string, value: unknown, indent = 2): void {
  writeFileAtomic(file, JSON.stringify(value, null, indent) + '\n');
}
