// Run folders (DESIGN.md "Run folder"): creation under a runs root with a sortable id,
// run.json writing, listing with status and results derived from events.jsonl, and
// detection of a run whose runtime is still alive (RUN_DIR/runtime.pid + process check).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RuntimeEvent, parseEventLine } from '../runtime/events';
import { isProcessAlive, readPidFile } from '../runtime/process';
import { writeJsonAtomic } from '../util/atomicWrite';

export const RUN_FILES = {
  runJson: 'run.json',
  events: 'events.jsonl',
  pid: 'runtime.pid',
  log: 'runtime.log',
  data: 'data',
  adapter: 'adapter',
  checkpoints: 'checkpoints',
} as const;

/** A sortable, filesystem-safe id: UTC time to the second, then a slug of the name. */
export function makeRunId(name: string, now: Date = new Date()): string {
  const ts = now.toISOString().replace(/\.\d{3}Z$/, '').replace(/[-:]/g, '').replace('T', '-');
  const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'run';
  return `${ts}-${slug}`;
}

/** Creates RUNS_ROOT/ID/ and ID/data/; a suffix keeps ids unique within the same second. */
export function createRunDir(runsRoot: string, name: string, now: Date = new Date()): { id: string; dir: string } {
  fs.mkdirSync(runsRoot, { recursive: true });
  const base = makeRunId(name, now);
  for (let n = 1; n < 1000; n++) {
    const id = n === 1 ? base : `${base}-${n}`;
    const dir = path.join(runsRoot, id);
    try {
      fs.mkdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw e;
    }
    fs.mkdirSync(path.join(dir, RUN_FILES.data));
    return { id, dir };
  }
  throw new Error(`cannot create a run folder for "${name}" in ${runsRoot}: too many runs in the same second`);
}

export { writeJsonAtomic };

export function writeRunJson(runDir: string, runJson: Record<string, unknown>): string {
  const file = path.join(runDir, RUN_FILES.runJson);
  writeJsonAtomic(file, runJson);
  return file;
}

export function readRunJson(runDir: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(runDir, RUN_FILES.runJson), 'utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/** Reads complete new lines of a growing file from a byte offset. A partial last line stays
 *  unread until its newline arrives; a file that shrank (replaced) is read from the start. */
export class EventsTail {
  private offset = 0;
  private carry = Buffer.alloc(0);
  /** Lines that were not valid events, with why (for a log). */
  readonly invalid: { line: string; reason: string }[] = [];

  constructor(readonly file: string, startOffset = 0) {
    this.offset = startOffset;
  }

  get position(): number {
    return this.offset;
  }

  /** New complete lines since the last call. */
  readLines(): string[] {
    let fd: number;
    try {
      fd = fs.openSync(this.file, 'r');
    } catch {
      return [];
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < this.offset) {
        this.offset = 0;
        this.carry = Buffer.alloc(0);
      }
      const lines: string[] = [];
      const chunk = Buffer.alloc(1 << 16);
      while (this.offset < size) {
        const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, size - this.offset), this.offset);
        if (n <= 0) break;
        this.offset += n;
        let data = Buffer.concat([this.carry, chunk.subarray(0, n)]);
        let nl: number;
        while ((nl = data.indexOf(0x0a)) >= 0) {
          const line = data.subarray(0, nl).toString('utf8').replace(/\r$/, '');
          if (line.trim()) lines.push(line);
          data = data.subarray(nl + 1);
        }
        this.carry = Buffer.from(data);
      }
      return lines;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** New valid events since the last call; invalid lines are collected in `invalid`. */
  read(): RuntimeEvent[] {
    const events: RuntimeEvent[] = [];
    for (const line of this.readLines()) {
      const p = parseEventLine(line);
      if (p.kind === 'event') events.push(p.event);
      else if (p.kind === 'invalid') this.invalid.push({ line: p.line, reason: p.reason });
    }
    return events;
  }
}

export function readEvents(runDir: string): RuntimeEvent[] {
  return new EventsTail(path.join(runDir, RUN_FILES.events)).read();
}

export type RunStatus = 'created' | 'running' | 'completed' | 'stopped' | 'failed' | 'interrupted';

export interface RunSummary {
  id: string;
  dir: string;
  name: string;
  status: RunStatus;
  model: string | null;
  step: number;
  stepsTotal: number | null;
  finalLoss: number | null;
  lastEvalLoss: number | null;
  /** Seconds of training (last step's elapsed_s), null before the first step. */
  durationS: number | null;
  startedAt: string | null;
  adapter: string | null;
  lastCheckpoint: string | null;
  error: { message: string; hint?: string } | null;
  /** PID of the live runtime when status is running. */
  pid: number | null;
}

