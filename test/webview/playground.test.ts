// Try Adapter page in headless Chromium: the prompt and settings go to the host as a validated
// `generate` message, and the base and adapter answers stream into their columns from the
// host's messages, each column with its token count and tokens/s.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { parsePanelMessage } from '../../webview/protocol';
import { CHROMIUM, SCREENSHOTS, launchBrowser, openPanel, posted, send, settle, servePanel, type PanelServer } from './harness';

const INIT = {
  type: 'playgroundInit', run: 'tiny-chat-20260101-120000', model: '/models/tiny-llama', adapter: '/runs/tiny-chat/adapter',
  settings: { temperature: 0.7, topP: 0.9, maxTokens: 128 }, pinnedCount: 3,
};

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
});
