// The extension inside a real VS Code (code-server in headless Chromium, started by
// test/integration/run.mjs). The workspace holds a tiny generated Llama model and a chat
// dataset; .vscode/settings.json points loraStudio.defaultModelFolder at the model.
// The "Fine-tune on This Dataset" test needs run.mjs to click Start inside the panel's
// webview, as a user would.

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { LoraStudioApi } from '../../../src/extension/extension';
import { applyPreset, defaultConfig } from '../../../src/core/config';
import { spawnProcess } from '../../../src/core/runtime/process';
import { metrics } from './index';

const EXTENSION_ID = 'lora-studio.lora-studio';
const COMMANDS = [
  'loraStudio.newTrainingRun', 'loraStudio.fineTuneDataset', 'loraStudio.stopTraining', 'loraStudio.resumeRun',
  'loraStudio.openRun', 'loraStudio.compareRuns', 'loraStudio.revealAdapter', 'loraStudio.showRuntimeLog',
  'loraStudio.tryAdapter', 'loraStudio.exportAdapter',
];

async function waitFor<T>(what: string, fn: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function workspaceRoot(): string {
  const f = vscode.workspace.workspaceFolders?.[0];
  assert.ok(f, 'the test workspace is open');
  return f.uri.fsPath;
}

describe('LoRA Studio in VS Code', () => {
  let api: LoraStudioApi;

  it('activates and exposes its API', async () => {
    const ext = vscode.extensions.getExtension<LoraStudioApi>(EXTENSION_ID);
    assert.ok(ext, `extension ${EXTENSION_ID} is installed in the development host`);
    api = await ext.activate();
    assert.ok(api.training && api.runs && api.view, 'the API has training, runs and view');
    assert.equal(api.runsRoot(), path.join(workspaceRoot(), '.lora-studio', 'runs'));
    metrics.activationMs = api.activationMs;
    metrics.moduleLoadMs = api.moduleLoadMs;
  });

  it('registers every command', async () => {
    const all = new Set(await vscode.commands.getCommands(true));
    for (const c of COMMANDS) assert.ok(all.has(c), `${c} is registered`);
  });

  it('Fine-tune on This Dataset trains the tiny model on the CPU to completion', async () => {
    const data = vscode.Uri.file(path.join(workspaceRoot(), 'data', 'chat.jsonl'));
    const before = new Set((await api.runs.list()).map((r) => r.id));
    await vscode.commands.executeCommand('loraStudio.fineTuneDataset', data);
    // run.mjs clicks Start in the panel once the model and the dataset are filled in.
    const run = await waitFor('a new run to start from the panel', async () => (await api.runs.list()).find((r) => !before.has(r.id)), 120_000);
    await waitFor('the run to finish', () => {
      const cur = api.training.currentRun();
      return cur && cur.runId === run.id && cur.status !== 'running';
    }, 180_000);
    const cur = api.training.currentRun()!;
    assert.equal(cur.status, 'completed', `the run completed (events: ${JSON.stringify(cur.events.slice(-3))})`);
    assert.ok(cur.events.some((e) => e.type === 'step'), 'the panel received step events');
    const adapter = path.join(run.dir, 'adapter');
    assert.ok(fs.existsSync(path.join(adapter, 'adapter_model.safetensors')), 'adapter_model.safetensors exists');
    const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'LORA');
    assert.ok(fs.existsSync(path.join(run.dir, 'runtime.log')), 'stderr went to runtime.log');
    assert.ok(!fs.existsSync(path.join(run.dir, 'runtime.pid')), 'the pid file is removed when the runtime exits');
  });

  it('lists the finished run in the Runs view with its status and loss', async () => {
    await vscode.commands.executeCommand('loraStudio.runsView.focus');
    const items = await api.runs.getChildren();
    assert.ok(items.length >= 1, 'the Runs view has an item');
    const first = items[0]!;
    assert.match(String(first.description), /^completed · \d+\/\d+ steps · loss \d+\.\d{4}/);
    assert.match(String(first.contextValue), /adapter/);
    const children = await api.runs.getChildren(first);
    assert.ok(children.some((c) => c.label === 'adapter'), 'the run shows its adapter');
  });

  it('Stop Training stops a run mid-way and records it as stopped', async () => {
    const root = workspaceRoot();
    const c = applyPreset(defaultConfig(), 'cpu-quick');
    c.model = path.join(root, 'models', 'tiny');
    c.data = path.join(root, 'data', 'chat.jsonl');
    c.train.maxSteps = 100_000;
    c.train.saveEvery = 0;
    c.dataOptions.evalSplit = 0;
    const id = await api.training.start(c);
    assert.ok(id, 'the run started');
    await waitFor('the first training steps', () => {
      const cur = api.training.currentRun();
      return cur && cur.runId === id && cur.events.filter((e) => e.type === 'step').length >= 2;
    }, 120_000);
    await vscode.commands.executeCommand('loraStudio.stopTraining');
    const cur = api.training.currentRun()!;
    assert.equal(cur.runId, id);
    assert.equal(cur.status, 'stopped');
    const dir = path.join(api.runsRoot()!, id);
    const lines = fs.readFileSync(path.join(dir, 'events.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const done = lines.filter((l) => l.type === 'done');
    assert.deepEqual(done.map((d) => d.status), ['stopped'], 'one done event, status stopped');
    assert.ok(done[0].step < 100_000, 'it stopped before the planned end');
    assert.ok(!fs.existsSync(path.join(dir, 'runtime.pid')), 'the runtime has exited');
    const listed = (await api.runs.list()).find((r) => r.id === id);
    assert.equal(listed?.status, 'stopped');
  });

  it('re-attaches to a run that another window started, follows it and stops it', async () => {
    const root = api.runsRoot()!;
    const stopped = (await api.runs.list()).find((r) => r.status === 'stopped');
    assert.ok(stopped, 'the stopped run of the previous test is there to copy');
    // A run started "before the reload": same run folder layout, a runtime that is not our child.
    const dir = path.join(root, `${stopped.id}-elsewhere`);
    fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
    for (const f of ['run.json', 'data/train.bin']) fs.copyFileSync(path.join(stopped.dir, f), path.join(dir, f));
    const runtime = vscode.workspace.getConfiguration('loraStudio').get<string>('runtimePath')!;
    const other = spawnProcess(runtime, ['train', '--run', dir], { cwd: dir, pidFile: path.join(dir, 'runtime.pid') });
    try {
      await waitFor('the other runtime to write steps', () => fs.existsSync(path.join(dir, 'events.jsonl')) && fs.readFileSync(path.join(dir, 'events.jsonl'), 'utf8').includes('"type":"step"'), 60_000);
      await api.training.reattach();
      const cur = api.training.currentRun();
      assert.equal(cur?.runId, path.basename(dir), 'the live run is followed');
      assert.equal(cur?.live, true);
      const seen = cur!.events.length;
      await waitFor('new events from the followed run', () => (api.training.currentRun()?.events.length ?? 0) > seen + 2, 60_000);
      await vscode.commands.executeCommand('loraStudio.stopTraining');
      assert.equal(api.training.currentRun()?.status, 'stopped');
      const exit = await other.exited;
      assert.equal(exit.code, 0, 'the runtime stopped gracefully on SIGTERM');
    } finally {
      other.kill();
    }
  });

  it('Resume Run continues a stopped run from its checkpoint', async () => {
    const stopped = (await api.runs.list()).find((r) => r.status === 'stopped' && !r.id.endsWith('-elsewhere'));
    assert.ok(stopped?.lastCheckpoint, 'the stopped run has a checkpoint');
    const stoppedAt = stopped.step;
    await vscode.commands.executeCommand('loraStudio.resumeRun', stopped.dir);
    await waitFor('steps after the checkpoint', () => {
      const cur = api.training.currentRun();
      return cur && cur.runId === stopped.id && cur.live && cur.events.some((e) => e.type === 'step' && e.step > stoppedAt + 1);
    }, 120_000);
    await vscode.commands.executeCommand('loraStudio.stopTraining');
    const cur = api.training.currentRun()!;
    assert.equal(cur.status, 'stopped');
    const lines = fs.readFileSync(path.join(stopped.dir, 'events.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.filter((l) => l.type === 'done').length, 2, 'the resumed session appended its own done event');
  });

  it("reports a runtime failure with the runtime's own message and hint", async () => {
    const failing = process.env.LORA_STUDIO_IT_FAILING_RUNTIME;
    assert.ok(failing, 'run.mjs provides a runtime that rejects its config');
    const settings = vscode.workspace.getConfiguration('loraStudio');
    const real = settings.get<string>('runtimePath');
    await settings.update('runtimePath', failing, vscode.ConfigurationTarget.Workspace);
    try {
      const root = workspaceRoot();
      const c = applyPreset(defaultConfig(), 'cpu-quick');
      c.model = path.join(root, 'models', 'tiny');
      c.data = path.join(root, 'data', 'chat.jsonl');
      const id = await api.training.start(c);
      assert.ok(id);
      await waitFor('the failure', () => api.training.currentRun()?.runId === id && api.training.currentRun()?.status === 'failed', 60_000);
      const cur = api.training.currentRun()!;
      assert.equal(cur.message, 'lora.r must be at most 64 for this model');
      assert.equal(cur.hint, 'use r <= 64');
      const listed = (await api.runs.list()).find((r) => r.id === id);
      assert.equal(listed?.status, 'failed');
    } finally {
      await settings.update('runtimePath', real, vscode.ConfigurationTarget.Workspace);
    }
  });

  it('re-validates a dataset when it changes and shows its problems with line numbers', async () => {
    const file = path.join(workspaceRoot(), 'data', 'broken.jsonl');
    const good = '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}';
    fs.writeFileSync(file, `${good}\n{"messages": [oops\n${good}\n`);
    const uri = vscode.Uri.file(file);
    await vscode.commands.executeCommand('loraStudio.fineTuneDataset', uri);
    const errors = await waitFor('diagnostics for the broken line', () => {
      const d = vscode.languages.getDiagnostics(uri).filter((x) => x.severity === vscode.DiagnosticSeverity.Error);
      return d.length ? d : null;
    }, 30_000);
    assert.equal(errors[0]!.range.start.line, 1, 'the error is on line 2 (0-based 1)');
    assert.equal(errors[0]!.source, 'LoRA Studio');
    fs.writeFileSync(file, `${good}\n${good.replace('hi', 'hey')}\n`);
    await waitFor('the diagnostics to clear after the fix', () => vscode.languages.getDiagnostics(uri).filter((x) => x.severity === vscode.DiagnosticSeverity.Error).length === 0, 30_000);
  });

  it('opens a past run and compares runs in an editor tab', async () => {
    const items = await api.runs.getChildren();
    const completed = items.find((i) => String(i.description).startsWith('completed'));
    assert.ok(completed, 'a completed run is listed');
    await vscode.commands.executeCommand('loraStudio.openRun', completed);
    const cur = api.training.currentRun();
    assert.equal(cur?.live, false);
    assert.equal(cur?.status, 'completed');
    assert.ok(cur!.events.some((e) => e.type === 'step'), 'its charts come from events.jsonl');
    const two = items.filter((i) => i.contextValue?.startsWith('run')).slice(0, 2);
    assert.equal(two.length, 2);
    await vscode.commands.executeCommand('loraStudio.compareRuns', two[0], two);
    const tab = await waitFor('the Compare tab', () => vscode.window.tabGroups.all.flatMap((g) => g.tabs).find((t) => t.label.startsWith('Compare:')), 10_000);
    assert.ok(tab.input instanceof vscode.TabInputWebview, 'Compare Runs is a webview tab');
  });

  it('opens Try Adapter for a finished run in an editor tab', async () => {
    const items = await api.runs.getChildren();
    const completed = items.find((i) => String(i.description).startsWith('completed') && /adapter/.test(i.contextValue ?? ''));
    assert.ok(completed, 'a completed run with an adapter is listed');
    await vscode.commands.executeCommand('loraStudio.tryAdapter', completed);
    const tab = await waitFor('the Try Adapter tab', () => vscode.window.tabGroups.all.flatMap((g) => g.tabs).find((t) => t.label.startsWith('Try: ')), 10_000);
    assert.ok(tab.input instanceof vscode.TabInputWebview, 'Try Adapter is a webview tab');
    // The workspace has pinned prompts: the finished run's adapter answered them in the background.
    const saved = path.join((completed as unknown as { run: { dir: string } }).run.dir, 'playground', 'pinned-outputs.json');
    await waitFor('the pinned prompts\' answers', () => fs.existsSync(saved), 120_000);
    const outputs = JSON.parse(fs.readFileSync(saved, 'utf8')).outputs as { prompt: string; base: { tokens: number }; adapter: { tokens: number } }[];
    assert.deepEqual(outputs.map((o) => o.prompt), ['Tell me one fact about owls.', 'What about tea?']);
  });
  it('exports a finished run\'s adapter as a GGUF adapter (format and folder passed, no pickers)', async () => {
    const items = await api.runs.getChildren();
    const completed = items.find((i) => String(i.description).startsWith('completed') && /adapter/.test(i.contextValue ?? ''));
    assert.ok(completed, 'a completed run with an adapter is listed');
    const out = path.join(workspaceRoot(), 'exports');
    const r = await vscode.commands.executeCommand<{ format: string; files: string[] } | undefined>('loraStudio.exportAdapter', completed, { format: 'gguf-adapter', outDir: out });
    assert.ok(r, 'the export returns its result');
    assert.equal(r.format, 'gguf-adapter');
    assert.equal(path.dirname(r.files[0]), out);
    assert.match(path.basename(r.files[0]), /-lora-f32\.gguf$/);
    const head = Buffer.alloc(8);
    const fd = fs.openSync(r.files[0], 'r');
    try {
      fs.readSync(fd, head, 0, 8, 0);
    } finally {
      fs.closeSync(fd);
    }
    assert.equal(head.subarray(0, 4).toString('latin1'), 'GGUF');
    assert.equal(head.readUInt32LE(4), 3, 'GGUF version 3');
  });
});
