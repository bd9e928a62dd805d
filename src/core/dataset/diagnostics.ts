// Problems found in a dataset, shaped so that the extension can turn each one into a
// vscode.Diagnostic (file + 1-based line/column) and the CLI can print it as
// "file:line:column: severity: message (code)". Rows are 1-based data rows (the header of a
// CSV file and blank lines are not rows), lines and columns are 1-based positions in the file.

export type Severity = 'error' | 'warning' | 'info';

export interface Diagnostic {
  severity: Severity;
  /** Stable identifier, e.g. `bad-json`, `missing-field`; tests and the UI key on it. */
  code: string;
  message: string;
  file: string;
  line?: number;
  column?: number;
  row?: number;
  hint?: string;
}

/** Every diagnostic code the data pipeline emits, with its severity. */
export const DIAGNOSTIC_CODES = {
  'file-not-found': 'error',
  'file-unreadable': 'error',
  'file-empty': 'error',
  'bad-encoding': 'error',
  'utf16-file': 'error',
  'bad-json': 'error',
  'not-an-object': 'error',
  'not-an-array': 'error',
  'csv-bad-quote': 'error',
  'csv-column-count': 'error',
  'csv-missing-column': 'error',
  'unknown-format': 'error',
  'missing-field': 'error',
  'wrong-type': 'error',
  'empty-answer': 'error',
  'empty-text': 'error',
  'unknown-role': 'error',
  'no-assistant-turn': 'error',
  'template-error': 'error',
  'template-lost-content': 'error',
  'template-unlocatable-turn': 'error',
  'over-length': 'warning',
  'duplicate-row': 'warning',
  'train-eval-overlap': 'warning',
  'empty-message': 'warning',
  'eos-appended': 'info',
  'fallback-template': 'info',
  'eval-too-small': 'warning',
  'too-many-diagnostics': 'info',
  'unusable-dataset': 'error',
} as const satisfies Record<string, Severity>;

export type DiagnosticCode = keyof typeof DIAGNOSTIC_CODES;

export interface DiagnosticInit {
  message: string;
  file: string;
  line?: number;
  column?: number;
  row?: number;
  hint?: string;
}

export function diagnostic(code: DiagnosticCode, init: DiagnosticInit): Diagnostic {
  const d: Diagnostic = { severity: DIAGNOSTIC_CODES[code], code, message: init.message, file: init.file };
  if (init.line !== undefined) d.line = init.line;
  if (init.column !== undefined) d.column = init.column;
  if (init.row !== undefined) d.row = init.row;
  if (init.hint !== undefined) d.hint = init.hint;
  return d;
}

/**
 * Collects diagnostics with a cap per code: a million-row file with one systematic problem
 * must not produce a million diagnostics (the Problems panel and the summary would drown).
 * Everything is still counted; the overflow is reported once per code at the end.
 */
export class DiagnosticSink {
  private readonly items: Diagnostic[] = [];
  private readonly perCode = new Map<string, number>();
  private readonly firstFile = new Map<string, string>();

  constructor(private readonly maxPerCode = 200) {}

  add(d: Diagnostic): void {
    const n = (this.perCode.get(d.code) ?? 0) + 1;
    this.perCode.set(d.code, n);
    if (n <= this.maxPerCode) this.items.push(d);
    else if (!this.firstFile.has(d.code)) this.firstFile.set(d.code, d.file);
  }

  emit(code: DiagnosticCode, init: DiagnosticInit): void {
    this.add(diagnostic(code, init));
  }

  count(code?: string): number {
    if (code === undefined) {
      let total = 0;
      for (const n of this.perCode.values()) total += n;
      return total;
    }
    return this.perCode.get(code) ?? 0;
  }

  /** Counts per code, including the ones past the cap. */
  counts(): Record<string, number> {
    return Object.fromEntries(this.perCode);
  }

  hasErrors(): boolean {
    for (const d of this.items) if (d.severity === 'error') return true;
    return false;
  }

  /** The kept diagnostics, followed by one `too-many-diagnostics` note per capped code. */
  list(): Diagnostic[] {
    const out = this.items.slice();
    for (const [code, file] of this.firstFile) {
      const total = this.perCode.get(code) ?? 0;
      out.push(
        diagnostic('too-many-diagnostics', {
          message: `${total - this.maxPerCode} more "${code}" problems not listed (${total} in all)`,
          file,
        }),
      );
    }
    return out;
  }
}

/** One line per diagnostic, in the format compilers use, so terminals make it clickable. */
export function formatDiagnostic(d: Diagnostic): string {
  let where = d.file;
  if (d.line !== undefined) {
    where += `:${d.line}`;
    if (d.column !== undefined) where += `:${d.column}`;
  }
  const row = d.row !== undefined ? ` [row ${d.row}]` : '';
  const hint = d.hint ? `\n  hint: ${d.hint}` : '';
  return `${where}: ${d.severity}: ${d.message}${row} (${d.code})${hint}`;
}

/** Raised for problems that make the whole operation impossible (no usable rows, no tokenizer). */
export class DatasetError extends Error {
  /** The message without the hint. */
  readonly reason: string;
  constructor(
    message: string,
    readonly diagnostics: Diagnostic[] = [],
    readonly hint?: string,
  ) {
    super(hint ? `${message}\n  hint: ${hint}` : message);
    this.name = 'DatasetError';
    this.reason = message;
  }
}
