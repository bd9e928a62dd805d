// Try Adapter page in headless Chromium: the prompt and settings go to the host as a validated
// `generate` message, and the base and adapter answers stream into their columns from the
// host's messages, each column with its token count and tokens/s.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { parseHostMessage, parsePanelMessage } from '../../webview/protocol';
import { CHROMIUM, ROOT, SCREENSHOTS, launchBrowser, openPanel, posted, send, settle, servePanel, type PanelServer } from './harness';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { runtimeWith, writeRandomAdapter } from '../unit/exportReference';
import { requireWithVscode } from './vscodeStandIn';

type PlaygroundModule = typeof import('../../src/extension/playground');

/** The host module with a stand-in for `vscode` that records the one webview panel it opens. */
function loadHost(): { mod: PlaygroundModule; panel: () => FakePanel; warnings: string[] } {
  const { mod, vscode } = requireWithVscode<PlaygroundModule, { __lastPanel(): FakePanel; __warnings: string[] }>(
    '../../src/extension/playground', `
const path = require('node:path');
let last = null;
const warnings = [];
module.exports = {
  __lastPanel: () => last,
  __warnings: warnings,
  Uri: { joinPath: (u, ...p) => ({ fsPath: path.join(u.fsPath, ...p) }), file: (f) => ({ fsPath: f }) },
  ViewColumn: { Active: -1 },
  window: {
    createWebviewPanel: (viewType, title) => {
      const handlers = { message: [], dispose: [] };
      last = {
        viewType, title, posted: [], handlers,
        webview: {
          html: '', cspSource: 'test:',
          asWebviewUri: (u) => ({ toString: () => 'test:' + u.fsPath }),
          postMessage: async (m) => { last.posted.push(m); last.onPost?.(m); return true; },
          onDidReceiveMessage: (fn) => { handlers.message.push(fn); return { dispose() {} }; },
        },
        onDidDispose: (fn) => { handlers.dispose.push(fn); return { dispose() {} }; },
      };
      return last;
    },
    showWarningMessage: async (m) => { warnings.push(m); return undefined; },
    showInformationMessage: async () => undefined,
    showTextDocument: async () => undefined,
  },
  workspace: { getConfiguration: () => ({ get: (k, d) => d }) },
};`);
  return { mod, panel: () => vscode.__lastPanel(), warnings: vscode.__warnings };
}

interface FakePanel {
  title: string;
  posted: any[];
  onPost?: (m: any) => void;
  handlers: { message: ((m: unknown) => unknown)[]; dispose: (() => void)[] };
}

const INIT = {
  type: 'playgroundInit', run: 'tiny-chat-20260101-120000', model: '/models/tiny-llama', adapter: '/runs/tiny-chat/adapter',
  settings: { temperature: 0.7, topP: 0.9, maxTokens: 128 }, pinnedCount: 3,
};

