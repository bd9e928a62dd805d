// Entry point. activate() only constructs and registers: every disposable goes into
// context.subscriptions and nothing heavy runs here (core modules that load the tokenizer
// or scan folders are imported lazily by the code that needs them).

import { moduleLoadStart } from './activationClock';
import * as vscode from 'vscode';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DatasetWatcher } from './datasetWatcher';
import { OutputLog } from './log';
import { PathGuard } from './pathGuard';
import { RunItem, RunsTreeProvider } from './runsTree';
import { TrainingStatusBar } from './statusBar';
import { TrainingController } from './training';
import { TrainingViewProvider } from './trainingView';

const moduleLoadMs = performance.now() - moduleLoadStart;

/** What the integration tests reach through the extension's exports. */
export interface LoraStudioApi {
  training: TrainingController;
  runs: RunsTreeProvider;
  view: TrainingViewProvider;
  runsRoot(): string | null;
  /** activate() alone, and loading the extension's modules (before VS Code calls activate), in milliseconds. */
  activationMs: number;
  moduleLoadMs: number;
}

function runsRoot(): string | null {
  const folder = vscode.workspace.workspaceFolders?.[0];
  const setting = vscode.workspace.getConfiguration('loraStudio', folder?.uri).get<string>('runsFolder', '.lora-studio/runs') || '.lora-studio/runs';
  if (path.isAbsolute(setting)) return setting;
  return folder ? path.join(folder.uri.fsPath, setting) : null;
}

