// The one process layer (as vscode-python's src/client/common/process/): every child process
// of LoRA Studio is spawned here, with an argument array and never a shell, its stdout split
// into lines, its stderr handed to a log callback, and a cancellation token that stops it:
// a graceful request first ({"cmd":"stop"} on stdin), then SIGTERM, then SIGKILL.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { writeFileAtomic } from '../util/atomicWrite';

/** Structurally compatible with vscode.CancellationToken, so the extension passes its own. */
export interface CancellationToken {
  readonly isCancellationRequested: boolean;
  onCancellationRequested(listener: (e: unknown) => unknown): { dispose(): unknown };
}

export class CancellationTokenSource {
  private cancelled = false;
  private listeners = new Set<(e: unknown) => unknown>();
  readonly token: CancellationToken;

  constructor() {
    const self = this;
    this.token = {
      get isCancellationRequested() {
        return self.cancelled;
      },
      onCancellationRequested(listener) {
        if (self.cancelled) {
          queueMicrotask(() => listener(undefined));
          return { dispose() {} };
        }
        self.listeners.add(listener);
        return { dispose: () => self.listeners.delete(listener) };
      },
    };
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    for (const l of [...this.listeners]) l(undefined);
    this.listeners.clear();
  }

  dispose(): void {
    this.listeners.clear();
  }
}

/** Splits a byte stream into lines: UTF-8 safe across chunk boundaries, \n or \r\n endings.
 *  A final line without a newline is delivered by flush(). */
export class LineSplitter {
  private decoder = new StringDecoder('utf8');
  private pending = '';

  constructor(private readonly onLine: (line: string) => void) {}

  push(chunk: Buffer | string): void {
    this.pending += typeof chunk === 'string' ? chunk : this.decoder.write(chunk);
    let nl: number;
    while ((nl = this.pending.indexOf('\n')) >= 0) {
      const line = this.pending.slice(0, nl);
      this.pending = this.pending.slice(nl + 1);
      this.onLine(line.endsWith('\r') ? line.slice(0, -1) : line);
    }
  }

  flush(): void {
    this.pending += this.decoder.end();
    if (this.pending.length > 0) {
      const line = this.pending;
      this.pending = '';
      this.onLine(line);
    }
  }
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** How the stop went when one was requested: 'graceful' (exited after the stop request),
   *  'terminated' (needed SIGTERM), 'killed' (needed SIGKILL). */
  stoppedBy?: 'graceful' | 'terminated' | 'killed';
}

export interface SpawnOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  onStdoutLine?: (line: string) => void;
  /** stderr, line by line (for a LogOutputChannel or runtime.log). */
  onStderrLine?: (line: string) => void;
  token?: CancellationToken;
  /** What to write on stdin to ask for a graceful stop; null when the program has none. */
  stopMessage?: string | null;
  /** How long a graceful stop may take before SIGTERM (ms). */
  stopTimeoutMs?: number;
  /** How long after SIGTERM before SIGKILL (ms). */
  killTimeoutMs?: number;
  /** A file that holds the child's pid while it runs (run folders: runtime.pid). */
  pidFile?: string;
}

export const RUNTIME_STOP_MESSAGE = '{"cmd":"stop"}\n';

export class ManagedProcess {
  readonly exited: Promise<ProcessExit>;
  private child: ChildProcess;
  private exitInfo: ProcessExit | null = null;
  private stopping: Promise<ProcessExit> | null = null;
  private stoppedBy: ProcessExit['stoppedBy'];
  private cancelSub: { dispose(): unknown } | undefined;

