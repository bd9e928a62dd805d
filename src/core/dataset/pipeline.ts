// Reads a dataset file as canonical examples: records from the streaming readers, the format
// resolved (auto or forced), each row converted or reported. Bad rows become diagnostics and
// are counted by reason; the good rows flow on.
import { Diagnostic, DiagnosticSink, diagnostic } from './diagnostics';
import { ConvertContext, DataFormat, Example, FORMAT_SPECS, FormatOption, FormatResolver, convertRecord } from './formats';
import { FileKind, detectFileKind, readRecords } from './readers';

export interface ExampleRow {
  file: string;
  row: number;
  line: number;
  example: Example;
}

export interface ExampleBatch {
  rows: ExampleRow[];
  bytesRead: number;
  totalBytes: number;
}

export interface ReadStats {
  /** Records seen, readable or not. */
  read: number;
  usable: number;
  /** Rows left out, by diagnostic code. */
  skipped: Record<string, number>;
}

export interface ReadExamplesOptions {
  format: FormatOption;
  /** Where diagnostics go; null reads silently (a second pass over the same file). */
  sink: DiagnosticSink | null;
  signal?: AbortSignal;
  chunkSize?: number;
}

export function emptyStats(): ReadStats {
  return { read: 0, usable: 0, skipped: {} };
}

export function countSkip(stats: ReadStats, code: string): void {
  stats.skipped[code] = (stats.skipped[code] ?? 0) + 1;
}

/**
 * Streams the examples of one file. `stats` is filled in as it goes; `resolvedFormat()` tells
 * the format auto-detection settled on.
 */
export class ExampleReader {
  readonly stats: ReadStats = emptyStats();
  private resolver: FormatResolver;
  private kind: FileKind | null = null;

  constructor(
    readonly file: string,
    private readonly opts: ReadExamplesOptions,
  ) {
    this.resolver = new FormatResolver(opts.format, file);
  }

  resolvedFormat(): DataFormat | null {
    return this.resolver.format;
  }

  fileKind(): FileKind | null {
    return this.kind;
  }

  async *batches(): AsyncGenerator<ExampleBatch> {
    const file = this.file;
    this.kind = await detectFileKind(file).catch(() => null);
    const ctx: ConvertContext = { file, fromCsv: this.kind === 'csv' };
    const sink = this.opts.sink;
    const emit = (d: Diagnostic) => sink?.add(d);
    let csvHeaderChecked = false;
    let csvUnusable: string | null = null;

    for await (const batch of readRecords(file, { kind: this.kind ?? undefined, signal: this.opts.signal, chunkSize: this.opts.chunkSize })) {
      this.stats.read = batch.rowsSeen;
      for (const p of batch.problems) {
        emit(p);
        if (p.severity === 'error' && (p.row !== undefined || p.code === 'bad-encoding')) countSkip(this.stats, p.code);
      }
      const rows: ExampleRow[] = [];
      for (const rec of batch.records) {
        if (csvUnusable) {
          countSkip(this.stats, 'csv-missing-column');
          continue;
        }
        const r = this.resolver.resolve(rec);
        if ('diagnostic' in r) {
          // A CSV file has the same columns on every row: one diagnostic on the header says it
          // all, instead of one per row.
          if (this.kind === 'csv' && !csvHeaderChecked && (r.diagnostic.code === 'missing-field' || r.diagnostic.code === 'unknown-format')) {
            const cols = batch.columns;
            csvUnusable = r.diagnostic.code;
            emit(
              diagnostic('csv-missing-column', {
                message: `${r.diagnostic.message.replace(/^row has fields/, 'the header has columns')}`,
                file,
                line: cols?.line ?? 1,
                column: 1,
                hint: `name the columns after a dataset format: ${FORMAT_SPECS.map((s) => s.required.join('+')).join(', ')}`,
              }),
            );
            countSkip(this.stats, 'csv-missing-column');
            continue;
          }
          csvHeaderChecked = true;
          emit(r.diagnostic);
          countSkip(this.stats, r.diagnostic.code);
          continue;
        }
        csvHeaderChecked = true;
        const c = convertRecord(rec, r.format, ctx);
        if (c.warnings) for (const w of c.warnings) emit(w);
        if (!c.ok) {
          for (const d of c.diagnostics) emit(d);
          countSkip(this.stats, c.diagnostics[0]?.code ?? 'invalid-row');
          continue;
        }
        rows.push({ file, row: rec.row, line: rec.line, example: c.example });
      }
      this.stats.usable += rows.length;
      yield { rows, bytesRead: batch.bytesRead, totalBytes: batch.totalBytes };
    }
  }
}
