// Compare Runs page in headless Chromium: overlaid loss curves and the settings table,
// built from two real run folders by the host-side buildComparison.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { defaultConfig, toRunJson } from '../../src/core/config';
import { CHROMIUM, SCREENSHOTS, launchBrowser, openPanel, posted, send, servePanel, settle, type PanelServer } from './harness';
import { recordedRun } from './events';
import { requireWithVscode } from './vscodeStandIn';

// buildComparison lives in the vscode-facing module; load it with an empty stand-in for
// `vscode`, which it only needs for the panel it opens (not exercised here).
function loadBuildComparison(): typeof import('../../src/extension/compare').buildComparison {
  return requireWithVscode<typeof import('../../src/extension/compare')>('../../src/extension/compare').mod.buildComparison;
}

function writeRun(root: string, id: string, lr: number, r: number, seed: number): string {
  const dir = path.join(root, id);
  mkdirSync(dir, { recursive: true });
  const c = defaultConfig();
  c.model = '/models/tiny';
  c.data = '/data/chat.jsonl';
  c.train.lr = lr;
  c.lora.r = r;
  writeFileSync(path.join(dir, 'run.json'), JSON.stringify(toRunJson(c, { model: c.model, train: 'data/train.bin', eval: 'data/eval.bin', meta: { name: id, config: c } })));
  const lines = recordedRun({ steps: 300, evalEvery: 50, seed, status: 'completed' }).lines.map((l) => {
    const { event, ...rest } = l as { event: string };
    return JSON.stringify({ ...rest, type: event });
  });
  writeFileSync(path.join(dir, 'events.jsonl'), lines.join('\n') + '\n');
  return dir;
}

describe('Compare Runs page (headless Chromium)', { skip: existsSync(CHROMIUM) ? false : `no ${CHROMIUM}` }, () => {
  let server: PanelServer;
  let browser: Browser;
  let tmp: string;
  before(async () => {
    server = await servePanel();
    browser = await launchBrowser();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lora-compare-'));
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('overlays both runs and lists exactly the settings that differ', async () => {
    const buildComparison = loadBuildComparison();
    const a = writeRun(tmp, 'run-a', 2e-4, 16, 1);
    const b = writeRun(tmp, 'run-b', 1e-4, 32, 2);
    const msg = buildComparison([a, b]);
    assert.deepEqual(msg.diff.map((d) => d.field), ['lora.r', 'train.lr']);
    assert.deepEqual(msg.diff.find((d) => d.field === 'train.lr')!.values, ['0.0002', '0.0001']);
    assert.equal(msg.runs[0]!.steps.length, 300);
    assert.equal(msg.runs[0]!.evalSteps.length, 6);

    const { page, consoleErrors, cspViolations } = await openPanel(browser, `${server.url}compare`, 'dark', { width: 900, height: 700 });
    await send(page, { type: 'compare', ...msg });
    await settle(page);
    assert.equal(await page.getAttribute('#compare-chart', 'data-series'), '4', 'train and eval for each of the two runs');
    const inked = await page.evaluate(() => {
      const c = (globalThis as any).document.querySelector('#compare-chart canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
      return n;
    });
    assert.ok(inked > 1000, `the chart has drawn curves (${inked} pixels)`);
    const rows = await page.$$eval('#compare-diff tbody tr', (trs) => trs.map((tr) => (tr as any).innerText.split('\t')));
    assert.deepEqual(rows.map((r: string[]) => r[0]), ['status', 'lora.r', 'train.lr']);
    await send(page, { type: 'compare', runs: [{ id: 'x', label: 'x', status: 's', steps: [1], loss: [], evalSteps: [], evalLoss: [] }], diff: [] });
    assert.equal((await posted(page)).filter((m) => m.type === 'rejected').length, 1, 'a malformed compare message is rejected');
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'compare-dark.png'), fullPage: true });
    assert.deepEqual(cspViolations, []);
    assert.deepEqual(consoleErrors, []);
    await page.close();
  });
});