export interface EventsDigest {
  status: 'completed' | 'stopped' | 'failed' | null;
  step: number;
  stepsTotal: number | null;
  finalLoss: number | null;
  lastEvalLoss: number | null;
  durationS: number | null;
  adapter: string | null;
  lastCheckpoint: string | null;
  error: { message: string; hint?: string } | null;
}

/** Folds a run's events into what a list of runs shows. The last `done` wins, so a run that
 *  was stopped and resumed to completion reads as completed. */
export function digestEvents(events: readonly RuntimeEvent[]): EventsDigest {
  const d: EventsDigest = {
    status: null, step: 0, stepsTotal: null, finalLoss: null, lastEvalLoss: null, durationS: null,
    adapter: null, lastCheckpoint: null, error: null,
  };
  // elapsed_s restarts in every runtime session (a resume is a new process): the duration is
  // the sum of each session's last elapsed_s.
  let earlierSessions = 0;
  let sessionElapsed = 0;
  for (const e of events) {
    switch (e.type) {
      case 'plan':
        earlierSessions += sessionElapsed;
        sessionElapsed = 0;
        d.stepsTotal = e.steps_total; d.status = null; d.error = null;
        break;
      case 'step':
        sessionElapsed = e.elapsed_s;
        d.step = e.step; d.finalLoss = e.loss; d.durationS = earlierSessions + sessionElapsed;
        break;
      case 'eval': d.lastEvalLoss = e.loss; break;
      case 'checkpoint': d.lastCheckpoint = e.path; break;
      case 'error': d.error = { message: e.message, hint: e.hint }; break;
      case 'done': d.status = e.status; d.step = Math.max(d.step, e.step); if (e.adapter) d.adapter = e.adapter; break;
      default: break;
    }
  }
  return d;
}

/** The pid of the runtime still working on this run, or null. */
export function liveRuntimePid(runDir: string): number | null {
  const pf = readPidFile(path.join(runDir, RUN_FILES.pid));
  if (!pf) return null;
  return isProcessAlive(pf.pid, pf.command) ? pf.pid : null;
}

export function summarizeRun(runDir: string): RunSummary {
  const id = path.basename(runDir);
  const run = readRunJson(runDir);
  const meta = run && typeof run.meta === 'object' && run.meta ? (run.meta as Record<string, unknown>) : {};
  const digest = digestEvents(readEvents(runDir));
  const pid = liveRuntimePid(runDir);
  let status: RunStatus;
  if (pid !== null) status = 'running';
  else if (digest.status) status = digest.status;
  else if (fs.existsSync(path.join(runDir, RUN_FILES.events))) status = 'interrupted';
  else status = 'created';
  const adapterDir = path.join(runDir, RUN_FILES.adapter);
  return {
    id,
    dir: runDir,
    name: typeof meta.name === 'string' ? meta.name : id,
    status,
    model: run && typeof run.model === 'string' ? run.model : null,
    step: digest.step,
    stepsTotal: digest.stepsTotal,
    finalLoss: digest.finalLoss,
    lastEvalLoss: digest.lastEvalLoss,
    durationS: digest.durationS,
    startedAt: typeof meta.created_at === 'string' ? meta.created_at : null,
    adapter: digest.adapter ?? (fs.existsSync(path.join(adapterDir, 'adapter_model.safetensors')) ? adapterDir : null),
    lastCheckpoint: digest.lastCheckpoint,
    error: status === 'failed' || status === 'interrupted' ? digest.error : null,
    pid,
  };
}

/** Every run folder (a folder with run.json) under the root, newest first. */
export function listRuns(runsRoot: string): RunSummary[] {
  let names: string[];
  try {
    names = fs.readdirSync(runsRoot);
  } catch {
    return [];
  }
  return names
    .filter((n) => fs.existsSync(path.join(runsRoot, n, RUN_FILES.runJson)))
    .sort()
    .reverse()
    .map((n) => summarizeRun(path.join(runsRoot, n)));
}

/** The newest complete checkpoint folder of a run (checkpoints/step-N with its adapter), or null. */
export function latestCheckpoint(runDir: string): { step: number; dir: string } | null {
  const root = path.join(runDir, RUN_FILES.checkpoints);
  let best: { step: number; dir: string } | null = null;
  let names: string[] = [];
  try {
    names = fs.readdirSync(root);
  } catch {
    return null;
  }
  for (const n of names) {
    const m = /^step-(\d+)$/.exec(n);
    if (!m) continue;
    const dir = path.join(root, n);
    if (!fs.existsSync(path.join(dir, 'adapter_model.safetensors'))) continue;
    const step = Number(m[1]);
    if (!best || step > best.step) best = { step, dir };
  }
  return best;
}
