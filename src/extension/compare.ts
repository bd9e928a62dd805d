// Compare Runs: an editor tab overlaying the loss curves of the chosen runs (read from their
// events.jsonl) and listing the settings in which their run.json differ.

import * as vscode from 'vscode';
import * as path from 'node:path';
import { diffConfigs, fromRunJson } from '../core/config';
import { readEvents, readRunJson, summarizeRun } from '../core/runs/runs';
import { parsePanelMessage, type CompareDiff, type CompareRun } from '../../webview/protocol';
import { downsample } from '../../webview/series';
import { renderCompareHtml } from './panelHtml';

const MAX_POINTS = 4000;

function display(v: unknown): string {
  if (v === undefined) return '–';
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** The compare message for these run folders (pure; exported for tests). */
export function buildComparison(dirs: readonly string[]): { runs: CompareRun[]; diff: CompareDiff[] } {
  const runs: CompareRun[] = [];
  const configs = dirs.map((d) => fromRunJson(readRunJson(d) ?? {}));
  for (const dir of dirs) {
    const s = summarizeRun(dir);
    const steps: number[] = [], loss: number[] = [], evalSteps: number[] = [], evalLoss: number[] = [];
    for (const e of readEvents(dir)) {
      if (e.type === 'step') {
        // A resumed run repeats steps after its checkpoint; keep the latest value of each.
        while (steps.length && steps[steps.length - 1]! >= e.step) { steps.pop(); loss.pop(); }
        steps.push(e.step);
        loss.push(e.loss ?? NaN);
      } else if (e.type === 'eval') {
        while (evalSteps.length && evalSteps[evalSteps.length - 1]! >= e.step) { evalSteps.pop(); evalLoss.pop(); }
        evalSteps.push(e.step);
        evalLoss.push(e.loss ?? NaN);
      }
    }
    const d = downsample(steps, [loss], MAX_POINTS);
    runs.push({ id: s.id, label: s.name, status: s.status, steps: d.x, loss: d.ys[0]!, evalSteps, evalLoss });
  }
  // Every field that differs between any run and the first, with each run's value.
  const fields = new Set<string>();
  for (let i = 1; i < configs.length; i++) for (const f of diffConfigs(configs[0]!, configs[i]!)) fields.add(f.field);
  const get = (c: unknown, field: string) => field.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), c);
  const diff = [...fields].sort().map((field) => ({ field, values: configs.map((c) => display(get(c, field))) }));
  return { runs, diff };
}

export function compareRuns(extensionUri: vscode.Uri, dirs: string[]): vscode.WebviewPanel {
  const dist = vscode.Uri.joinPath(extensionUri, 'dist', 'webview');
  const panel = vscode.window.createWebviewPanel('loraStudio.compare', `Compare: ${dirs.map((d) => path.basename(d)).join(' · ')}`,
                                                 vscode.ViewColumn.Active, { enableScripts: true, localResourceRoots: [dist] });
  panel.webview.html = renderCompareHtml({
    cspSource: panel.webview.cspSource,
    scriptUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'compare.js')).toString(),
    styleUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'panel.css')).toString(),
  });
  const sub = panel.webview.onDidReceiveMessage((raw) => {
    const m = parsePanelMessage(raw);
    if (m.ok && m.value.type === 'ready') void panel.webview.postMessage({ type: 'compare', ...buildComparison(dirs) });
  });
  panel.onDidDispose(() => sub.dispose());
  return panel;
}
