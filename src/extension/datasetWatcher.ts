// Watches the selected dataset with chokidar and re-validates it when it changes; the
// findings go to the Problems panel with their line and column, and to a listener (the
// training panel's summary). One dataset is watched at a time: the one the panel uses.

import * as vscode from 'vscode';
import type { FSWatcher } from 'chokidar';
import type { Diagnostic } from '../core/dataset/diagnostics';
import type { Log } from './log';

const DEBOUNCE_MS = 300;

function toVscode(d: Diagnostic): vscode.Diagnostic {
  const line = Math.max(0, (d.line ?? 1) - 1);
  const col = Math.max(0, (d.column ?? 1) - 1);
  // Without a column the whole line is marked; the editor clamps the end to the line length.
  const range = new vscode.Range(line, d.column ? col : 0, line, d.column ? col + 1 : Number.MAX_SAFE_INTEGER);
  const severity = d.severity === 'error' ? vscode.DiagnosticSeverity.Error
    : d.severity === 'warning' ? vscode.DiagnosticSeverity.Warning : vscode.DiagnosticSeverity.Information;
  const out = new vscode.Diagnostic(range, d.hint ? `${d.message} (${d.hint})` : d.message, severity);
  out.source = 'LoRA Studio';
  out.code = d.code;
  return out;
}

export class DatasetWatcher implements vscode.Disposable {
  private readonly collection = vscode.languages.createDiagnosticCollection('loraStudio.dataset');
  private watcher: FSWatcher | null = null;
  private file: string | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private seq = 0;

  constructor(
    private readonly log: Log,
    /** Called after each validation triggered by a change on disk. */
    private readonly onRevalidated: (file: string) => void,
  ) {}

  /** Validates `file` now and then on every change; stops watching the previous file. */
  async watch(file: string): Promise<void> {
    if (this.file === file && this.watcher) return;
    await this.close();
    this.file = file;
    const { watch } = await import('chokidar');
    this.watcher = watch(file, { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
    this.watcher.on('all', (event) => {
      if (event !== 'change' && event !== 'add' && event !== 'unlink') return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.validate(file, true), DEBOUNCE_MS);
    });
    this.watcher.on('error', (e) => this.log.warn(`watching ${file}: ${(e as Error).message}`));
    await this.validate(file, false);
  }

  /** Runs validation and publishes the diagnostics; returns them for the caller's use. */
  async validate(file: string, notify: boolean): Promise<Diagnostic[]> {
    const seq = ++this.seq;
    const { validateDataset } = await import('../core/dataset/validate');
    const r = await validateDataset(file);
    if (seq !== this.seq || this.file !== file) return r.diagnostics;
    const byFile = new Map<string, vscode.Diagnostic[]>();
    for (const d of r.diagnostics) {
      const target = d.file || file;
      if (!byFile.has(target)) byFile.set(target, []);
      byFile.get(target)!.push(toVscode(d));
    }
    this.collection.clear();
    for (const [f, ds] of byFile) this.collection.set(vscode.Uri.file(f), ds);
    if (notify) this.onRevalidated(file);
    return r.diagnostics;
  }

  private async close(): Promise<void> {
    clearTimeout(this.timer);
    const w = this.watcher;
    this.watcher = null;
    this.file = null;
    this.collection.clear();
    if (w) await w.close();
  }

  dispose(): void {
    void this.close();
    this.collection.dispose();
  }
}