  constructor(readonly command: string, readonly args: readonly string[], private readonly opts: SpawnOptions = {}) {
    this.child = spawn(command, [...args], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      shell: false,
      windowsHide: true,
    });
    const out = new LineSplitter((l) => opts.onStdoutLine?.(l));
    const err = new LineSplitter((l) => opts.onStderrLine?.(l));
    this.child.stdout!.on('data', (c: Buffer) => out.push(c));
    this.child.stderr!.on('data', (c: Buffer) => err.push(c));
    // A child that exits before reading its stdin makes writes fail with EPIPE: not an error here.
    this.child.stdin!.on('error', () => undefined);
    this.exited = new Promise<ProcessExit>((resolve, reject) => {
      let settled = false;
      this.child.once('error', (e) => {
        if (settled) return;
        settled = true;
        this.cleanup();
        reject(e);
      });
      this.child.once('close', (code, signal) => {
        if (settled) return;
        settled = true;
        out.flush();
        err.flush();
        this.exitInfo = { code, signal, stoppedBy: this.stoppedBy };
        this.cleanup();
        resolve(this.exitInfo);
      });
    });
    // Callers that only use stop()/the token must not see an unhandled rejection.
    this.exited.catch(() => undefined);
    if (opts.pidFile && this.child.pid !== undefined) writePidFile(opts.pidFile, this.child.pid, command);
    if (opts.token) {
      if (opts.token.isCancellationRequested) void this.stop();
      else this.cancelSub = opts.token.onCancellationRequested(() => void this.stop());
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get hasExited(): boolean {
    return this.exitInfo !== null;
  }

  /** Writes a line on the child's stdin (e.g. {"cmd":"checkpoint"}). */
  send(line: string): boolean {
    if (this.exitInfo || !this.child.stdin || this.child.stdin.destroyed) return false;
    this.child.stdin.write(line.endsWith('\n') ? line : line + '\n');
    return true;
  }

  /** Graceful stop, escalating to SIGTERM and SIGKILL after the timeouts. */
  stop(): Promise<ProcessExit> {
    if (this.exitInfo) return Promise.resolve(this.exitInfo);
    if (this.stopping) return this.stopping;
    const stopMs = this.opts.stopTimeoutMs ?? 30_000;
    const killMs = this.opts.killTimeoutMs ?? 10_000;
    this.stopping = (async () => {
      const message = this.opts.stopMessage === undefined ? RUNTIME_STOP_MESSAGE : this.opts.stopMessage;
      this.stoppedBy = 'graceful';
      // A process that failed to start has no exit status; stop() still settles.
      const ended = (): ProcessExit => this.exitInfo ?? { code: null, signal: null, stoppedBy: this.stoppedBy };
      if (message !== null) {
        this.send(message);
        if (await this.waitExit(stopMs)) return ended();
      }
      this.stoppedBy = 'terminated';
      this.signal('SIGTERM');
      if (await this.waitExit(killMs)) return ended();
      this.stoppedBy = 'killed';
      this.signal('SIGKILL');
      await this.waitExit(Number.POSITIVE_INFINITY);
      return ended();
    })();
    return this.stopping;
  }

  /** Immediate SIGKILL (for shutdown paths that cannot wait). */
  kill(): void {
    this.stoppedBy = 'killed';
    this.signal('SIGKILL');
  }

  private signal(sig: NodeJS.Signals): void {
    if (this.exitInfo) return;
    try {
      this.child.kill(sig);
    } catch {
      // already gone
    }
  }

  private waitExit(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = Number.isFinite(ms) ? setTimeout(() => resolve(false), ms) : undefined;
      this.exited.then(
        () => { clearTimeout(timer); resolve(true); },
        () => { clearTimeout(timer); resolve(true); },
      );
    });
  }

  private cleanup(): void {
    this.cancelSub?.dispose();
    if (this.opts.pidFile) removePidFile(this.opts.pidFile, this.child.pid);
  }
}

export function spawnProcess(command: string, args: readonly string[], opts: SpawnOptions = {}): ManagedProcess {
  return new ManagedProcess(command, args, opts);
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a short command to completion (e.g. `lora-runtime --version`), killing it after
 *  `timeoutMs`. Rejects only when it cannot be started (ENOENT, EACCES). */
export async function execCommand(command: string, args: readonly string[], opts: { timeoutMs?: number; token?: CancellationToken; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
  const out: string[] = [];
  const err: string[] = [];
  const p = new ManagedProcess(command, args, {
    cwd: opts.cwd, env: opts.env, token: opts.token, stopMessage: null, killTimeoutMs: 2000,
    onStdoutLine: (l) => out.push(l), onStderrLine: (l) => err.push(l),
  });
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; void p.stop(); }, opts.timeoutMs ?? 10_000);
  try {
    const exit = await p.exited;
    return { code: exit.code, signal: exit.signal, stdout: out.join('\n'), stderr: err.join('\n'), timedOut };
  } finally {
    clearTimeout(timer);
  }
}

export interface PidFileContent {
  pid: number;
  command: string;
  started_at: string;
}

function writePidFile(file: string, pid: number, command: string): void {
  const content: PidFileContent = { pid, command, started_at: new Date().toISOString() };
  writeFileAtomic(file, JSON.stringify(content) + '\n');
}

function removePidFile(file: string, pid: number | undefined): void {
  try {
    const content = JSON.parse(fs.readFileSync(file, 'utf8')) as PidFileContent;
    if (content.pid === pid) fs.rmSync(file, { force: true });
  } catch {
    // missing or replaced by another run's spawn: leave it
  }
}

export function readPidFile(file: string): PidFileContent | null {
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8'));
    return Number.isInteger(c?.pid) && c.pid > 0 ? (c as PidFileContent) : null;
  } catch {
    return null;
  }
}

/** Whether a process with this pid exists (and, on Linux, is still running `command` when
 *  given, so a recycled pid is not mistaken for the runtime). */
export function isProcessAlive(pid: number, command?: string): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (command && process.platform === 'linux') {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/^\d+ \(.*\) Z /.test(stat)) return false; // a zombie has exited
      // argv[0], or the script path when an interpreter runs it (#! scripts)
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, 3);
      const base = (s: string) => s.split('/').pop();
      return argv.some((a) => base(a) === base(command));
    } catch {
      return false;
    }
  }
  return true;
}
