// Try Adapter: an editor tab comparing a run's adapter with its base model. The pair is merged
// and exported once (cached in RUN_DIR/playground) on the export worker thread, off the
// extension host's thread; the host then streams both answers to the page. Text is batched per
// column on a short timer, so a fast small model does not flood the webview with one message
// per token.

import * as vscode from 'vscode';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parsePanelMessage, type HostMessage, type PlaygroundSettings, type PlaygroundSide } from '../../webview/protocol';
import { renderPlaygroundHtml } from './panelHtml';
import { coreProcess, coreRuns } from './lazy';
import type { Log } from './log';
import type { PlaygroundSession, SideResult } from '../core/playground/session';
import type { CancellationToken } from '../core/runtime/process';

const FLUSH_MS = 50;
const DEFAULTS: PlaygroundSettings = { temperature: 0.7, topP: 0.9, maxTokens: 256 };

export interface PlaygroundContext {
  extensionUri: vscode.Uri;
  log: Log;
  /** The workspace folder holding .lora-studio/pinned-prompts.json, if any. */
  workspaceDir: string | null;
}

interface RunSource { runDir: string; runName: string; modelDir: string; adapterDir: string }

/** The model and adapter of a run folder, or a message saying what is missing. */
export function runSource(runDir: string): RunSource | string {
  const { readRunJson, summarizeRun } = coreRuns();
  const runJson = readRunJson(runDir);
  if (!runJson) return `${path.join(runDir, 'run.json')} is missing or not valid JSON`;
  const model = typeof runJson.model === 'string' ? runJson.model : null;
  if (!model) return `${path.join(runDir, 'run.json')}: field "model" is not set`;
  const summary = summarizeRun(runDir);
  const adapterDir = summary.adapter ?? path.join(runDir, 'adapter');
  if (!fs.existsSync(path.join(adapterDir, 'adapter_model.safetensors'))) return `the run ${summary.name} has no final adapter yet (${adapterDir})`;
  return { runDir, runName: summary.name, modelDir: path.resolve(runDir, model), adapterDir };
}

export function openPlayground(ctx: PlaygroundContext, runDir: string): vscode.WebviewPanel | null {
  const source = runSource(runDir);
  if (typeof source === 'string') {
    void vscode.window.showWarningMessage(`LoRA Studio: cannot try the adapter: ${source}.`);
    return null;
  }
  const dist = vscode.Uri.joinPath(ctx.extensionUri, 'dist', 'webview');
  const panel = vscode.window.createWebviewPanel('loraStudio.playground', `Try: ${source.runName}`, vscode.ViewColumn.Active,
                                                 { enableScripts: true, retainContextWhenHidden: true, localResourceRoots: [dist] });
  panel.webview.html = renderPlaygroundHtml({
    cspSource: panel.webview.cspSource,
    scriptUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'playground.js')).toString(),
    styleUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'panel.css')).toString(),
  });
  const host = new PlaygroundHost(ctx, source, (m) => void panel.webview.postMessage(m));
  const sub = panel.webview.onDidReceiveMessage((raw) => void host.receive(raw));
  panel.onDidDispose(() => {
    sub.dispose();
    void host.dispose();
  });
  return panel;
}

class PlaygroundHost {
  private session: Promise<PlaygroundSession> | null = null;
  private busy = false;
  private job: Promise<void> | null = null;
  private cancel: (() => void) | null = null;
  private disposed = false;

  constructor(private readonly ctx: PlaygroundContext, private readonly source: RunSource, private readonly post: (m: HostMessage) => void) {}

