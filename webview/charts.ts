// The four live charts (loss, learning rate, memory, throughput), drawn with uPlot.
// Redraws are coalesced into one per animation frame however many events arrive, and
// each chart draws a downsampled copy bounded by its pixel width.

import uPlot from 'uplot';
import { RunSeries, downsample, joinSparse, smooth } from './series';

interface Palette { fg: string; grid: string; blue: string; orange: string; green: string; red: string; purple: string; yellow: string; font: string }

function cssVar(name: string, fallback: string): string {
  const v = getComputedStyle(document.body).getPropertyValue(name).trim();
  return v || fallback;
}

function palette(): Palette {
  return {
    fg: cssVar('--vscode-foreground', '#cccccc'),
    grid: cssVar('--vscode-editorWidget-border', cssVar('--vscode-widget-border', 'rgba(128,128,128,0.35)')),
    blue: cssVar('--vscode-charts-blue', '#3794ff'),
    orange: cssVar('--vscode-charts-orange', '#d18616'),
    green: cssVar('--vscode-charts-green', '#89d185'),
    red: cssVar('--vscode-charts-red', '#f14c4c'),
    purple: cssVar('--vscode-charts-purple', '#b180d7'),
    yellow: cssVar('--vscode-charts-yellow', '#cca700'),
    font: `${cssVar('--vscode-font-size', '12px')} ${cssVar('--vscode-font-family', 'sans-serif')}`,
  };
}

function withAlpha(color: string, alpha: number): string {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1]!, 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

