// Dataset readers: JSON Lines, a JSON array, and CSV (RFC 4180: quoted fields, "" escapes,
// newlines inside quotes, header row). All of them stream through `readLineBatches`, so
// memory stays bounded by one chunk plus one record, whatever the file size.
import * as path from 'node:path';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { DatasetError, Diagnostic, diagnostic } from './diagnostics';
import { Line, abortError, readLineBatches } from './lines';

export type FileKind = 'jsonl' | 'json' | 'csv';

export interface SourceRecord {
  /** 1-based record number: the n-th data record of the file, counting unreadable ones. */
  row: number;
  /** 1-based line where the record starts. */
  line: number;
  value: unknown;
  /** The raw line of a JSON Lines record, so that diagnostics can point at a column. */
  text?: string;
}

export interface RecordBatch {
  records: SourceRecord[];
  problems: Diagnostic[];
  /** Records seen so far, readable or not. */
  rowsSeen: number;
  bytesRead: number;
  totalBytes: number;
  /** The header of a CSV file once read (names and the line it is on). */
  columns?: { names: string[]; line: number } | null;
}

export interface ReadOptions {
  kind?: FileKind;
  signal?: AbortSignal;
  chunkSize?: number;
  /** See ReadLinesOptions.maxCarry. */
  maxCarry?: number;
}

/**
 * Picks the reader from the extension. A `.json` file whose first non-blank character is
 * `{` is read as JSON Lines, since many datasets are saved that way under a .json name.
 */
export async function detectFileKind(file: string): Promise<FileKind> {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  if (ext === '.csv') return 'csv';
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.alloc(4096);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    let text = buf.toString('utf8', 0, bytesRead);
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    const firstChar = text.trimStart()[0];
    if (firstChar === '[') return 'json';
    if (firstChar === '{') return 'jsonl';
    if (ext === '.json') return 'json';
    // An unknown extension with text that is neither: CSV is the remaining readable guess.
    return 'csv';
  } finally {
    await fh.close();
  }
}

/** Streams the records of a dataset file in batches. */
export async function* readRecords(file: string, opts: ReadOptions = {}): AsyncGenerator<RecordBatch> {
  let st;
  try {
    st = await fsp.stat(file);
  } catch {
    throw new DatasetFileError(
      diagnostic('file-not-found', { message: `dataset file not found: ${file}`, file, hint: 'check the path; relative paths are resolved from the current folder' }),
    );
  }
  if (!st.isFile()) {
    throw new DatasetFileError(diagnostic('file-unreadable', { message: `the dataset path is not a file: ${file}`, file, hint: 'pass a .jsonl, .json or .csv file' }));
  }
  try {
    await fsp.access(file, fsConstants.R_OK);
  } catch (err) {
    throw new DatasetFileError(
      diagnostic('file-unreadable', { message: `the dataset file cannot be read: ${(err as Error).message}`, file, hint: 'check the file permissions' }),
    );
  }
  const kind = opts.kind ?? (await detectFileKind(file));
  const parser: Parser = kind === 'jsonl' ? new JsonlParser(file) : kind === 'json' ? new JsonArrayParser(file) : new CsvParser(file);
  let sawLine = false;
  let lastBytes = 0;
  let total = 0;
  // Fragments of one long line, for the parsers that need whole lines (joined once, so the
  // cost stays linear in the line's length).
  let pieces: Line[] = [];
  for await (const batch of readLineBatches(file, { signal: opts.signal, chunkSize: opts.chunkSize, maxCarry: opts.maxCarry })) {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const records: SourceRecord[] = [];
    const problems: Diagnostic[] = batch.problems.slice();
    for (const l of batch.lines) {
      if (!sawLine && l.text.trim() !== '') sawLine = true;
      if (parser.takesFragments) {
        parser.feed(l, records, problems);
        continue;
      }
      if (l.partial) {
        pieces.push(l);
        continue;
      }
      if (pieces.length) {
        pieces.push(l);
        const whole: Line = { line: l.line, text: pieces.map((p) => p.text).join('') };
        if (pieces.some((p) => p.invalid)) whole.invalid = true;
        pieces = [];
        parser.feed(whole, records, problems);
      } else parser.feed(l, records, problems);
    }
    lastBytes = batch.bytesRead;
    total = batch.totalBytes;
    yield { records, problems, rowsSeen: parser.rows, bytesRead: batch.bytesRead, totalBytes: batch.totalBytes, columns: parser instanceof CsvParser ? parser.columns() : undefined };
  }
  const records: SourceRecord[] = [];
  const problems: Diagnostic[] = [];
  parser.end(records, problems);
  if (!sawLine && parser.rows === 0 && problems.length === 0) {
    problems.push(diagnostic('file-empty', { message: 'the dataset file is empty', file, line: 1, column: 1, hint: 'add at least one example row' }));
  }
  yield { records, problems, rowsSeen: parser.rows, bytesRead: lastBytes, totalBytes: total, columns: parser instanceof CsvParser ? parser.columns() : undefined };
}