  async receive(raw: unknown): Promise<void> {
    const r = parsePanelMessage(raw);
    if (!r.ok) {
      this.ctx.log.warn(`playground: dropped a message from the page: ${r.error}`);
      return;
    }
    const m = r.value;
    switch (m.type) {
      case 'ready':
        this.post({ type: 'playgroundInit', run: this.source.runName, model: this.source.modelDir, adapter: this.source.adapterDir,
                    settings: DEFAULTS, pinnedCount: this.pinnedCount() });
        if (this.busy) this.post({ type: 'playgroundStatus', busy: true, level: 'info', message: 'Working…' });
        break;
      case 'cancelGeneration':
        this.cancel?.();
        break;
      case 'generate':
        await this.exclusive((token, cancelled) => this.generate(m.prompt, m.settings, token, cancelled));
        break;
      case 'runPinned':
        await this.exclusive((token, cancelled) => this.runPinned(m.settings, token, cancelled));
        break;
      case 'rejected':
        this.ctx.log.warn(`playground page rejected a message: ${m.error}`);
        break;
      default:
        break;
    }
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    this.cancel?.();
    // ONNX Runtime sessions are released only after the job stops using them.
    await this.job;
    const s = this.session;
    this.session = null;
    if (s) await s.then((x) => x.close(), () => undefined);
  }

  private pinnedCount(): number {
    if (!this.ctx.workspaceDir) return 0;
    try {
      const { readPinnedPrompts } = require('../core/playground/pinned') as typeof import('../core/playground/pinned');
      return readPinnedPrompts(this.ctx.workspaceDir).length;
    } catch {
      // A broken file is reported when the user runs the prompts.
      return 0;
    }
  }

  private status(message: string, busy = this.busy): void {
    if (!this.disposed) this.post({ type: 'playgroundStatus', busy, level: 'info', message });
  }

  /** One job at a time, with a cancellation token that also stops a merge in progress. */
  private async exclusive(job: (token: CancellationToken, cancelled: () => boolean) => Promise<void>): Promise<void> {
    if (this.busy || this.disposed) return;
    this.job = this.runExclusive(job);
    await this.job;
  }

  private async runExclusive(job: (token: CancellationToken, cancelled: () => boolean) => Promise<void>): Promise<void> {
    const { CancellationTokenSource } = coreProcess();
    const cts = new CancellationTokenSource();
    this.busy = true;
    this.cancel = () => cts.cancel();
    try {
      await job(cts.token, () => cts.token.isCancellationRequested || this.disposed);
      this.status(cts.token.isCancellationRequested ? 'Stopped' : 'Done', false);
    } catch (e) {
      const err = e as Error & { hint?: string };
      this.ctx.log.error(`playground: ${err.message}`);
      if (cts.token.isCancellationRequested) this.status('Stopped', false);
      else if (!this.disposed) {
        // Core errors put their hint at the end of the message too; the page shows it apart.
        const hint = typeof err.hint === 'string' && err.hint ? err.hint : undefined;
        const message = hint && err.message.endsWith(`. ${hint}`) ? err.message.slice(0, -(hint.length + 2)) : err.message;
        this.post({ type: 'playgroundStatus', busy: false, level: 'error', message, ...(hint ? { hint } : {}) });
      }
    } finally {
      this.busy = false;
      this.job = null;
      this.cancel = null;
      cts.dispose();
    }
  }

  private openSession(token: CancellationToken): Promise<PlaygroundSession> {
    this.session ??= (async () => {
      const { locateRuntime } = await import('../core/runtime/locate');
      const { PlaygroundSession } = await import('../core/playground');
      const { preparePlaygroundInWorker } = await import('./exportInWorker');
      const runtime = await locateRuntime({ setting: vscode.workspace.getConfiguration('loraStudio').get<string>('runtimePath', ''), root: this.ctx.extensionUri.fsPath });
      // The ONNX writing is synchronous and takes minutes for a 7B model: a worker thread does it.
      const prepared = await preparePlaygroundInWorker({
        modelDir: this.source.modelDir, adapterDir: this.source.adapterDir, cacheDir: path.join(this.source.runDir, 'playground'),
        runtimePath: runtime.path, token,
        onProgress: (p) => this.status(p.message),
        onLog: (l) => this.ctx.log.runtime(l),
      });
      this.status('Loading the models in ONNX Runtime');
      const session = await PlaygroundSession.open({ modelDir: this.source.modelDir, baseOnnx: prepared.baseOnnx, adapterOnnx: prepared.adapterOnnx });
      this.ctx.log.info(`playground: base on ${session.providers.base}, adapter on ${session.providers.adapter}`);
      if (session.templateFallback) this.ctx.log.warn('playground: the model has no chat template; using the built-in alpaca template');
      return session;
    })();
    // A failed or cancelled preparation is tried again on the next request.
    this.session.catch(() => { this.session = null; });
    return this.session;
  }

