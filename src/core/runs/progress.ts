// Training progress from runtime events: what a progress bar, a status bar item or a log line
// shows (step, loss, tokens/s, ETA). Pure: fed events, no I/O.
import { RuntimeEvent } from '../runtime/events';

export interface ProgressState {
  step: number;
  stepsTotal: number | null;
  loss: number | null;
  /** Exponential moving average of the loss (smoothing 0.9), for a steadier display. */
  smoothedLoss: number | null;
  evalLoss: number | null;
  lr: number | null;
  tokensPerS: number | null;
  elapsedS: number;
  etaS: number | null;
  memPeak: number | null;
  status: 'starting' | 'training' | 'completed' | 'stopped' | 'failed';
  adapter: string | null;
}

export class ProgressTracker {
  readonly state: ProgressState = {
    step: 0, stepsTotal: null, loss: null, smoothedLoss: null, evalLoss: null, lr: null, tokensPerS: null,
    elapsedS: 0, etaS: null, memPeak: null, status: 'starting', adapter: null,
  };
  // Steps and seconds measured in this process's session: after a resume, elapsed_s restarts
  // while step does not, so the rate comes from the session's own first step.
  private sessionFirst: { step: number; elapsed: number } | null = null;

  update(e: RuntimeEvent): void {
    const s = this.state;
    switch (e.type) {
      case 'plan':
        s.stepsTotal = e.steps_total;
        this.sessionFirst = null;
        break;
      case 'step': {
        s.status = 'training';
        s.step = e.step;
        s.loss = e.loss;
        if (e.loss !== null && Number.isFinite(e.loss)) s.smoothedLoss = s.smoothedLoss === null ? e.loss : 0.9 * s.smoothedLoss + 0.1 * e.loss;
        s.lr = e.lr;
        s.tokensPerS = e.tokens_per_s;
        s.elapsedS = e.elapsed_s;
        s.memPeak = e.mem.peak;
        if (!this.sessionFirst) this.sessionFirst = { step: e.step - 1, elapsed: 0 };
        const doneSteps = e.step - this.sessionFirst.step;
        const secs = e.elapsed_s - this.sessionFirst.elapsed;
        s.etaS = s.stepsTotal !== null && doneSteps > 0 && secs > 0 ? (Math.max(0, s.stepsTotal - e.step) * secs) / doneSteps : null;
        break;
      }
      case 'eval':
        s.evalLoss = e.loss;
        break;
      case 'done':
        s.status = e.status;
        s.step = Math.max(s.step, e.step);
        s.etaS = e.status === 'completed' ? 0 : null;
        s.adapter = e.adapter ?? null;
        break;
      default:
        break;
    }
  }
}

export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '--';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function fmtLoss(v: number | null): string {
  return v === null ? '--' : Number.isFinite(v) ? v.toFixed(4) : 'NaN';
}

/** One progress line; with `barWidth` > 0 it starts with a bar, for terminals. */
export function formatProgress(s: ProgressState, barWidth = 0): string {
  const total = s.stepsTotal ?? 0;
  const frac = total > 0 ? Math.min(1, s.step / total) : 0;
  const parts: string[] = [];
  if (barWidth > 0) {
    const filled = Math.round(frac * barWidth);
    parts.push(`[${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}%`);
  }
  parts.push(`step ${s.step}/${total || '?'}`);
  parts.push(`loss ${fmtLoss(s.loss)}`);
  if (s.evalLoss !== null) parts.push(`eval ${fmtLoss(s.evalLoss)}`);
  parts.push(`${s.tokensPerS === null ? '--' : Math.round(s.tokensPerS)} tok/s`);
  parts.push(`ETA ${formatDuration(s.etaS)}`);
  return parts.join(' · ');
}
