// The training lifecycle in the editor: prepare the dataset into a new run folder, write
// run.json, start lora-runtime through the core process layer, follow RUN_DIR/events.jsonl
// (with chokidar, so a run started before a window reload is followed the same way), and
// report progress to the panel, the status bar, the Runs view and notifications.

import * as vscode from 'vscode';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FSWatcher } from 'chokidar';
import { toChartEvent, type ChartEvent, type DeviceInfo, type HostMessage, type PanelConfig, type RunStatus } from '../../webview/protocol';
import type { TrainConfig } from '../core/config';
import type { RuntimeEvent, ErrorEvent } from '../core/runtime/events';
import type { CancellationTokenSource, ManagedProcess } from '../core/runtime/process';
import type { EventsTail } from '../core/runs/runs';
import { coreConfig, coreProcess, coreRuns, panelModelModule } from './lazy';
import type { Log } from './log';
import type { TrainingStatusBar } from './statusBar';
import type { TrainingHost } from './trainingView';

/** At most 20 panel updates a second, however fast the runtime writes. */
const PANEL_FLUSH_MS = 50;
/** How often a re-attached run's process is checked (it is not our child, so no exit event). */
const ALIVE_POLL_MS = 1000;
const STOP_TIMEOUT_MS = 30_000;
const KILL_TIMEOUT_MS = 10_000;

export interface TrainingUi {
  post(m: HostMessage): void;
  reveal(): void;
}

interface ActiveRun {
  runId: string;
  dir: string;
  label: string;
  live: boolean;
  status: RunStatus;
  events: RuntimeEvent[];
  chartEvents: ChartEvent[];
  adapter?: string;
  /** Why it failed (the runtime's error event), shown again when the panel reloads. */
  message?: string;
  hint?: string;
  tail: EventsTail;
  watcher: FSWatcher | null;
  process: ManagedProcess | null;
  /** For a re-attached run: the pid of the runtime we did not start. */
  foreignPid: number | null;
  cts: CancellationTokenSource | null;
  pendingPanel: ChartEvent[];
  flushTimer: ReturnType<typeof setTimeout> | undefined;
  alivePoll: ReturnType<typeof setInterval> | undefined;
  finished: Promise<void>;
  resolveFinished: () => void;
  stepsTotal: number | null;
  /** First and latest step of this session, for the status bar without re-reading history. */
  firstStep: { step: number; t: number } | null;
  lastStep: { step: number; t: number; loss: number | null } | null;
  stderrLog: fs.WriteStream | null;
}

export class TrainingController implements TrainingHost, vscode.Disposable {
  private active: ActiveRun | null = null;
  /** A finished run opened for viewing (Open Run), shown when the panel reloads. */
  private viewed: ActiveRun | null = null;
  private cachedDevice: Promise<DeviceInfo | null> | null = null;
  private ui: TrainingUi | null = null;
  private readonly changed = new vscode.EventEmitter<void>();
  /** Fires when a run starts, ends, checkpoints or is opened (the Runs view listens). */
  readonly onDidChangeRuns = this.changed.event;
  private readonly completed = new vscode.EventEmitter<string>();
  /** Fires with the run folder when a run completes with its final adapter (pinned prompts run then). */
  readonly onDidCompleteRun = this.completed.event;

  constructor(
    private readonly log: Log,
    private readonly statusBar: TrainingStatusBar,
    private readonly runsRoot: () => string | null,
    private readonly datasetWatch: (file: string) => void,
    private readonly extensionRoot: string,
  ) {}

  setUi(ui: TrainingUi): void {
    this.ui = ui;
  }

  get trusted(): boolean {
    return vscode.workspace.isTrusted;
  }

  get isTraining(): boolean {
    return this.active !== null && this.active.status === 'running';
  }

  activeRunId(): string | null {
    return this.isTraining ? this.active!.runId : null;
  }

  watchDataset(file: string): void {
    this.datasetWatch(file);
  }

  showLog(): void {
    this.log.show();
  }

  currentRun(): ReturnType<TrainingHost['currentRun']> {
    const r = this.active ?? this.viewed;
    if (!r) return null;
    return { runId: r.runId, label: r.label, live: r.live && r.status === 'running', events: r.chartEvents, status: r.status,
             ...(r.adapter ? { adapter: r.adapter } : {}), ...(r.message ? { message: r.message } : {}), ...(r.hint ? { hint: r.hint } : {}) };
  }

