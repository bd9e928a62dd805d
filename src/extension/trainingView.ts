// The sidebar training panel (a webview view): serves the panel bundle under a strict CSP,
// validates every message from it against webview/protocol.ts, checks every path it names,
// and answers with model inspections, dataset validation, previews and memory estimates.

import * as vscode from 'vscode';
import * as path from 'node:path';
import { parsePanelMessage, PROTOCOL_VERSION, type ChartEvent, type DeviceInfo, type HostMessage, type PanelConfig, type PanelMessage, type RunStatus } from '../../webview/protocol';
import type { ModelInspection } from '../core/model/inspect';
import { renderPanelHtml } from './panelHtml';
import { PathGuard } from './pathGuard';
import { panelModelModule } from './lazy';
import type { Log } from './log';

/** What the panel needs from the training side (implemented by TrainingController). */
export interface TrainingHost {
  readonly trusted: boolean;
  startFromPanel(config: PanelConfig): Promise<void>;
  stop(): Promise<void>;
  revealAdapter(runId: string): Promise<void>;
  showLog(): void;
  /** The run the panel should show (live or the last opened), with its events so far. */
  currentRun(): { runId: string; label: string; live: boolean; events: ChartEvent[]; status: RunStatus; adapter?: string; message?: string; hint?: string } | null;
  device(): Promise<DeviceInfo | null>;
  /** Starts watching a dataset file (re-validation and Problems panel). */
  watchDataset(file: string): void;
}

const PREVIEW_ROWS = 3;

