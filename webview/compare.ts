// Compare Runs: the loss curves of several runs overlaid on one chart, and the settings
// in which the runs differ. Receives one validated `compare` message from the host.

import uPlot from 'uplot';
import { parseHostMessage, type CompareDiff, type CompareRun } from './protocol';
import { smooth } from './series';

interface VsCodeApi { postMessage(m: unknown): void }
declare function acquireVsCodeApi(): VsCodeApi;
const vscode = acquireVsCodeApi();

const COLORS = ['--vscode-charts-blue', '--vscode-charts-orange', '--vscode-charts-green', '--vscode-charts-purple', '--vscode-charts-red', '--vscode-charts-yellow'];

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

let plot: uPlot | null = null;

/** Joins the runs' step axes into one sorted axis with nulls where a run has no point. */
function align(series: { x: number[]; y: number[] }[]): uPlot.AlignedData {
  const xs = [...new Set(series.flatMap((s) => s.x))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const out: (number | null)[] = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => {
      const v = s.y[i]!;
      out[index.get(x)!] = Number.isFinite(v) ? v : null;
    });
    return out;
  });
  return [xs, ...ys] as uPlot.AlignedData;
}

function render(runs: CompareRun[], diff: CompareDiff[]): void {
  const chart = document.getElementById('compare-chart')!;
  const fg = cssVar('--vscode-foreground', '#ccc');
  const grid = cssVar('--vscode-editorWidget-border', 'rgba(128,128,128,0.4)');
  const series: uPlot.Series[] = [{ label: 'step' }];
  const data: { x: number[]; y: number[] }[] = [];
  runs.forEach((r, i) => {
    const color = cssVar(COLORS[i % COLORS.length]!, '#888');
    series.push({ label: `${r.label} (train)`, stroke: color, width: 2, spanGaps: true, points: { show: false } });
    data.push({ x: r.steps, y: smooth(r.loss, 0.6) });
    if (r.evalSteps.length) {
      series.push({ label: `${r.label} (eval)`, stroke: color, width: 1.5, dash: [6, 4], spanGaps: true, points: { show: true, size: 5, fill: color } });
      data.push({ x: r.evalSteps, y: r.evalLoss });
    }
  });
  plot?.destroy();
  chart.textContent = '';
  const axis: uPlot.Axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  plot = new uPlot({ width: Math.max(300, chart.clientWidth), height: 320, title: 'Loss (train smoothed, eval dashed)', series,
                     scales: { x: { time: false } }, axes: [axis, { ...axis, size: 56 }] }, align(data), chart);
  chart.dataset.series = String(series.length - 1);

  const table = document.getElementById('compare-diff') as HTMLTableElement;
  table.textContent = '';
  const head = table.createTHead().insertRow();
  head.insertCell().textContent = 'setting';
  for (const r of runs) head.insertCell().textContent = r.label;
  const body = table.createTBody();
  const status = body.insertRow();
  status.insertCell().textContent = 'status';
  for (const r of runs) status.insertCell().textContent = r.status;
  for (const d of diff) {
    const tr = body.insertRow();
    tr.insertCell().textContent = d.field;
    for (const v of d.values) tr.insertCell().textContent = v;
  }
  document.getElementById('compare-empty')!.hidden = diff.length > 0;
}

window.addEventListener('message', (ev: MessageEvent) => {
  const r = parseHostMessage(ev.data);
  if (!r.ok) {
    vscode.postMessage({ type: 'rejected', error: r.error });
    return;
  }
  if (r.value.type === 'compare') render(r.value.runs, r.value.diff);
});
vscode.postMessage({ type: 'ready' });
