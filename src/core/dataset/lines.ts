// Streams a text file as UTF-8 lines without holding the file in memory. Lines are handed
// out in batches (one array per read chunk) because a per-line async hop costs more than
// parsing a short JSONL line. A very long line (a whole JSON array written on one line, as
// json.dump does) is handed out in fragments, so it never has to be held, or re-copied, as
// one piece. Encoding problems are reported per line so that the rest of the file stays
// usable.
import { createReadStream, promises as fsp } from 'node:fs';
import { Diagnostic, diagnostic } from './diagnostics';

export interface Line {
  /** 1-based line number in the file. */
  line: number;
  /** The line without its terminator ("\n" or "\r\n") and without a leading BOM. */
  text: string;
  /** The line continues in the next Line (same line number, no newline in between). */
  partial?: boolean;
  /** UTF-16 offset of this fragment within its line (0 for whole lines and first fragments). */
  column0?: number;
  /** The bytes are not valid UTF-8: `text` is a lossy decoding and a problem was reported. */
  invalid?: boolean;
}

export interface LineBatch {
  lines: Line[];
  /** Lines that could not be decoded, as diagnostics (the lines are flagged `invalid`). */
  problems: Diagnostic[];
  /** Bytes of the file consumed so far (for progress). */
  bytesRead: number;
  totalBytes: number;
}