export function formatBytes(b: number): string {
  if (!Number.isFinite(b)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = b;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

type ChartKind = 'loss' | 'lr' | 'mem' | 'tps';

interface ChartSlot { kind: ChartKind; el: HTMLElement; plot: uPlot | null; width: number }

const HEIGHT = 150;

export class Charts {
  private slots: ChartSlot[];
  private series = new RunSeries();
  private smoothing = 0.6;
  private frameRequested = false;
  private pal = palette();
  private resizeObserver: ResizeObserver;
  /** How many times the charts were redrawn; lets tests check that bursts are coalesced. */
  redraws = 0;

  constructor(container: Record<ChartKind, HTMLElement>) {
    this.slots = (Object.keys(container) as ChartKind[]).map((kind) => ({ kind, el: container[kind], plot: null, width: 0 }));
    this.resizeObserver = new ResizeObserver(() => this.relayout());
    for (const s of this.slots) this.resizeObserver.observe(s.el);
    // VS Code swaps the body's theme class when the user changes theme.
    new MutationObserver(() => this.rebuild()).observe(document.body, { attributes: true, attributeFilter: ['class'] });
  }

  get data(): RunSeries {
    return this.series;
  }

  reset(): void {
    this.series = new RunSeries();
    this.schedule();
  }

  setSmoothing(weight: number): void {
    this.smoothing = Math.min(0.999, Math.max(0, weight));
    this.schedule();
  }

  /** Marks the charts dirty; the actual draw happens once on the next animation frame. */
  schedule(): void {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.draw();
    });
  }

  private rebuild(): void {
    this.pal = palette();
    for (const s of this.slots) {
      s.plot?.destroy();
      s.plot = null;
    }
    this.schedule();
  }

  private relayout(): void {
    for (const s of this.slots) {
      const w = Math.floor(s.el.clientWidth);
      if (w > 0 && w !== s.width) {
        s.width = w;
        s.plot?.setSize({ width: w, height: HEIGHT });
      }
    }
    this.schedule();
  }

  private draw(): void {
    this.redraws++;
    for (const s of this.slots) {
      const width = Math.floor(s.el.clientWidth) || 300;
      const data = this.dataFor(s.kind, Math.max(64, width * 2));
      if (!s.plot) {
        s.el.textContent = '';
        s.plot = new uPlot(this.options(s.kind, width), data, s.el);
        s.width = width;
      } else {
        s.plot.setData(data);
      }
      s.el.dataset.points = String(data[0].length);
      s.el.dataset.samples = String(this.series.steps.length);
    }
  }

  private dataFor(kind: ChartKind, maxPoints: number): uPlot.AlignedData {
    const r = this.series;
    switch (kind) {
      case 'loss': {
        const smoothed = smooth(r.loss, this.smoothing);
        const d = downsample(r.steps, [r.loss, smoothed], maxPoints);
        const j = joinSparse(d.x, r.evalSteps, r.evalLoss, d.ys);
        return [j.x, j.dense[0]!, j.dense[1]!, j.sparse];
      }
      case 'lr': {
        const d = downsample(r.steps, [r.lr], maxPoints);
        return [d.x, d.ys[0]!];
      }
      case 'mem': {
        const d = downsample(r.steps, [r.memUsed, r.memPeak, r.memTotal], maxPoints);
        return [d.x, d.ys[0]!, d.ys[1]!, d.ys[2]!];
      }
      case 'tps': {
        const d = downsample(r.steps, [r.tokensPerS], maxPoints);
        return [d.x, d.ys[0]!];
      }
    }
  }

  private options(kind: ChartKind, width: number): uPlot.Options {
    const p = this.pal;
    const axis = (values?: uPlot.Axis['values'], size?: number): uPlot.Axis => ({
      stroke: p.fg, font: p.font, grid: { stroke: withAlpha(p.grid, 0.5), width: 1 }, ticks: { stroke: p.grid, width: 1 },
      ...(values ? { values } : {}), ...(size ? { size } : {}),
    });
    const bytesAxis: uPlot.Axis['values'] = (_u, vals) => vals.map((v) => formatBytes(v));
    const base = {
      width, height: HEIGHT,
      legend: { show: true, live: false },
      cursor: { drag: { x: true, y: false }, points: { size: 5 } },
      scales: { x: { time: false } },
    };
    const stepAxis = axis();
    switch (kind) {
      case 'loss':
        return {
          ...base, title: 'Loss',
          series: [
            { label: 'step' },
            { label: 'train', stroke: withAlpha(p.blue, 0.3), width: 1, spanGaps: true, points: { show: false } },
            { label: 'train (smoothed)', stroke: p.blue, width: 2, spanGaps: true, points: { show: false } },
            { label: 'eval', stroke: p.orange, width: 2, spanGaps: true, points: { show: true, size: 6, fill: p.orange } },
          ],
          axes: [stepAxis, axis(undefined, 50)],
        };
      case 'lr':
        return {
          ...base, title: 'Learning rate',
          series: [{ label: 'step' }, { label: 'lr', stroke: p.purple, width: 2, points: { show: false } }],
          axes: [stepAxis, axis((_u, vals) => vals.map((v) => v.toExponential(1)), 60)],
        };
      case 'mem':
        return {
          ...base, title: 'Memory',
          series: [
            { label: 'step' },
            { label: 'used', stroke: p.green, width: 2, points: { show: false }, value: (_u, v) => (v == null ? '–' : formatBytes(v)) },
            { label: 'peak', stroke: p.red, width: 1.5, dash: [6, 3], points: { show: false }, value: (_u, v) => (v == null ? '–' : formatBytes(v)) },
            { label: 'device total', stroke: withAlpha(p.fg, 0.6), width: 1, dash: [2, 3], points: { show: false }, value: (_u, v) => (v == null ? '–' : formatBytes(v)) },
          ],
          scales: { x: { time: false }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.05 : 1] } },
          axes: [stepAxis, axis(bytesAxis, 64)],
        };
      case 'tps':
        return {
          ...base, title: 'Tokens / s',
          series: [{ label: 'step' }, { label: 'tokens/s', stroke: p.yellow, width: 2, points: { show: false } }],
          scales: { x: { time: false }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
          axes: [stepAxis, axis(undefined, 56)],
        };
    }
  }
}
