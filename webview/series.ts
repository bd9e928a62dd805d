// The full metric history of one run, kept in the panel, and the reductions that turn it
// into what is drawn. Kept free of DOM access so the logic is easy to reason about; the
// display never holds more than a few thousand points however long the run.

import type { ChartEvent } from './protocol';

export class RunSeries {
  steps: number[] = [];
  loss: number[] = [];
  lr: number[] = [];
  tokensPerS: number[] = [];
  memUsed: number[] = [];
  memPeak: number[] = [];
  memTotal: number[] = [];
  elapsed: number[] = [];
  evalSteps: number[] = [];
  evalLoss: number[] = [];
  stepsTotal: number | null = null;
  done: Extract<ChartEvent, { type: 'done' }> | null = null;
  error: Extract<ChartEvent, { type: 'error' }> | null = null;

  add(e: ChartEvent): void {
    switch (e.type) {
      case 'plan':
        this.stepsTotal = e.steps_total;
        break;
      case 'step': {
        // A resumed run replays from its checkpoint: drop the steps it is about to redo so
        // the x axis stays monotonic (uPlot requires sorted x values).
        while (this.steps.length && this.steps[this.steps.length - 1]! >= e.step) this.popStep();
        this.steps.push(e.step);
        this.loss.push(e.loss);
        this.lr.push(e.lr);
        this.tokensPerS.push(e.tokens_per_s);
        this.memUsed.push(e.mem.used);
        this.memPeak.push(e.mem.peak);
        this.memTotal.push(e.mem.device_total);
        this.elapsed.push(e.elapsed_s);
        break;
      }
      case 'eval':
        while (this.evalSteps.length && this.evalSteps[this.evalSteps.length - 1]! >= e.step) {
          this.evalSteps.pop();
          this.evalLoss.pop();
        }
        this.evalSteps.push(e.step);
        this.evalLoss.push(e.loss);
        break;
      case 'done':
        this.done = e;
        break;
      case 'error':
        this.error = e;
        break;
    }
  }

  private popStep(): void {
    for (const a of [this.steps, this.loss, this.lr, this.tokensPerS, this.memUsed, this.memPeak, this.memTotal, this.elapsed]) a.pop();
  }

  get lastStep(): number | null {
    return this.steps.length ? this.steps[this.steps.length - 1]! : null;
  }

  /** Seconds left, from the mean time per step so far; null before there is a rate. */
  etaSeconds(): number | null {
    const n = this.steps.length;
    if (!this.stepsTotal || n < 2) return null;
    const first = this.steps[0]!, last = this.steps[n - 1]!;
    const dt = this.elapsed[n - 1]! - this.elapsed[0]!;
    if (last <= first || dt <= 0) return null;
    return Math.max(0, ((this.stepsTotal - last) * dt) / (last - first));
  }
}

/**
 * Exponential moving average with the start-up bias removed (as TensorBoard smooths),
 * so the first points are not pulled towards zero. NaN inputs are carried through
 * without poisoning the average.
 */
export function smooth(values: readonly number[], weight: number): number[] {
  const out = new Array<number>(values.length);
  let ema = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) {
      out[i] = NaN;
      continue;
    }
    n++;
    ema = ema * weight + (1 - weight) * v;
    out[i] = weight === 0 ? v : ema / (1 - Math.pow(weight, n));
  }
  return out;
}

/**
 * Reduces aligned series (shared x) to at most `maxPoints` points: each bucket of
 * consecutive samples becomes two points carrying each series' minimum and maximum, so
 * spikes stay visible while the number of points drawn is bounded.
 * Returns the arrays unchanged when they are already small enough.
 */
export function downsample(x: readonly number[], ys: readonly (readonly number[])[], maxPoints: number): { x: number[]; ys: number[][] } {
  const n = x.length;
  if (n <= maxPoints || maxPoints < 4) return { x: x.slice(), ys: ys.map((y) => y.slice()) };
  const buckets = Math.floor(maxPoints / 2);
  const outX: number[] = [];
  const outYs: number[][] = ys.map(() => []);
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor((b * n) / buckets);
    const hi = Math.floor(((b + 1) * n) / buckets);
    if (hi <= lo) continue;
    outX.push(x[lo]!, x[hi - 1]!);
    ys.forEach((y, s) => {
      let min = Infinity, max = -Infinity;
      for (let i = lo; i < hi; i++) {
        const v = y[i]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const first = Number.isFinite(min) ? min : NaN;
      const last = Number.isFinite(max) ? max : NaN;
      // Order the pair by where they occur so a falling curve does not zig-zag.
      const rising = y[lo]! <= y[hi - 1]!;
      outYs[s]!.push(rising ? first : last, rising ? last : first);
    });
  }
  // Two points of one bucket can share an x when the bucket holds a single sample.
  const keepX: number[] = [];
  const keepYs: number[][] = ys.map(() => []);
  for (let i = 0; i < outX.length; i++) {
    if (i > 0 && outX[i] === outX[i - 1]) continue;
    keepX.push(outX[i]!);
    outYs.forEach((y, s) => keepYs[s]!.push(y[i]!));
  }
  return { x: keepX, ys: keepYs };
}

/** Merges sparse (x, y) points into a dense x axis, filling the gaps with null for uPlot. */
export function joinSparse(x: readonly number[], sparseX: readonly number[], sparseY: readonly number[], dense: readonly (readonly number[])[]):
    { x: number[]; dense: (number | null)[][]; sparse: (number | null)[] } {
  const outX: number[] = [];
  const outDense: (number | null)[][] = dense.map(() => []);
  const outSparse: (number | null)[] = [];
  let i = 0, j = 0;
  while (i < x.length || j < sparseX.length) {
    const xi = i < x.length ? x[i]! : Infinity;
    const xj = j < sparseX.length ? sparseX[j]! : Infinity;
    if (xi < xj) {
      outX.push(xi);
      dense.forEach((d, s) => outDense[s]!.push(nullIfNaN(d[i]!)));
      outSparse.push(null);
      i++;
    } else if (xj < xi) {
      outX.push(xj);
      dense.forEach((_, s) => outDense[s]!.push(null));
      outSparse.push(nullIfNaN(sparseY[j]!));
      j++;
    } else {
      outX.push(xi);
      dense.forEach((d, s) => outDense[s]!.push(nullIfNaN(d[i]!)));
      outSparse.push(nullIfNaN(sparseY[j]!));
      i++;
      j++;
    }
  }
  return { x: outX, dense: outDense, sparse: outSparse };
}

function nullIfNaN(v: number): number | null {
  return Number.isFinite(v) ? v : null;
}