export interface ReadLinesOptions {
  signal?: AbortSignal;
  chunkSize?: number;
  /** Longest unfinished line kept back before it is handed out as a fragment. */
  maxCarry?: number;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Byte index (within `buf`) of the first byte that is not valid UTF-8, or -1. */
function firstInvalidUtf8(buf: Buffer, start: number, end: number): number {
  let i = start;
  while (i < end) {
    const b = buf[i];
    let need: number;
    let min: number;
    if (b < 0x80) {
      i++;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      need = 1;
      min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      min = 0x10000;
    } else return i;
    if (i + need >= end) return i;
    let cp = b & (need === 1 ? 0x1f : need === 2 ? 0x0f : 0x07);
    for (let k = 1; k <= need; k++) {
      const c = buf[i + k];
      if ((c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += need + 1;
  }
  return -1;
}

/**
 * Decodes one line. Buffer#toString is fast but silently turns bad bytes into U+FFFD, so
 * the strict check runs only when a replacement character shows up.
 */
function decodeLine(buf: Buffer, start: number, end: number): string | { badByte: number } {
  const text = buf.toString('utf8', start, end);
  if (text.indexOf('\uFFFD') === -1) return text;
  try {
    return strictUtf8.decode(buf.subarray(start, end));
  } catch {
    const at = firstInvalidUtf8(buf, start, end);
    return { badByte: at < 0 ? 0 : at - start };
  }
}

export async function fileSize(path: string): Promise<number> {
  const st = await fsp.stat(path);
  return st.size;
}

/**
 * Yields the file's lines in batches. A UTF-8 BOM is skipped; a UTF-16 file (by its BOM, or
 * by NUL bytes in the first chunk) is refused with one diagnostic, since decoding it as
 * UTF-8 would turn every row into garbage.
 */
export async function* readLineBatches(file: string, opts: ReadLinesOptions = {}): AsyncGenerator<LineBatch> {
  const totalBytes = await fileSize(file);
  const stream = createReadStream(file, { highWaterMark: opts.chunkSize ?? 1 << 20 });
  let carry: Buffer | null = null;
  const maxCarry = opts.maxCarry ?? 1 << 16;
  /** Characters of the current line already handed out as fragments. */
  let partialCols = 0;
  let lineNo = 0;
  let bytesRead = 0;
  let first = true;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      bytesRead += chunk.length;
      let buf: Buffer = carry ? Buffer.concat([carry, chunk]) : chunk;
      carry = null;
      if (first) {
        first = false;
        const enc = sniffUtf16(buf);
        if (enc) {
          yield {
            lines: [],
            problems: [
              diagnostic('utf16-file', {
                message: `the file is encoded as ${enc}, not UTF-8`,
                file,
                line: 1,
                column: 1,
                hint: 'save it as UTF-8 (in VS Code: "Save with Encoding" > UTF-8) and run again',
              }),
            ],
            bytesRead: totalBytes,
            totalBytes,
          };
          return;
        }
        if (buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) buf = buf.subarray(3);
      }
      const lines: Line[] = [];
      const problems: Diagnostic[] = [];
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(0x0a, start);
        if (nl < 0) break;
        lineNo++;
        const end = nl > start && buf[nl - 1] === 0x0d ? nl - 1 : nl;
        pushLine(file, buf, start, end, lineNo, lines, problems, false, partialCols);
        partialCols = 0;
        start = nl + 1;
      }
      if (buf.length - start > maxCarry) {
        // Hand out the unfinished line up to the last whole character; keep the rest.
        let end = buf.length;
        let k = end - 1;
        while (k > start && end - k < 4 && (buf[k] & 0xc0) === 0x80) k--;
        const lead = buf[k];
        const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
        if (end - k < need) end = k;
        partialCols += pushLine(file, buf, start, end, lineNo + 1, lines, problems, true, partialCols);
        carry = end < buf.length ? Buffer.from(buf.subarray(end)) : null;
      } else if (start < buf.length) carry = Buffer.from(buf.subarray(start));
      if (lines.length || problems.length) yield { lines, problems, bytesRead, totalBytes };
    }
    if (first && totalBytes === 0) return;
    if ((carry && carry.length) || partialCols > 0) {
      lineNo++;
      const lines: Line[] = [];
      const problems: Diagnostic[] = [];
      const tail = carry ?? Buffer.alloc(0);
      const end = tail.length && tail[tail.length - 1] === 0x0d ? tail.length - 1 : tail.length;
      pushLine(file, tail, 0, end, lineNo, lines, problems, false, partialCols);
      yield { lines, problems, bytesRead, totalBytes };
    }
  } finally {
    stream.destroy();
  }
}

/** Decodes and appends one line or fragment; returns its length in UTF-16 units. */
function pushLine(file: string, buf: Buffer, start: number, end: number, lineNo: number, lines: Line[], problems: Diagnostic[], partial: boolean, column0: number): number {
  const decoded = decodeLine(buf, start, end);
  const line: Line = { line: lineNo, text: '' };
  if (partial) line.partial = true;
  if (column0) line.column0 = column0;
  if (typeof decoded === 'string') {
    line.text = decoded;
    lines.push(line);
    return decoded.length;
  }
  const column = column0 + buf.toString('utf8', start, start + decoded.badByte).length + 1;
  problems.push(
    diagnostic('bad-encoding', {
      message: `line is not valid UTF-8 (byte 0x${buf[start + decoded.badByte].toString(16).padStart(2, '0')} at byte ${decoded.badByte + 1} of the line)`,
      file,
      line: lineNo,
      column,
      hint: 'the file looks like it was saved in another encoding (e.g. Latin-1 or Windows-1252); re-save it as UTF-8',
    }),
  );
  // The lossy text keeps the structure of the line (quotes, brackets) for the parsers, which
  // leave out the record it belongs to.
  line.text = buf.toString('utf8', start, end);
  line.invalid = true;
  lines.push(line);
  return line.text.length;
}

function sniffUtf16(buf: Buffer): string | null {
  if (buf.length >= 2 && buf[0] === 0xff && buf[1] === 0xfe) return 'UTF-16 LE';
  if (buf.length >= 2 && buf[0] === 0xfe && buf[1] === 0xff) return 'UTF-16 BE';
  // Without a BOM, ASCII text in UTF-16 has a NUL in every other byte.
  const n = Math.min(buf.length, 512);
  if (n >= 4) {
    let zerosEven = 0;
    let zerosOdd = 0;
    for (let i = 0; i < n; i++) if (buf[i] === 0) (i % 2 === 0 ? zerosEven++ : zerosOdd++);
    if (zerosOdd > n / 4 && zerosEven === 0) return 'UTF-16 LE';
    if (zerosEven > n / 4 && zerosOdd === 0) return 'UTF-16 BE';
  }
  return null;
}

export function abortError(signal: AbortSignal): Error {
  const reason = signal.reason;
  if (reason instanceof Error) return reason;
  const e = new Error('dataset preparation was cancelled');
  e.name = 'AbortError';
  return e;
}