/** Thrown when a file cannot be read at all (as opposed to bad rows inside it). */
export class DatasetFileError extends DatasetError {
  constructor(readonly diagnostic: Diagnostic) {
    super(diagnostic.message, [diagnostic], diagnostic.hint);
    this.name = 'DatasetFileError';
  }
}

interface Parser {
  rows: number;
  /** Accepts the fragments of long lines as they come; otherwise it gets whole lines. */
  readonly takesFragments: boolean;
  /** A line flagged `invalid` (not UTF-8, already reported) drops the record it belongs to. */
  feed(line: Line, out: SourceRecord[], problems: Diagnostic[]): void;
  end(out: SourceRecord[], problems: Diagnostic[]): void;
}

/** Converts "at position N" in a JSON.parse message to a line and column inside `text`. */
export function jsonErrorPosition(err: unknown, text: string): { message: string; lineOffset: number; column: number } {
  const raw = err instanceof Error ? err.message : String(err);
  const m = /at position (\d+)/.exec(raw);
  let message = raw.replace(/\s*\(line \d+ column \d+\)/, '');
  if (message.length > 160) message = message.slice(0, 157) + '...';
  if (!m) return { message, lineOffset: 0, column: 1 };
  const pos = Math.min(Number(m[1]), text.length);
  let lineOffset = 0;
  let lineStart = 0;
  for (let i = 0; i < pos; i++) {
    if (text.charCodeAt(i) === 10) {
      lineOffset++;
      lineStart = i + 1;
    }
  }
  return { message, lineOffset, column: pos - lineStart + 1 };
}

class JsonlParser implements Parser {
  rows = 0;
  readonly takesFragments = false;
  constructor(private readonly file: string) {}

  feed(l: Line, out: SourceRecord[], problems: Diagnostic[]): void {
    const text = l.text;
    // Whitespace-only lines separate nothing in JSONL; editors often leave one at the end.
    if (text.length === 0 || (text.charCodeAt(0) <= 32 && text.trim() === '')) return;
    this.rows++;
    if (l.invalid) return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      const pos = jsonErrorPosition(err, text);
      problems.push(
        diagnostic('bad-json', {
          message: `invalid JSON: ${pos.message}`,
          file: this.file,
          line: l.line,
          column: pos.column,
          row: this.rows,
          hint: 'each line of a .jsonl file must be one complete JSON object',
        }),
      );
      return;
    }
    out.push({ row: this.rows, line: l.line, value, text });
  }

  end(): void {}
}

class JsonArrayParser implements Parser {
  rows = 0;
  readonly takesFragments = true;
  private started = false;
  private ended = false;
  private failed = false;
  private inElem = false;
  private scalar = false;
  private depth = 0;
  private inStr = false;
  private esc = false;
  private parts: string[] = [];
  private elemLine = 0;
  private elemColumn = 0;
  private elemBad = false;
  private lastLine = 0;

  constructor(private readonly file: string) {}