  async device(): Promise<DeviceInfo | null> {
    this.cachedDevice ??= this.queryDevice();
    return this.cachedDevice;
  }

  private async queryDevice(): Promise<DeviceInfo | null> {
    const { locateRuntime } = await import('../core/runtime/locate');
    const { execCommand } = await import('../core/runtime/process');
    try {
      const rt = await locateRuntime(this.locateOptions());
      const r = await execCommand(rt.path, ['devices'], { timeoutMs: 10_000 });
      if (r.code !== 0) return null;
      const v = JSON.parse(r.stdout.split('\n').find((l) => l.trim().startsWith('{')) ?? 'null') as { devices?: unknown } | null;
      const list = Array.isArray(v?.devices) ? (v!.devices as Record<string, unknown>[]) : [];
      // `devices` lists unsupported GPUs too (supported: false, with a note): the run would
      // not use them, so neither does the estimate.
      const gpu = list.find((d) => d.kind === 'cuda' && d.supported !== false) ?? list.find((d) => d.kind !== 'cuda') ?? list[0];
      if (!gpu) return null;
      const num = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) ? x : 0);
      return { name: String(gpu.name ?? 'device'), kind: gpu.kind === 'cuda' ? 'cuda' : 'cpu',
               memoryTotal: num(gpu.memory_total), memoryFree: num(gpu.memory_free ?? gpu.memory_total) };
    } catch (e) {
      this.log.warn(`could not list devices: ${(e as Error).message}`);
      return null;
    }
  }

  private locateOptions(): { setting: string; root: string } {
    return { setting: vscode.workspace.getConfiguration('loraStudio').get<string>('runtimePath', ''), root: this.extensionRoot };
  }

  async startFromPanel(p: PanelConfig): Promise<void> {
    await this.start(panelModelModule().fromPanelConfig(p));
  }

  /** Prepares the data, writes the run folder and starts the runtime. Errors become notifications. */
  async start(config: TrainConfig): Promise<string | null> {
    if (!this.trusted) {
      void vscode.window.showWarningMessage('LoRA Studio: training is disabled in an untrusted workspace, because it runs a native program on workspace files.');
      return null;
    }
    if (this.isTraining) {
      void vscode.window.showWarningMessage(`LoRA Studio: ${this.active!.label} is still training. Stop it first.`);
      return null;
    }
    const issues = coreConfig().validateConfig(config).filter((i) => i.severity !== 'warning');
    if (issues.length) {
      const first = issues[0]!;
      void vscode.window.showErrorMessage(`LoRA Studio: ${first.field}: ${first.message}${first.hint ? ` (${first.hint})` : ''}`);
      return null;
    }
    const root = this.runsRoot();
    if (!root) {
      void vscode.window.showErrorMessage('LoRA Studio: open a folder first; runs are stored in the workspace (setting loraStudio.runsFolder).');
      return null;
    }
    const { locateRuntime, RuntimeLocateError } = await import('../core/runtime/locate');
    let runtimePath: string;
    try {
      runtimePath = (await locateRuntime(this.locateOptions())).path;
    } catch (e) {
      const hint = e instanceof RuntimeLocateError ? ` ${e.hint}.` : '';
      this.log.error(`runtime: ${(e as Error).message}`);
      void vscode.window.showErrorMessage(`LoRA Studio: ${(e as Error).message}.${hint}`, 'Open Settings').then((a) => {
        if (a) void vscode.commands.executeCommand('workbench.action.openSettings', 'loraStudio.runtimePath');
      });
      return null;
    }

    const name = `${path.basename(config.model)} ${path.basename(config.data, path.extname(config.data))}`;
    const { id, dir } = coreRuns().createRunDir(root, name);
    const label = `${path.basename(config.model)} · ${path.basename(config.data)}`;
    this.log.info(`run ${id}: preparing ${config.data} for ${config.model}`);
    this.statusBar.preparing(label);
    this.changed.fire();

    let evalPath: string | null;
    try {
      evalPath = await this.prepare(config, dir);
    } catch (e) {
      this.statusBar.hide();
      const msg = (e as Error).message;
      this.log.error(`run ${id}: data preparation failed: ${msg}`);
      fs.writeFileSync(path.join(dir, coreRuns().RUN_FILES.events), JSON.stringify({ v: 1, type: 'error', code: 'bad_data', message: msg }) + '\n' +
                       JSON.stringify({ v: 1, type: 'done', status: 'failed', step: 0 }) + '\n');
      this.changed.fire();
      void vscode.window.showErrorMessage(`LoRA Studio: the dataset could not be prepared: ${msg}`, 'Show Log').then((a) => a && this.log.show());
      return null;
    }

    const meta = { name, created_at: new Date().toISOString(), config, source: 'vscode' };
    coreRuns().writeRunJson(dir, coreConfig().toRunJson(config, { model: config.model, train: `${coreRuns().RUN_FILES.data}/train.bin`, eval: evalPath ? `${coreRuns().RUN_FILES.data}/eval.bin` : null, meta }));
    await this.launch(runtimePath, id, dir, label, ['train', '--run', dir]);
    return id;
  }

  private async prepare(config: TrainConfig, dir: string): Promise<string | null> {
    const { prepareDataset } = await import('../core/dataset/prepare');
    return vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Preparing ${path.basename(config.data)}`, cancellable: true },
      async (progress, token) => {
        const ac = new AbortController();
        token.onCancellationRequested(() => ac.abort());
        let reported = 0;
        const r = await prepareDataset({
          data: config.data, modelDir: config.model, outDir: path.join(dir, coreRuns().RUN_FILES.data), seqLen: config.train.seqLen,
          format: config.dataOptions.format, template: config.dataOptions.template, trainOn: config.dataOptions.trainOn,
          assistantTurns: config.dataOptions.assistantTurns, overLength: config.dataOptions.overLength,
          evalSplit: config.dataOptions.evalData ? 0 : config.dataOptions.evalSplit, seed: config.train.seed,
          foldSystemIntoUser: config.dataOptions.foldSystemIntoUser, signal: ac.signal,
          ...(config.dataOptions.evalData ? { evalData: config.dataOptions.evalData } : {}),
          onProgress: (p) => {
            const pct = p.totalBytes ? Math.floor((100 * p.bytes) / p.totalBytes) : 0;
            if (pct > reported) {
              progress.report({ increment: pct - reported, message: `${p.rows} rows` });
              reported = pct;
            }
          },
        });
        for (const d of r.diagnostics.filter((x) => x.severity !== 'info').slice(0, 20)) {
          this.log.warn(`${d.file}${d.line ? `:${d.line}` : ''}: ${d.severity}: ${d.message} (${d.code})`);
        }
        return r.evalPath;
      },
    );
  }

  /** Resumes a stopped or interrupted run from its newest checkpoint. */
  async resume(runDir: string): Promise<boolean> {
    if (!this.trusted) {
      void vscode.window.showWarningMessage('LoRA Studio: resuming is disabled in an untrusted workspace.');
      return false;
    }
    if (this.isTraining) {
      void vscode.window.showWarningMessage(`LoRA Studio: ${this.active!.label} is still training. Stop it first.`);
      return false;
    }
    if (coreRuns().liveRuntimePid(runDir) !== null) {
      void vscode.window.showWarningMessage('LoRA Studio: this run is still training.');
      return false;
    }
    if (!coreRuns().latestCheckpoint(runDir)) {
      void vscode.window.showWarningMessage(`LoRA Studio: ${path.basename(runDir)} has no checkpoint to resume from.`);
      return false;
    }
    const { locateRuntime } = await import('../core/runtime/locate');
    let runtimePath: string;
    try {
      runtimePath = (await locateRuntime(this.locateOptions())).path;
    } catch (e) {
      void vscode.window.showErrorMessage(`LoRA Studio: ${(e as Error).message}`);
      return false;
    }
    const s = coreRuns().summarizeRun(runDir);
    await this.launch(runtimePath, s.id, runDir, s.name, ['train', '--run', runDir, '--resume'], true);
    return true;
  }

  private newRun(runId: string, dir: string, label: string, live: boolean, startOffset: number): ActiveRun {
    let resolveFinished!: () => void;
    const finished = new Promise<void>((r) => (resolveFinished = r));
    return {
      runId, dir, label, live, status: live ? 'running' : 'completed', events: [], chartEvents: [], tail: new (coreRuns().EventsTail)(path.join(dir, coreRuns().RUN_FILES.events), startOffset),
      watcher: null, process: null, foreignPid: null, cts: null, pendingPanel: [], flushTimer: undefined, alivePoll: undefined,
      finished, resolveFinished, stepsTotal: null, firstStep: null, lastStep: null, stderrLog: null,
    };
  }

  private async launch(runtimePath: string, runId: string, dir: string, label: string, args: string[], resumed = false): Promise<void> {
    const { spawnProcess } = await import('../core/runtime/process');
    // A resumed run appends to events.jsonl: show the whole history, then follow the new lines.
    const run = this.newRun(runId, dir, label, true, 0);
    this.viewed = null;
    this.active = run;
    run.stderrLog = fs.createWriteStream(path.join(dir, coreRuns().RUN_FILES.log), { flags: 'a' });
    run.cts = new (coreProcess().CancellationTokenSource)();
    this.ui?.post({ type: 'runStarted', runId, label, live: true });
    this.drain(run);
    run.process = spawnProcess(runtimePath, args, {
      cwd: dir,
      token: run.cts.token,
      pidFile: path.join(dir, coreRuns().RUN_FILES.pid),
      stopTimeoutMs: STOP_TIMEOUT_MS,
      killTimeoutMs: KILL_TIMEOUT_MS,
      onStderrLine: (line) => {
        this.log.runtime(line);
        run.stderrLog?.write(line + '\n');
      },
    });
    this.log.info(`run ${runId}: ${resumed ? 'resumed' : 'started'} ${runtimePath} ${args.join(' ')} (pid ${run.process.pid})`);
    void vscode.commands.executeCommand('setContext', 'loraStudio.training', true);
    await this.follow(run);
    run.process.exited.then(
      (exit) => this.finish(run, exit.code, exit.signal ? `signal ${exit.signal}` : null),
      (err: Error) => this.finish(run, null, err.message),
    );
    this.changed.fire();
  }

  /** Reads whatever is new in events.jsonl now. */
  private drain(run: ActiveRun): void {
    const events = run.tail.read();
    for (const inv of run.tail.invalid.splice(0)) this.log.warn(`run ${run.runId}: ignored an invalid event line (${inv.reason}): ${inv.line.slice(0, 200)}`);
    if (events.length) this.onEvents(run, events);
  }

  private async follow(run: ActiveRun): Promise<void> {
    const { watch } = await import('chokidar');
    // The file may not exist yet when the runtime is still loading the model: watch the folder.
    run.watcher = watch(run.dir, { depth: 0, ignoreInitial: false, usePolling: false });
    run.watcher.on('all', (_ev, p) => {
      if (path.basename(p) === coreRuns().RUN_FILES.events) this.drain(run);
    });
    run.watcher.on('error', (e) => this.log.warn(`run ${run.runId}: watcher: ${(e as Error).message}`));
  }

  private onEvents(run: ActiveRun, events: RuntimeEvent[]): void {
    let sawCheckpoint = false;
    for (const e of events) {
      run.events.push(e);
      if (e.type === 'plan') {
        run.stepsTotal = e.steps_total;
        run.firstStep = null;
      }
      if (e.type === 'step') {
        run.firstStep ??= { step: e.step, t: e.elapsed_s };
        run.lastStep = { step: e.step, t: e.elapsed_s, loss: e.loss };
      }
      if (e.type === 'checkpoint') sawCheckpoint = true;
      if (e.type === 'done' && e.adapter) run.adapter = e.adapter;
      if (e.type === 'log') this.log.info(`[runtime ${e.level}] ${e.message}`);
      if (e.type === 'error') this.log.error(`run ${run.runId}: ${e.message}${e.hint ? ` (hint: ${e.hint})` : ''}`);
      const c = toChartEvent(e);
      if (c) {
        run.chartEvents.push(c);
        run.pendingPanel.push(c);
      }
    }
    if (sawCheckpoint) this.changed.fire();
    if (run.status === 'running' && run.lastStep) {
      this.statusBar.update({ step: run.lastStep.step, stepsTotal: run.stepsTotal, loss: run.lastStep.loss, etaSeconds: eta(run), label: run.label });
    }
    this.scheduleFlush(run);
  }

  private scheduleFlush(run: ActiveRun): void {
    if (run.flushTimer) return;
    run.flushTimer = setTimeout(() => {
      run.flushTimer = undefined;
      if (!run.pendingPanel.length) return;
      const batch = run.pendingPanel.splice(0);
      if (this.active === run || this.viewed === run) this.ui?.post({ type: 'events', runId: run.runId, events: batch });
    }, PANEL_FLUSH_MS);
  }

  private async finish(run: ActiveRun, code: number | null, why: string | null): Promise<void> {
    if (run.status !== 'running') return;
    this.drain(run);
    clearInterval(run.alivePoll);
    await run.watcher?.close();
    run.watcher = null;
    run.stderrLog?.end();
    run.stderrLog = null;
    run.cts?.dispose();
    const digest = coreRuns().digestEvents(run.events);
    const status: RunStatus = digest.status ?? (code === 0 ? 'completed' : 'failed');
    run.status = status;
    run.live = false;
    const adapter = run.adapter ?? digest.adapter ?? undefined;
    // Flush what is left, then say how it ended.
    clearTimeout(run.flushTimer);
    run.flushTimer = undefined;
    if (run.pendingPanel.length) this.ui?.post({ type: 'events', runId: run.runId, events: run.pendingPanel.splice(0) });
    const lastError = [...run.events].reverse().find((e): e is ErrorEvent & RuntimeEvent => e.type === 'error');
    const message = status === 'failed' ? lastError?.message ?? failureWithoutEvent(code, why) : undefined;
    const hint = status === 'failed' ? lastError?.hint ?? (lastError ? undefined : 'See the runtime log for details.') : undefined;
    run.message = message;
    run.hint = hint;
    this.ui?.post({ type: 'runEnded', runId: run.runId, status, ...(adapter ? { adapter } : {}), ...(message ? { message } : {}), ...(hint ? { hint } : {}) });
    this.statusBar.hide();
    if (this.active === run) {
      this.active = null;
      this.viewed = run;
    }
    void vscode.commands.executeCommand('setContext', 'loraStudio.training', false);
    this.log.info(`run ${run.runId}: ${status}${code !== null ? ` (exit code ${code})` : ''}${why ? ` (${why})` : ''}`);
    this.changed.fire();
    run.resolveFinished();
    if (status === 'completed') {
      const loss = digest.finalLoss !== null ? `, final loss ${digest.finalLoss.toFixed(4)}` : '';
      void vscode.window.showInformationMessage(`LoRA Studio: ${run.label} finished after ${digest.step} steps${loss}.`, 'Reveal Adapter', 'Try Adapter').then((a) => {
        if (a === 'Reveal Adapter') void this.revealAdapter(run.runId);
        else if (a === 'Try Adapter') void vscode.commands.executeCommand('loraStudio.tryAdapter', run.dir);
      });
      if (adapter) this.completed.fire(run.dir);
    } else if (status === 'stopped') {
      void vscode.window.showInformationMessage(`LoRA Studio: ${run.label} stopped at step ${digest.step}. Resume it from the Runs view.`);
    } else {
      void vscode.window.showErrorMessage(`LoRA Studio: ${run.label} failed: ${message}${hint ? ` — ${hint}` : ''}`, 'Show Runtime Log').then((a) => {
        if (a) this.log.show();
      });
    }
  }

  /** Asks the running job to stop: {"cmd":"stop"}, then SIGTERM, then SIGKILL after timeouts. */
  async stop(): Promise<void> {
    const run = this.active;
    if (!run || run.status !== 'running') {
      void vscode.window.showInformationMessage('LoRA Studio: no training is running.');
      return;
    }
    this.log.info(`run ${run.runId}: stop requested`);
    if (run.process) {
      run.cts?.cancel();
    } else if (run.foreignPid !== null) {
      await stopForeign(run.foreignPid, () => run.status !== 'running');
    }
    await run.finished;
  }

  /** Finds runs whose runtime is still alive (after a window reload) and follows the newest. */
  async reattach(): Promise<void> {
    const root = this.runsRoot();
    if (!root || this.active) return;
    // Only pid files are checked here: summarising every run would read every events.jsonl.
    let names: string[];
    try {
      names = (await fs.promises.readdir(root)).sort().reverse();
    } catch {
      return;
    }
    const liveName = names.find((n) => coreRuns().liveRuntimePid(path.join(root, n)) !== null);
    if (!liveName || this.active) return;
    const live = coreRuns().summarizeRun(path.join(root, liveName));
    if (live.pid === null) return;
    const run = this.newRun(live.id, live.dir, live.name, true, 0);
    run.foreignPid = live.pid;
    this.active = run;
    this.log.info(`run ${live.id}: re-attached to the running runtime (pid ${live.pid})`);
    this.ui?.post({ type: 'runStarted', runId: run.runId, label: run.label, live: true });
    this.drain(run);
    await this.follow(run);
    void vscode.commands.executeCommand('setContext', 'loraStudio.training', true);
    run.alivePoll = setInterval(() => {
      if (coreRuns().liveRuntimePid(run.dir) === null) void this.finish(run, null, null);
    }, ALIVE_POLL_MS);
    this.changed.fire();
  }

  /** Shows a past (or the current) run's charts in the panel. */
  openRun(runDir: string): void {
    if (this.active && this.active.dir === runDir) {
      this.ui?.reveal();
      this.ui?.post({ type: 'runStarted', runId: this.active.runId, label: this.active.label, live: true });
      this.ui?.post({ type: 'events', runId: this.active.runId, events: this.active.chartEvents });
      return;
    }
    const s = coreRuns().summarizeRun(runDir);
    const run = this.newRun(s.id, runDir, s.name, false, 0);
    run.events = coreRuns().readEvents(runDir);
    run.chartEvents = run.events.map(toChartEvent).filter((e): e is ChartEvent => e !== null);
    const status: RunStatus = s.status === 'completed' || s.status === 'stopped' || s.status === 'failed' ? s.status : s.status === 'running' ? 'running' : 'stopped';
    run.status = status;
    if (s.adapter) run.adapter = s.adapter;
    if (s.error) {
      run.message = s.error.message;
      run.hint = s.error.hint;
    }
    this.viewed = run;
    this.ui?.reveal();
    this.ui?.post({ type: 'runStarted', runId: run.runId, label: run.label, live: false });
    if (run.chartEvents.length) this.ui?.post({ type: 'events', runId: run.runId, events: run.chartEvents });
    this.ui?.post({ type: 'runEnded', runId: run.runId, status, ...(run.adapter ? { adapter: run.adapter } : {}),
                    ...(s.error ? { message: s.error.message, ...(s.error.hint ? { hint: s.error.hint } : {}) } : {}) });
  }

  async revealAdapter(runId: string): Promise<void> {
    const root = this.runsRoot();
    if (!root || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(runId)) return;
    const dir = path.join(root, runId);
    const adapter = coreRuns().summarizeRun(dir).adapter;
    if (!adapter || !fs.existsSync(adapter)) {
      void vscode.window.showWarningMessage(`LoRA Studio: ${runId} has no adapter yet.`);
      return;
    }
    const file = path.join(adapter, 'adapter_config.json');
    await vscode.commands.executeCommand('revealInExplorer', vscode.Uri.file(fs.existsSync(file) ? file : adapter));
    if (!vscode.workspace.getWorkspaceFolder(vscode.Uri.file(adapter))) await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(adapter));
  }

  /** Waits for the current run to end (tests, deactivate). */
  async whenIdle(): Promise<void> {
    if (this.active) await this.active.finished;
  }

  dispose(): void {
    const run = this.active;
    if (run) {
      // The runtime keeps training across a window reload; only stop following it.
      clearInterval(run.alivePoll);
      clearTimeout(run.flushTimer);
      void run.watcher?.close();
      run.stderrLog?.end();
    }
    this.changed.dispose();
    this.completed.dispose();
  }
}

/** Seconds left at this session's mean time per step; null until two steps are in. */
function eta(run: ActiveRun): number | null {
  const first = run.firstStep, last = run.lastStep;
  if (!run.stepsTotal || !first || !last || last.step <= first.step || last.t <= first.t) return null;
  return Math.max(0, ((run.stepsTotal - last.step) * (last.t - first.t)) / (last.step - first.step));
}

function failureWithoutEvent(code: number | null, why: string | null): string {
  if (code === 3) return 'the runtime ran out of memory';
  if (code === 2) return 'the runtime rejected the run configuration';
  if (why) return `the runtime ended unexpectedly (${why})`;
  return `the runtime exited with code ${code ?? 'unknown'} without reporting an error`;
}

/** Stops a runtime this window did not start (re-attached after a reload): SIGTERM, which
 *  the runtime treats as a graceful stop, then SIGKILL if it does not end in time. */
async function stopForeign(pid: number, ended: () => boolean): Promise<void> {
  const wait = async (ms: number) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (ended()) return true;
      try {
        process.kill(pid, 0);
      } catch {
        return true;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return false;
  };
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (await wait(STOP_TIMEOUT_MS)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
