// The Runs view: every run folder under the runs root, newest first, with status, steps,
// final loss and duration; children show the adapter and the newest checkpoint.
// The list is re-read when a run changes and when the runs folder changes on disk.

import * as vscode from 'vscode';
import * as path from 'node:path';
import type { FSWatcher } from 'chokidar';
import type { RunSummary } from '../core/runs/runs';

const ICONS: Record<RunSummary['status'], [string, string | undefined]> = {
  created: ['circle-outline', undefined],
  running: ['sync~spin', 'charts.blue'],
  completed: ['pass', 'testing.iconPassed'],
  stopped: ['debug-pause', 'charts.yellow'],
  failed: ['error', 'testing.iconFailed'],
  interrupted: ['warning', 'charts.orange'],
};

function duration(s: number | null): string {
  if (s === null) return '';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

export class RunItem extends vscode.TreeItem {
  constructor(readonly run: RunSummary) {
    super(run.name, vscode.TreeItemCollapsibleState.Collapsed);
    this.id = run.id;
    const steps = run.stepsTotal ? `${run.step}/${run.stepsTotal}` : `${run.step}`;
    const loss = run.finalLoss !== null ? ` · loss ${run.finalLoss.toFixed(4)}` : '';
    const took = run.durationS !== null ? ` · ${duration(run.durationS)}` : '';
    this.description = `${run.status} · ${steps} steps${loss}${took}`;
    const [icon, color] = ICONS[run.status];
    this.iconPath = new vscode.ThemeIcon(icon, color ? new vscode.ThemeColor(color) : undefined);
    const flags = ['run', run.adapter ? 'adapter' : '', run.lastCheckpoint && run.status !== 'running' && run.status !== 'completed' ? 'resumable' : '',
                   run.status === 'running' ? 'running' : ''].filter(Boolean);
    this.contextValue = flags.join('.');
    const md = new vscode.MarkdownString(undefined, true);
    md.appendMarkdown(`**${run.name}**  \n`);
    md.appendMarkdown(`Status: ${run.status}  \nSteps: ${steps}  \n`);
    if (run.finalLoss !== null) md.appendMarkdown(`Final train loss: ${run.finalLoss.toFixed(4)}  \n`);
    if (run.lastEvalLoss !== null) md.appendMarkdown(`Last eval loss: ${run.lastEvalLoss.toFixed(4)}  \n`);
    if (run.durationS !== null) md.appendMarkdown(`Duration: ${duration(run.durationS)}  \n`);
    if (run.model) md.appendText(`Model: ${run.model}\n`);
    if (run.adapter) md.appendText(`Adapter: ${run.adapter}\n`);
    if (run.error) md.appendText(`Error: ${run.error.message}${run.error.hint ? ` (${run.error.hint})` : ''}\n`);
    this.tooltip = md;
    this.command = { command: 'loraStudio.openRun', title: 'Open Run', arguments: [this] };
  }
}

class DetailItem extends vscode.TreeItem {
  constructor(label: string, description: string, icon: string, resource?: string) {
    super(label, vscode.TreeItemCollapsibleState.None);
    this.description = description;
    this.iconPath = new vscode.ThemeIcon(icon);
    if (resource) {
      this.resourceUri = vscode.Uri.file(resource);
      this.tooltip = resource;
      this.command = { command: 'revealInExplorer', title: 'Reveal', arguments: [vscode.Uri.file(resource)] };
    }
  }
}

export class RunsTreeProvider implements vscode.TreeDataProvider<vscode.TreeItem>, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.emitter.event;
  private watcher: FSWatcher | null = null;
  private watchedRoot: string | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private runs: RunSummary[] = [];

  constructor(private readonly runsRoot: () => string | null) {}

  refresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.emitter.fire(), 100);
  }

  /** The runs as last listed (for commands that pick among them). */
  async list(): Promise<RunSummary[]> {
    const root = this.runsRoot();
    if (!root) return [];
    const { listRuns } = await import('../core/runs/runs');
    this.runs = listRuns(root);
    return this.runs;
  }

  getTreeItem(e: vscode.TreeItem): vscode.TreeItem {
    return e;
  }

  async getChildren(e?: vscode.TreeItem): Promise<vscode.TreeItem[]> {
    if (e instanceof RunItem) {
      const r = e.run;
      const out: vscode.TreeItem[] = [];
      if (r.adapter) out.push(new DetailItem('adapter', path.basename(path.dirname(r.adapter)) + '/' + path.basename(r.adapter), 'package', r.adapter));
      if (r.lastCheckpoint) out.push(new DetailItem('checkpoint', path.basename(r.lastCheckpoint), 'save', r.lastCheckpoint));
      if (r.model) out.push(new DetailItem('model', path.basename(r.model), 'symbol-class'));
      if (r.error) out.push(new DetailItem('error', r.error.message, 'error'));
      return out;
    }
    await this.ensureWatcher();
    return (await this.list()).map((r) => new RunItem(r));
  }

  /** Watches the runs folder (one level) so runs started elsewhere (the CLI) show up. */
  private async ensureWatcher(): Promise<void> {
    const root = this.runsRoot();
    if (root === this.watchedRoot) return;
    await this.watcher?.close();
    this.watcher = null;
    this.watchedRoot = root;
    if (!root) return;
    const { watch } = await import('chokidar');
    this.watcher = watch(root, { depth: 1, ignoreInitial: true });
    // Not events.jsonl: it grows every step, and re-listing on each line would re-read every
    // run's events. A run's start, checkpoints and end are signalled by TrainingController,
    // and a run started elsewhere shows up through its run.json and runtime.pid.
    this.watcher.on('all', (_ev, p) => {
      const base = path.basename(p);
      if (base === 'run.json' || base === 'runtime.pid' || path.dirname(p) === root) this.refresh();
    });
    this.watcher.on('error', () => undefined);
  }

  dispose(): void {
    clearTimeout(this.refreshTimer);
    void this.watcher?.close();
    this.emitter.dispose();
  }
}