  feed(l: Line, out: SourceRecord[], problems: Diagnostic[]): void {
    this.lastLine = l.line;
    if (this.failed) return;
    const s = l.text;
    const col0 = l.column0 ?? 0;
    // An element touching an undecodable line is left out (its text is a lossy decoding).
    if (l.invalid && this.inElem) this.elemBad = true;
    let segStart = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (this.inStr) {
        if (this.esc) this.esc = false;
        else if (c === 92 /* \ */) this.esc = true;
        else if (c === 34 /* " */) {
          this.inStr = false;
          if (this.scalar) {
            this.finishElement(s.slice(segStart, i + 1), out, problems);
          }
        }
        continue;
      }
      const ws = c === 32 || c === 9 || c === 13 || c === 10;
      if (!this.started) {
        if (ws) continue;
        if (c === 91 /* [ */) {
          this.started = true;
          continue;
        }
        this.failed = true;
        problems.push(
          diagnostic('not-an-array', {
            message: 'a .json dataset must be an array of objects: [ {...}, {...} ]',
            file: this.file,
            line: l.line,
            column: col0 + i + 1,
            hint: 'for one JSON object per line, name the file .jsonl',
          }),
        );
        return;
      }
      if (this.ended) {
        if (ws) continue;
        this.failed = true;
        problems.push(
          diagnostic('bad-json', { message: 'unexpected content after the closing ] of the array', file: this.file, line: l.line, column: col0 + i + 1 }),
        );
        return;
      }
      if (!this.inElem) {
        if (ws || c === 44 /* , */) continue;
        if (c === 93 /* ] */) {
          this.ended = true;
          continue;
        }
        this.inElem = true;
        this.elemBad = l.invalid === true;
        this.elemLine = l.line;
        this.elemColumn = col0 + i + 1;
        this.parts = [];
        segStart = i;
        if (c === 123 || c === 91) {
          this.scalar = false;
          this.depth = 1;
        } else if (c === 34) {
          this.scalar = true;
          this.inStr = true;
        } else {
          this.scalar = true;
          this.depth = 0;
        }
        continue;
      }
      if (this.scalar) {
        if (ws || c === 44 || c === 93) {
          this.finishElement(s.slice(segStart, i), out, problems);
          if (c === 93) this.ended = true;
        }
        continue;
      }
      if (c === 34) this.inStr = true;
      else if (c === 123 || c === 91) this.depth++;
      else if (c === 125 || c === 93) {
        this.depth--;
        if (this.depth === 0) this.finishElement(s.slice(segStart, i + 1), out, problems);
      }
    }
    if (this.inElem) {
      this.parts.push(s.slice(segStart));
      if (!l.partial) this.parts.push('\n');
    }
  }

  private finishElement(lastPart: string, out: SourceRecord[], problems: Diagnostic[]): void {
    this.parts.push(lastPart);
    const text = this.parts.length === 1 ? this.parts[0] : this.parts.join('');
    this.parts = [];
    this.inElem = false;
    this.scalar = false;
    this.rows++;
    if (this.elemBad) return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      const pos = jsonErrorPosition(err, text);
      problems.push(
        diagnostic('bad-json', {
          message: `invalid JSON in array element ${this.rows}: ${pos.message}`,
          file: this.file,
          line: this.elemLine + pos.lineOffset,
          column: pos.lineOffset === 0 ? this.elemColumn + pos.column - 1 : pos.column,
          row: this.rows,
        }),
      );
      return;
    }
    out.push({ row: this.rows, line: this.elemLine, value });
  }

  end(_out: SourceRecord[], problems: Diagnostic[]): void {
    if (this.failed) return;
    if (this.inElem) {
      this.rows++;
      problems.push(
        diagnostic('bad-json', {
          message: `array element ${this.rows} starting here is never closed (the file ends inside it)`,
          file: this.file,
          line: this.elemLine,
          column: this.elemColumn,
          row: this.rows,
          hint: 'look for a missing } or " in this element',
        }),
      );
    } else if (this.started && !this.ended) {
      problems.push(
        diagnostic('bad-json', {
          message: 'the array is not closed: the file ends before the final ]',
          file: this.file,
          line: Math.max(1, this.lastLine),
          hint: 'the rows read so far are still used',
        }),
      );
    }
  }
}

class CsvParser implements Parser {
  rows = 0;
  readonly takesFragments = false;
  private header: string[] | null = null;
  private headerLine = 0;
  private fields: string[] = [];
  private field = '';
  private inQuotes = false;
  private recordLine = 0;
  private recordBad = false;
  private pending = false;

  constructor(private readonly file: string) {}