export class TrainingViewProvider implements vscode.WebviewViewProvider, vscode.Disposable {
  static readonly viewId = 'loraStudio.trainingView';
  private view: vscode.WebviewView | undefined;
  private readonly disposables: vscode.Disposable[] = [];
  private model: ModelInspection | null = null;
  private config: PanelConfig | null = null;
  private device: DeviceInfo | null = null;
  private datasetSeq = 0;
  /** The model being inspected, so a dataset preview waits for its tokenizer. */
  private modelLoading: Promise<void> | null = null;
  /** A dataset chosen (explorer, command) before the panel had loaded its form. */
  private chosenData: string | null = null;
  /** Messages for a panel that is not open yet, sent when it says ready. */
  private pending: HostMessage[] = [];
  private ready = false;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly guard: PathGuard,
    private readonly host: TrainingHost,
    private readonly log: Log,
  ) {}

  dispose(): void {
    for (const d of this.disposables.splice(0)) d.dispose();
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    this.ready = false;
    const dist = vscode.Uri.joinPath(this.extensionUri, 'dist', 'webview');
    view.webview.options = { enableScripts: true, localResourceRoots: [dist] };
    view.webview.html = renderPanelHtml({
      cspSource: view.webview.cspSource,
      scriptUri: view.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'panel.js')).toString(),
      styleUri: view.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'panel.css')).toString(),
    });
    this.disposables.push(
      view.webview.onDidReceiveMessage((raw) => void this.receive(raw)),
      view.onDidDispose(() => {
        this.view = undefined;
        this.ready = false;
      }),
    );
  }

  /** Sends a message to the panel; queued until the panel has loaded. */
  post(m: HostMessage): void {
    if (this.view && this.ready) void this.view.webview.postMessage(m);
    else if (m.type !== 'events') this.pending.push(m);
  }

  reveal(): void {
    void vscode.commands.executeCommand(`${TrainingViewProvider.viewId}.focus`);
  }

  async setTrust(trusted: boolean): Promise<void> {
    this.post({ type: 'trust', trusted, ...(trusted ? {} : { untrustedReason: untrustedReason() }) });
  }

  /** Selects a model folder the user chose outside the panel (command, setting). */
  async selectModel(dir: string): Promise<void> {
    this.guard.allow(dir);
    await this.loadModel(dir);
  }

  /** Selects a dataset the user chose outside the panel (explorer context menu, command). */
  async selectDataset(file: string): Promise<void> {
    this.guard.allow(file);
    await this.loadDataset(file);
  }

  currentConfig(): PanelConfig | null {
    return this.config;
  }

  private async receive(raw: unknown): Promise<void> {
    const parsed = parsePanelMessage(raw);
    if (!parsed.ok) {
      this.log.warn(`training panel sent an invalid message, ignored: ${parsed.error}`);
      return;
    }
    try {
      await this.handle(parsed.value);
    } catch (e) {
      this.log.error(`training panel: ${(e as Error).stack ?? e}`);
      this.post({ type: 'notice', level: 'error', message: (e as Error).message });
    }
  }

  private async handle(m: PanelMessage): Promise<void> {
    switch (m.type) {
      case 'ready':
        await this.sendInit();
        return;
      case 'rejected':
        this.log.warn(`training panel rejected a message from the extension: ${m.error}`);
        return;
      case 'pickModel': {
        const picked = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, openLabel: 'Use Model Folder',
                                                            title: 'Hugging Face model folder (config.json + *.safetensors)' });
        if (picked?.[0]) await this.selectModel(picked[0].fsPath);
        return;
      }
      case 'pickDataset': {
        const picked = await vscode.window.showOpenDialog({ canSelectFiles: true, canSelectFolders: false, openLabel: 'Use Dataset',
                                                            filters: { Datasets: ['jsonl', 'json', 'csv'] } });
        if (picked?.[0]) await this.selectDataset(picked[0].fsPath);
        return;
      }
      case 'selectCachedModel': {
        const ok = this.guard.check(m.path, 'model folder');
        if (!ok.ok) return this.refuse(ok.reason);
        await this.loadModel(ok.path);
        return;
      }
      case 'downloadModel':
        await this.download(m.repoId);
        return;
      case 'configChanged':
        this.config = m.config;
        await this.sendEstimate();
        return;
      case 'start': {
        if (!this.host.trusted) return this.refuse(untrustedReason());
        for (const [p, what] of [[m.config.model, 'model folder'], [m.config.data, 'dataset']] as const) {
          const ok = this.guard.check(p, what);
          if (!ok.ok) return this.refuse(ok.reason);
        }
        this.config = m.config;
        await this.host.startFromPanel(m.config);
        return;
      }
      case 'stop':
        await this.host.stop();
        return;
      case 'revealAdapter':
        await this.host.revealAdapter(m.runId);
        return;
      case 'showLog':
        this.host.showLog();
        return;
    }
  }

  private refuse(reason: string): void {
    this.log.warn(`training panel: ${reason}`);
    this.post({ type: 'notice', level: 'error', message: reason });
  }

  private async sendInit(): Promise<void> {
    const settings = vscode.workspace.getConfiguration('loraStudio');
    const defaultModel = settings.get<string>('defaultModelFolder', '');
    const { listCachedModels, hfHubCacheDir } = await import('../core/model/hfCache');
    const cached = listCachedModels(hfHubCacheDir()).filter((c) => c.hasSafetensors && c.complete);
    for (const c of cached) this.guard.allow(c.path);
    if (defaultModel) this.guard.allow(defaultModel);
    this.device = await this.host.device().catch(() => null);
    const config = this.config ?? panelModelModule().initialPanelConfig(settings.get<string>('defaultPreset', ''), defaultModel);
    if (this.chosenData) config.data = this.chosenData;
    this.config = config;
    const trusted = this.host.trusted;
    this.ready = true;
    const init: HostMessage = {
      type: 'init', version: PROTOCOL_VERSION, trusted, ...(trusted ? {} : { untrustedReason: untrustedReason() }),
      presets: panelModelModule().presetInfos(), config, cachedModels: cached.map(panelModelModule().cachedModelInfo), device: this.device,
    };
    void this.view?.webview.postMessage(init);
    for (const m of this.pending.splice(0)) void this.view?.webview.postMessage(m);
    const run = this.host.currentRun();
    if (run) {
      void this.view?.webview.postMessage({ type: 'runStarted', runId: run.runId, label: run.label, live: run.live } satisfies HostMessage);
      if (run.events.length) void this.view?.webview.postMessage({ type: 'events', runId: run.runId, events: run.events } satisfies HostMessage);
      if (run.status !== 'running') {
        void this.view?.webview.postMessage({ type: 'runEnded', runId: run.runId, status: run.status, ...(run.adapter ? { adapter: run.adapter } : {}),
                                              ...(run.message ? { message: run.message } : {}), ...(run.hint ? { hint: run.hint } : {}) } satisfies HostMessage);
      }
    }
    if (config.model && !this.model) await this.loadModel(config.model);
    else if (this.model) this.post({ type: 'model', model: panelModelModule().modelSummary(this.model) });
    if (config.data) await this.loadDataset(config.data);
  }

  private loadModel(dir: string): Promise<void> {
    const inspecting = this.inspect(dir);
    this.modelLoading = inspecting;
    return inspecting.then(async () => {
      // A dataset chosen before the model gets its preview now that there is a tokenizer.
      const data = this.config?.data;
      if (this.model && data) await this.sendPreview(data, this.datasetSeq);
    });
  }

  private async inspect(dir: string): Promise<void> {
    const { inspectModel, ModelInspectError } = await import('../core/model/inspect');
    try {
      const m = inspectModel(dir);
      if (!m.supported) {
        this.model = null;
        this.post({ type: 'model', model: null, error: `${m.architecture} is not supported: ${m.unsupportedReason ?? ''}`.trim(),
                    hint: 'LoRA Studio trains Llama, Mistral and Qwen2 models.' });
        return;
      }
      this.model = m;
      if (this.config) this.config = { ...this.config, model: m.dir };
      this.post({ type: 'model', model: panelModelModule().modelSummary(m) });
      for (const w of m.warnings) this.log.warn(`${dir}: ${w}`);
      await this.sendEstimate();
    } catch (e) {
      this.model = null;
      const msg = e instanceof ModelInspectError ? e.message : `cannot read the model folder: ${(e as Error).message}`;
      this.post({ type: 'model', model: null, error: msg, ...(e instanceof ModelInspectError && e.hint ? { hint: e.hint } : {}) });
    }
  }

  private async loadDataset(file: string): Promise<void> {
    const seq = ++this.datasetSeq;
    this.chosenData = file;
    if (this.config) this.config = { ...this.config, data: file };
    this.host.watchDataset(file);
    try {
      const { validateDataset } = await import('../core/dataset/validate');
      const r = await validateDataset(file);
      if (seq !== this.datasetSeq) return;
      const errors = r.diagnostics.filter((d) => d.severity === 'error').length;
      const warnings = r.diagnostics.filter((d) => d.severity === 'warning').length;
      this.post({
        type: 'dataset',
        dataset: {
          path: file, format: r.summary?.files[0]?.format ?? 'unknown', rows: r.summary?.rows.usable ?? 0, errors, warnings,
          diagnostics: r.diagnostics.slice(0, 50).map((d) => ({
            severity: d.severity, code: d.code, message: d.message,
            ...(d.line !== undefined ? { line: d.line } : {}), ...(d.row !== undefined ? { row: d.row } : {}), ...(d.hint ? { hint: d.hint } : {}),
          })),
        },
      });
    } catch (e) {
      if (seq !== this.datasetSeq) return;
      this.post({ type: 'dataset', dataset: null, error: `${path.basename(file)}: ${(e as Error).message}` });
      return;
    }
    await this.sendPreview(file, seq);
  }

  private async sendPreview(file: string, seq: number): Promise<void> {
    if (!this.model && this.config?.model && !this.modelLoading) void this.loadModel(this.config.model);
    await this.modelLoading?.catch(() => undefined);
    if (seq !== this.datasetSeq) return;
    const modelDir = this.model?.dir;
    if (!modelDir || !this.model?.hasTokenizer) {
      // With a model still to come, its load sends the preview; otherwise say what is missing.
      if (!this.config?.model || this.model) {
        this.post({ type: 'preview', rows: [], error: 'Choose a model with a tokenizer to preview how rows are rendered and masked.' });
      }
      return;
    }
    try {
      const { previewRows } = await import('../core/dataset/preview');
      const rows = await previewRows({ data: file, modelDir, n: PREVIEW_ROWS });
      if (seq !== this.datasetSeq) return;
      this.post({
        type: 'preview',
        rows: rows.map((r) => ({ row: r.row, segments: r.segments.map((s) => ({ text: s.text, trained: s.trained })) })),
      });
    } catch (e) {
      if (seq !== this.datasetSeq) return;
      this.post({ type: 'preview', rows: [], error: (e as Error).message });
    }
  }

  private async sendEstimate(): Promise<void> {
    if (!this.model || !this.config) {
      this.post({ type: 'estimate', estimate: null });
      return;
    }
    try {
      this.post({ type: 'estimate', estimate: panelModelModule().estimateInfo(this.model, panelModelModule().fromPanelConfig(this.config), this.device) });
    } catch (e) {
      this.post({ type: 'estimate', estimate: null, error: (e as Error).message });
    }
  }

  private async download(repoId: string): Promise<void> {
    if (!this.host.trusted) return this.refuse(untrustedReason());
    const { downloadModel } = await import('./hubDownload');
    const { hfHubCacheDir } = await import('../core/model/hfCache');
    const token = vscode.workspace.getConfiguration('loraStudio').get<string>('hfToken', '') || process.env.HF_TOKEN || undefined;
    const hubUrl = process.env.HF_ENDPOINT || undefined;
    let last = 0;
    await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Downloading ${repoId}`, cancellable: true }, async (progress, cancel) => {
      const ac = new AbortController();
      cancel.onCancellationRequested(() => ac.abort());
      try {
        const dir = await downloadModel({
          repoId, cacheDir: hfHubCacheDir(), accessToken: token, hubUrl, signal: ac.signal,
          onProgress: (p) => {
            const now = Date.now();
            if (now - last < 200) return;
            last = now;
            progress.report({ message: `${p.file} (${Math.round((100 * p.bytes) / Math.max(1, p.totalBytes))}%)` });
            this.post({ type: 'downloadProgress', repoId, file: p.file, bytes: p.bytes, totalBytes: p.totalBytes, done: false });
          },
        });
        this.post({ type: 'downloadProgress', repoId, file: '', bytes: 0, totalBytes: 0, done: true });
        await this.selectModel(dir);
      } catch (e) {
        const msg = (e as Error).message;
        this.log.error(`download of ${repoId} failed: ${msg}`);
        this.post({ type: 'downloadProgress', repoId, file: '', bytes: 0, totalBytes: 0, done: true, error: msg });
      }
    });
  }
}

export function untrustedReason(): string {
  return 'Training is disabled in an untrusted workspace: it runs a native program on files from this workspace. Trust the workspace to train; past runs can still be viewed.';
}