describe('Try Adapter messages', () => {
  const settings = { temperature: 0.7, topP: 0.9, maxTokens: 64 };
  it('the host accepts generate / runPinned / cancelGeneration and refuses bad settings by field', () => {
    assert.deepEqual(parsePanelMessage({ type: 'generate', prompt: 'hi', settings: { ...settings, system: '  ' } }),
                     { ok: true, value: { type: 'generate', prompt: 'hi', settings } }, 'a blank system message is dropped');
    assert.deepEqual(parsePanelMessage({ type: 'cancelGeneration' }), { ok: true, value: { type: 'cancelGeneration' } });
    assert.ok(parsePanelMessage({ type: 'runPinned', settings }).ok);
    const refused: [unknown, RegExp][] = [
      [{ type: 'generate', prompt: '   ', settings }, /message\.prompt: empty/],
      [{ type: 'generate', prompt: 'x'.repeat(40_000), settings }, /message\.prompt: longer than 32768/],
      [{ type: 'generate', prompt: 'hi', settings: { ...settings, topP: 0 } }, /message\.settings\.topP: must be above 0/],
      [{ type: 'generate', prompt: 'hi', settings: { ...settings, temperature: 3 } }, /message\.settings\.temperature: 3 is outside \[0, 2\]/],
      [{ type: 'generate', prompt: 'hi', settings: { ...settings, maxTokens: 1.5 } }, /message\.settings\.maxTokens: expected an integer/],
      [{ type: 'runPinned' }, /message\.settings: expected an object/],
    ];
    for (const [m, re] of refused) {
      const r = parsePanelMessage(m);
      assert.ok(!r.ok && re.test(r.error), `${JSON.stringify(m).slice(0, 80)} -> ${JSON.stringify(r)}`);
    }
  });
  it('the page accepts the playground host messages and refuses impossible ones', () => {
    assert.ok(parseHostMessage({ type: 'playgroundTokens', side: 'adapter', text: 'x', tokens: 1, tokensPerS: 3.5 }).ok);
    assert.ok(parseHostMessage({ type: 'playgroundDone', side: 'base', tokens: 0, tokensPerS: 0, stopReason: 'cancelled' }).ok);
    const r = parseHostMessage({ type: 'playgroundDone', side: 'base', tokens: -1, tokensPerS: 0, stopReason: 'eos' });
    assert.ok(!r.ok && /tokens/.test(r.error));
    const s = parseHostMessage({ type: 'playgroundStatus', busy: false, level: 'warning', message: 'x' });
    assert.ok(!s.ok && /level/.test(s.error));
  });
});