  feed(l: Line, out: SourceRecord[], problems: Diagnostic[]): void {
    const s = l.text;
    if (!this.pending) {
      if (s.trim() === '') return;
      this.pending = true;
      this.recordLine = l.line;
      this.recordBad = false;
      this.fields = [];
      this.field = '';
    } else {
      // Still inside a quoted field: the newline belongs to the value.
      this.field += '\n';
    }
    if (l.invalid) this.recordBad = true;
    let i = 0;
    const n = s.length;
    let fieldStart = true;
    if (this.inQuotes) fieldStart = false;
    while (i < n) {
      const c = s.charCodeAt(i);
      if (this.inQuotes) {
        const q = s.indexOf('"', i);
        if (q < 0) {
          this.field += s.slice(i);
          i = n;
          break;
        }
        this.field += s.slice(i, q);
        if (s.charCodeAt(q + 1) === 34) {
          this.field += '"';
          i = q + 2;
        } else {
          this.inQuotes = false;
          i = q + 1;
        }
        continue;
      }
      if (c === 44 /* , */) {
        this.fields.push(this.field);
        this.field = '';
        fieldStart = true;
        i++;
        continue;
      }
      if (c === 34 && fieldStart && this.field.trim() === '') {
        this.field = '';
        this.inQuotes = true;
        fieldStart = false;
        i++;
        continue;
      }
      const next = s.indexOf(',', i);
      const stop = next < 0 ? n : next;
      const chunk = s.slice(i, stop);
      if (chunk.indexOf('"') >= 0 && !this.recordBad) {
        problems.push(
          diagnostic('csv-bad-quote', {
            message: 'a double quote inside an unquoted field',
            file: this.file,
            line: l.line,
            column: i + chunk.indexOf('"') + 1,
            row: this.header === null ? undefined : this.rows + 1,
            hint: 'quote the whole field and double the inner quotes: "he said ""hi"""',
          }),
        );
        this.recordBad = true;
      }
      this.field += chunk;
      fieldStart = false;
      i = stop;
    }
    if (this.inQuotes) return;
    this.fields.push(this.field);
    this.field = '';
    this.pending = false;
    this.finishRecord(out, problems);
  }

  private finishRecord(out: SourceRecord[], problems: Diagnostic[]): void {
    const fields = this.fields;
    this.fields = [];
    if (this.header === null) {
      this.header = fields.map((f) => f.trim());
      this.headerLine = this.recordLine;
      const seen = new Set<string>();
      this.header.forEach((h, k) => {
        if (h === '' || seen.has(h)) {
          problems.push(
            diagnostic('csv-missing-column', {
              message: h === '' ? `column ${k + 1} of the header has no name` : `column name "${h}" appears twice in the header`,
              file: this.file,
              line: this.headerLine,
              hint: 'the first line of a CSV file must name every column once',
            }),
          );
        }
        seen.add(h);
      });
      return;
    }
    this.rows++;
    if (this.recordBad) return;
    if (fields.length !== this.header.length) {
      problems.push(
        diagnostic('csv-column-count', {
          message: `row has ${fields.length} field${fields.length === 1 ? '' : 's'}, the header has ${this.header.length}`,
          file: this.file,
          line: this.recordLine,
          column: 1,
          row: this.rows,
          hint: 'a comma inside a value needs the value in double quotes',
        }),
      );
      return;
    }
    const value: Record<string, string> = {};
    for (let k = 0; k < fields.length; k++) value[this.header[k]] = fields[k];
    out.push({ row: this.rows, line: this.recordLine, value });
  }

  end(_out: SourceRecord[], problems: Diagnostic[]): void {
    if (this.pending && this.inQuotes) {
      this.rows++;
      problems.push(
        diagnostic('csv-bad-quote', {
          message: 'a quoted field starting in this record is never closed (the file ends inside it)',
          file: this.file,
          line: this.recordLine,
          column: 1,
          row: this.rows,
          hint: 'look for a missing closing double quote',
        }),
      );
    }
  }

  /** The header columns, for diagnostics about missing columns. */
  columns(): { names: string[]; line: number } | null {
    return this.header ? { names: this.header, line: this.headerLine } : null;
  }
}