export function activate(context: vscode.ExtensionContext): LoraStudioApi {
  const t0 = performance.now();
  const log = new OutputLog();
  const statusBar = new TrainingStatusBar();
  const guard = new PathGuard(() => (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath));
  let view: TrainingViewProvider | undefined;
  const datasets = new DatasetWatcher(log, (file) => void view?.selectDataset(file));
  const training = new TrainingController(log, statusBar, runsRoot, (file) => void datasets.watch(file), context.extensionUri.fsPath);
  view = new TrainingViewProvider(context.extensionUri, guard, training, log);
  training.setUi(view);
  const runs = new RunsTreeProvider(runsRoot);
  const runsView = vscode.window.createTreeView('loraStudio.runsView', { treeDataProvider: runs, canSelectMany: true, showCollapseAll: true });

  const pickRun = async (arg: unknown, prompt: string, filter: (r: RunItem['run']) => boolean = () => true): Promise<string | null> => {
    if (arg instanceof RunItem) return arg.run.dir;
    if (typeof arg === 'string') {
      // Another extension (or a test) may name a run folder: only one under the runs folder.
      const root = runsRoot();
      const dir = path.resolve(arg);
      if (root && path.dirname(dir) === path.resolve(root) && fs.existsSync(path.join(dir, 'run.json'))) return dir;
      void vscode.window.showWarningMessage(`LoRA Studio: ${arg} is not a run folder in ${root ?? 'the runs folder'}.`);
      return null;
    }
    const selected = runsView.selection.find((s): s is RunItem => s instanceof RunItem);
    if (selected && filter(selected.run)) return selected.run.dir;
    const list = (await runs.list()).filter(filter);
    if (!list.length) {
      void vscode.window.showInformationMessage('LoRA Studio: no matching runs.');
      return null;
    }
    const pick = await vscode.window.showQuickPick(list.map((r) => ({ label: r.name, description: `${r.status} · ${r.step} steps`, detail: r.dir, dir: r.dir })), { placeHolder: prompt });
    return pick?.dir ?? null;
  };

  const command = (id: string, fn: (...args: any[]) => unknown) => vscode.commands.registerCommand(id, fn);

  // Pinned prompts run against every new adapter, in the background, when the workspace has any.
  const runPinnedAfterTraining = async (runDir: string): Promise<void> => {
    const workspaceDir = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    if (!workspaceDir || !fs.existsSync(path.join(workspaceDir, '.lora-studio', 'pinned-prompts.json'))) return;
    await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `LoRA Studio: pinned prompts for ${path.basename(runDir)}`, cancellable: true },
      async (progress, token) => {
        try {
          const { locateRuntime } = await import('../core/runtime/locate');
          const { runPinnedForRun } = await import('../core/playground/pinnedRun');
          const { preparePlaygroundInWorker } = await import('./exportInWorker');
          const runtime = await locateRuntime({ setting: vscode.workspace.getConfiguration('loraStudio').get<string>('runtimePath', ''), root: context.extensionUri.fsPath });
          const r = await runPinnedForRun({ runDir, workspaceDir, runtimePath: runtime.path, token, onProgress: (message) => progress.report({ message }), onLog: (l) => log.runtime(l),
                                            prepare: preparePlaygroundInWorker });
          if (!r || token.isCancellationRequested) return;
          log.info(`pinned prompts: ${r.outputs.length} answers saved to ${r.file}`);
          const a = await vscode.window.showInformationMessage(`LoRA Studio: answers to ${r.outputs.length} pinned prompts saved beside ${path.basename(runDir)}.`, 'Open');
          if (a) await vscode.window.showTextDocument(vscode.Uri.file(r.file));
        } catch (e) {
          if (token.isCancellationRequested) return;
          log.error(`pinned prompts for ${runDir}: ${(e as Error).message}`);
          void vscode.window.showWarningMessage(`LoRA Studio: pinned prompts for ${path.basename(runDir)} failed: ${(e as Error).message}`);
        }
      });
  };

  context.subscriptions.push(
    log, statusBar, datasets, training, view, runs, runsView,
    vscode.window.registerWebviewViewProvider(TrainingViewProvider.viewId, view, { webviewOptions: { retainContextWhenHidden: true } }),
    training.onDidChangeRuns(() => runs.refresh()),
    training.onDidCompleteRun((dir) => void runPinnedAfterTraining(dir)),
    vscode.workspace.onDidGrantWorkspaceTrust(() => void view?.setTrust(true)),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('loraStudio.runsFolder')) runs.refresh();
    }),

    command('loraStudio.newTrainingRun', () => view!.reveal()),
    command('loraStudio.fineTuneDataset', async (uri?: vscode.Uri) => {
      const target = uri instanceof vscode.Uri ? uri : vscode.window.activeTextEditor?.document.uri;
      if (!target || target.scheme !== 'file' || !/\.(jsonl|json|csv)$/i.test(target.fsPath)) {
        void vscode.window.showWarningMessage('LoRA Studio: choose a .jsonl, .json or .csv dataset file.');
        return;
      }
      view!.reveal();
      await view!.selectDataset(target.fsPath);
    }),
    command('loraStudio.stopTraining', () => training.stop()),
    command('loraStudio.resumeRun', async (arg?: unknown) => {
      const dir = await pickRun(arg, 'Run to resume', (r) => r.status !== 'running' && r.status !== 'completed' && r.lastCheckpoint !== null);
      if (dir) await training.resume(dir);
    }),
    command('loraStudio.openRun', async (arg?: unknown) => {
      const dir = await pickRun(arg, 'Run to open');
      if (dir) training.openRun(dir);
    }),
    command('loraStudio.compareRuns', async (arg?: unknown, selected?: unknown[]) => {
      const chosen = (selected ?? runsView.selection).filter((s): s is RunItem => s instanceof RunItem).map((s) => s.run);
      let dirs = chosen.map((r) => r.dir);
      if (dirs.length < 2) {
        const list = await runs.list();
        const picks = await vscode.window.showQuickPick(
          list.map((r) => ({ label: r.name, description: `${r.status} · ${r.step} steps`, picked: dirs.includes(r.dir) || (arg instanceof RunItem && arg.run.dir === r.dir), dir: r.dir })),
          { canPickMany: true, placeHolder: 'Runs to compare (two or more)' });
        dirs = (picks ?? []).map((p) => p.dir);
      }
      if (dirs.length < 2) {
        if (dirs.length === 1) void vscode.window.showInformationMessage('LoRA Studio: pick at least two runs to compare.');
        return;
      }
      const { compareRuns } = await import('./compare');
      compareRuns(context.extensionUri, dirs);
    }),
    command('loraStudio.revealAdapter', async (arg?: unknown) => {
      const dir = await pickRun(arg, 'Run whose adapter to reveal', (r) => r.adapter !== null);
      if (dir) await training.revealAdapter(path.basename(dir));
    }),
    command('loraStudio.tryAdapter', async (arg?: unknown) => {
      const dir = await pickRun(arg, 'Run whose adapter to try', (r) => r.adapter !== null && r.status !== 'running');
      if (!dir) return;
      const { openPlayground } = await import('./playground');
      openPlayground({ extensionUri: context.extensionUri, log, workspaceDir: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? null }, dir);
    }),
    command('loraStudio.exportAdapter', async (arg?: unknown, options?: import('./exportCommand').ExportCommandArgs) => {
      const dir = await pickRun(arg, 'Run whose adapter to export', (r) => r.adapter !== null && r.status !== 'running');
      if (!dir) return undefined;
      const { exportRunAdapter } = await import('./exportCommand');
      return exportRunAdapter({ extensionUri: context.extensionUri, log, workspaceDir: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? null }, dir, options);
    }),
    command('loraStudio.showRuntimeLog', () => log.show()),
    command('loraStudio.refreshRuns', () => runs.refresh()),
  );

  // Follow a run that kept training across a window reload; after activation, not during it.
  setTimeout(() => void training.reattach().catch((e) => log.error(`re-attach: ${(e as Error).message}`)), 0);

  const activationMs = performance.now() - t0;
  log.info(`activated in ${activationMs.toFixed(1)} ms; loading the extension's modules took ${moduleLoadMs.toFixed(1)} ms`);
  return { training, runs, view, runsRoot, activationMs, moduleLoadMs };
}

export function deactivate(): void {
  // Disposables in context.subscriptions are released by VS Code; a running job keeps going.
}