  private async generate(prompt: string, settings: PlaygroundSettings, token: CancellationToken, cancelled: () => boolean): Promise<void> {
    this.status('Preparing the models');
    const session = await this.openSession(token);
    this.post({ type: 'playgroundStart', prompt });
    this.status('Generating…');
    const stream = new ColumnStream(this.post);
    try {
      await session.generate(prompt, settings, {
        onText: (side, delta, stats) => stream.push(side, delta, stats.tokens, stats.tokensPerS),
        onDone: (r) => stream.done(r),
      }, cancelled);
    } finally {
      stream.flush();
    }
  }

  private async runPinned(settings: PlaygroundSettings, token: CancellationToken, cancelled: () => boolean): Promise<void> {
    if (!this.ctx.workspaceDir) throw new Error('open a workspace folder to use pinned prompts (.lora-studio/pinned-prompts.json)');
    const { readPinnedPrompts, runPinnedPrompts } = await import('../core/playground/pinned');
    const prompts = readPinnedPrompts(this.ctx.workspaceDir);
    if (!prompts.length) throw Object.assign(new Error(`no pinned prompts in ${path.join(this.ctx.workspaceDir, '.lora-studio', 'pinned-prompts.json')}`),
                                             { hint: 'write a JSON array of prompt strings there' });
    const session = await this.openSession(token);
    const r = await runPinnedPrompts({
      session, prompts, runDir: this.source.runDir, adapterDir: this.source.adapterDir, settings, cancelled,
      onPrompt: (i, out) => {
        this.status(`Pinned prompt ${i + 1}/${prompts.length}`);
        this.post({ type: 'playgroundStart', prompt: out.prompt });
        for (const side of ['base', 'adapter'] as const) {
          this.post({ type: 'playgroundTokens', side, text: out[side].text, tokens: out[side].tokens, tokensPerS: 0 });
          this.post({ type: 'playgroundDone', side, tokens: out[side].tokens, tokensPerS: 0, stopReason: out[side].stop });
        }
      },
    });
    void vscode.window.showInformationMessage(`LoRA Studio: ${r.outputs.length} pinned prompt answers saved.`, 'Open').then((a) => {
      if (a) void vscode.window.showTextDocument(vscode.Uri.file(r.file));
    });
  }
}

/** Collects each column's text and posts it every FLUSH_MS. */
class ColumnStream {
  private pending: Record<PlaygroundSide, { text: string; tokens: number; tokensPerS: number } | null> = { base: null, adapter: null };
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly post: (m: HostMessage) => void) {}

  push(side: PlaygroundSide, text: string, tokens: number, tokensPerS: number): void {
    const p = this.pending[side];
    this.pending[side] = { text: (p?.text ?? '') + text, tokens, tokensPerS };
    this.timer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  done(r: SideResult): void {
    this.flushSide(r.side);
    this.post({ type: 'playgroundDone', side: r.side, tokens: r.tokens, tokensPerS: r.tokensPerS, stopReason: r.stopReason });
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.flushSide('base');
    this.flushSide('adapter');
  }

  private flushSide(side: PlaygroundSide): void {
    const p = this.pending[side];
    if (!p) return;
    this.pending[side] = null;
    this.post({ type: 'playgroundTokens', side, text: p.text, tokens: p.tokens, tokensPerS: p.tokensPerS });
  }
}