describe('Try Adapter page (headless Chromium)', { skip: existsSync(CHROMIUM) ? false : `no ${CHROMIUM}` }, () => {
  let server: PanelServer;
  let browser: Browser;
  before(async () => {
    server = await servePanel();
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  it('sends the prompt with its settings and streams both columns', async () => {
    const { page, consoleErrors, cspViolations } = await openPanel(browser, `${server.url}playground`, 'dark', { width: 1000, height: 640 });
    assert.equal(await page.isDisabled('#pg-generate'), true, 'nothing to send before init');
    await send(page, INIT);
    await settle(page);
    assert.equal(await page.inputValue('#pg-temperature'), '0.7');
    assert.equal(await page.inputValue('#pg-max-tokens'), '128');
    assert.equal(await page.textContent('#pg-pinned'), 'Run 3 pinned prompts');
    assert.equal(await page.isDisabled('#pg-generate'), true, 'an empty prompt cannot be sent');

    await page.fill('#pg-prompt', 'What does a LoRA adapter change?');
    await page.fill('#pg-max-tokens', '5000');
    await page.click('#pg-generate');
    assert.match((await page.textContent('#pg-error')) ?? '', /max tokens must be a whole number from 1 to 4096/);
    assert.equal((await posted(page)).filter((m) => m.type === 'generate').length, 0, 'an out-of-range setting is not sent');
    await page.fill('#pg-max-tokens', '64');
    await page.fill('#pg-temperature', '0');
    await page.click('#pg-generate');
    const gen = (await posted(page)).filter((m) => m.type === 'generate');
    assert.equal(gen.length, 1);
    const parsed = parsePanelMessage(gen[0]);
    assert.ok(parsed.ok, 'the host accepts what the page sends');
    assert.deepEqual(gen[0], { type: 'generate', prompt: 'What does a LoRA adapter change?', settings: { temperature: 0, topP: 0.9, maxTokens: 64 } });

    await send(page, { type: 'playgroundStatus', busy: true, level: 'info', message: 'Generating…' });
    await send(page, { type: 'playgroundStart', prompt: 'What does a LoRA adapter change?' });
    const base = ['It ', 'adds ', 'nothing.'];
    const adapter = ['It ', 'adds a ', 'low-rank ', 'update ', 'to W.'];
    for (let i = 0; i < Math.max(base.length, adapter.length); i++) {
      if (i < base.length) await send(page, { type: 'playgroundTokens', side: 'base', text: base[i], tokens: i + 1, tokensPerS: 40 + i });
      if (i < adapter.length) await send(page, { type: 'playgroundTokens', side: 'adapter', text: adapter[i], tokens: 2 * (i + 1), tokensPerS: 38.5 });
      await settle(page);
      if (i === 1) {
        assert.equal(await page.textContent('#pg-out-base'), 'It adds ', 'tokens appear as they arrive');
        assert.equal(await page.textContent('#pg-out-adapter'), 'It adds a ');
        assert.equal(await page.isDisabled('#pg-stop'), false, 'a running generation can be stopped');
        assert.equal(await page.isDisabled('#pg-generate'), true);
      }
    }
    assert.equal(await page.textContent('#pg-out-base'), base.join(''));
    assert.equal(await page.textContent('#pg-out-adapter'), adapter.join(''));
    assert.equal(await page.textContent('#pg-rate-adapter'), '10 tokens · 38.5 tokens/s');
    await page.click('#pg-stop');
    assert.equal((await posted(page)).filter((m) => m.type === 'cancelGeneration').length, 1);
    await send(page, { type: 'playgroundDone', side: 'base', tokens: 3, tokensPerS: 42, stopReason: 'eos' });
    await send(page, { type: 'playgroundDone', side: 'adapter', tokens: 10, tokensPerS: 38.5, stopReason: 'max_tokens' });
    await send(page, { type: 'playgroundStatus', busy: false, level: 'info', message: 'Done' });
    await settle(page);
    assert.equal(await page.textContent('#pg-rate-base'), '3 tokens · 42.0 tokens/s · end of answer');
    assert.equal(await page.textContent('#pg-rate-adapter'), '10 tokens · 38.5 tokens/s · max tokens');
    assert.equal(await page.isDisabled('#pg-generate'), false);
    assert.equal(await page.$$eval('.pg-output.streaming', (els) => els.length), 0);

    await page.click('#pg-pinned');
    const pinned = (await posted(page)).filter((m) => m.type === 'runPinned');
    assert.deepEqual(pinned, [{ type: 'runPinned', settings: { temperature: 0, topP: 0.9, maxTokens: 64 } }]);

    await send(page, { type: 'playgroundStatus', busy: false, level: 'error', message: 'lora-runtime merge failed (exit 2): adapter_config.json: r must be positive', hint: 'retrain' });
    await settle(page);
    assert.match((await page.textContent('#pg-error')) ?? '', /merge failed.*retrain/);
    await send(page, { type: 'playgroundTokens', side: 'middle', text: 'x', tokens: 1, tokensPerS: 1 });
    await settle(page);
    const rejected = (await posted(page)).filter((m) => m.type === 'rejected');
    assert.equal(rejected.length, 1, 'a message for an unknown column is rejected');
    assert.match(rejected[0].error, /side/);
    assert.equal(await page.textContent('#pg-out-base'), base.join(''), 'and changes nothing');
    await send(page, { type: 'playgroundStatus', busy: false, level: 'info', message: 'Done' });
    await page.evaluate(() => { (globalThis as any).document.getElementById('pg-error').hidden = true; });

    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'playground-dark.png'), fullPage: true });
    assert.deepEqual(cspViolations, []);
    assert.deepEqual(consoleErrors, []);
    await page.close();
  });

  const mergeCmd = runtimeWith('merge');
  it('end to end: the extension host prepares a tiny model + adapter and both columns stream into the page', { skip: mergeCmd.skip }, async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'lora-playground-e2e-'));
    try {
      const modelDir = path.join(tmp, 'model');
      writeTinyModel(modelDir, { layers: 2, hidden: 64, heads: 4, kvHeads: 2 });
      const runDir = path.join(tmp, 'runs', 'tiny-20260101-000000');
      writeRandomAdapter(path.join(runDir, 'adapter'), modelDir, { r: 4, alpha: 8, seed: 5 });
      writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ v: 1, model: modelDir }));
      const { mod, panel: lastPanel, warnings } = loadHost();
      const untrained = path.join(tmp, 'runs', 'untrained-20260101-000000');
      mkdirSync(untrained, { recursive: true });
      writeFileSync(path.join(untrained, 'run.json'), JSON.stringify({ v: 1, model: modelDir }));
      assert.equal(mod.openPlayground({ extensionUri: { fsPath: ROOT } as any, log: { info() {}, warn() {}, error() {}, runtime() {}, show() {} }, workspaceDir: null }, untrained), null);
      assert.match(warnings[0] ?? '', /has no final adapter yet/, 'a run without an adapter gets a warning, not a panel');
      const opened = mod.openPlayground({ extensionUri: { fsPath: ROOT } as any, log: { info() {}, warn() {}, error() {}, runtime() {}, show() {} }, workspaceDir: null }, runDir);
      assert.ok(opened, 'the panel opens for a run with an adapter');
      const host = lastPanel();
      assert.equal(host.title, 'Try: tiny-20260101-000000');

      const { page, consoleErrors, cspViolations } = await openPanel(browser, `${server.url}playground`, 'dark', { width: 1000, height: 640 });
      // The bridge: what the host posts goes to the page in order; what the page posts goes to the host.
      let chain = Promise.resolve();
      host.onPost = (m) => { chain = chain.then(() => send(page, m)); };
      const deliver = async () => {
        for (const m of await posted(page)) for (const h of host.handlers.message) await h(m);
        await page.evaluate(() => { (globalThis as any).__posted = []; });
      };
      await deliver();
      await chain;
      await settle(page);
      assert.match((await page.textContent('#pg-title')) ?? '', /tiny-20260101-000000/);
      await page.fill('#pg-prompt', 'Tell me about the sea');
      await page.fill('#pg-temperature', '0');
      await page.fill('#pg-max-tokens', '16');
      await page.click('#pg-generate');
      await deliver();
      // The host merges, exports and generates in the background; wait for both answers or a failure.
      const until = Date.now() + 120_000;
      while (host.posted.filter((m) => m.type === 'playgroundDone').length < 2 && !host.posted.some((m) => m.type === 'playgroundStatus' && m.level === 'error')) {
        assert.ok(Date.now() < until, `no answers within 120 s: ${JSON.stringify(host.posted.slice(-3))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 100));
      await chain;
      await settle(page);
      const status = host.posted.filter((m) => m.type === 'playgroundStatus');
      assert.ok(!status.some((m) => m.level === 'error'), JSON.stringify(status));
      const done = host.posted.filter((m) => m.type === 'playgroundDone');
      assert.deepEqual(done.map((m) => m.side).sort(), ['adapter', 'base']);
      const tokenMsgs = host.posted.filter((m) => m.type === 'playgroundTokens');
      for (const side of ['base', 'adapter'] as const) {
        const text = tokenMsgs.filter((m) => m.side === side).map((m) => m.text).join('');
        const d = done.find((m) => m.side === side);
        assert.ok(d.tokens > 0 && d.tokens <= 16, `${side}: ${d.tokens} tokens`);
        assert.ok(text.length > 0, `${side} streamed text`);
        assert.equal(await page.textContent(`#pg-out-${side}`), text, `${side}: the page shows what streamed`);
        assert.match((await page.textContent(`#pg-rate-${side}`)) ?? '', /tokens/);
      }
      assert.notEqual(await page.textContent('#pg-out-base'), null);
      assert.ok(existsSync(path.join(runDir, 'playground', 'adapter-onnx', 'model.onnx')), 'the exported pair is cached beside the run');
      assert.equal(host.posted.filter((m) => m.type === 'playgroundStatus' && m.level === 'error').length, 0);
      assert.deepEqual(cspViolations, []);
      assert.deepEqual(consoleErrors, []);
      for (const h of host.handlers.dispose) h();
      await page.close();
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
