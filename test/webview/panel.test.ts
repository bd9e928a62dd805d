// The training panel in a real browser (headless Debian Chromium): form -> config,
// host messages -> UI, recorded run events -> charts, protocol validation, screenshots.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { parsePanelMessage, toChartEvent, type ChartEvent, type HostMessage, type PanelConfig } from '../../webview/protocol';
import { CHROMIUM, SCREENSHOTS, launchBrowser, openPanel, posted, send, servePanel, settle, type PanelServer, type Theme } from './harness';
import { recordedRun } from './events';

const haveChromium = existsSync(CHROMIUM);
const skip = haveChromium ? false : `no ${CHROMIUM}: run scripts/setup.sh (apt-get install chromium)`;

function baseConfig(): PanelConfig {
  return {
    model: '', data: '', preset: 'qlora-balanced',
    lora: { r: 16, alpha: 32, dropout: 0.05, rslora: false, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] },
    quant: { type: 'nf4', doubleQuant: true },
    train: { lr: 2e-4, schedule: 'cosine', warmupSteps: 10, epochs: 1, maxSteps: null, seqLen: 2048, microBatch: 1, gradAccum: 8,
             evalSplit: 0.05, gradCheckpointing: true, saveEvery: 100 },
  };
}

function initMessage(over: Partial<Extract<HostMessage, { type: 'init' }>> = {}): HostMessage {
  const fast = baseConfig();
  fast.preset = 'attention-fast';
  fast.lora = { ...fast.lora, r: 8, alpha: 16, targets: ['q_proj', 'v_proj'] };
  return {
    type: 'init', version: 1, trusted: true,
    presets: [
      { id: 'qlora-balanced', label: 'QLoRA balanced', description: 'NF4 base, r 16 on all linear layers.', config: baseConfig() },
      { id: 'attention-fast', label: 'Attention only, fast', description: 'r 8 on q and v.', config: fast },
    ],
    config: baseConfig(),
    cachedModels: [{ path: '/home/u/.cache/huggingface/hub/models--org--tiny/snapshots/abc', repoId: 'org/tiny', arch: 'llama', sizeBytes: 2.47e9 }],
    device: { name: 'NVIDIA GeForce RTX 4090', kind: 'cuda', memoryTotal: 25757220864, memoryFree: 23622320128 },
    ...over,
  } as HostMessage;
}

const modelMessage: HostMessage = {
  type: 'model',
  model: { path: '/models/SmolLM2-1.7B-Instruct', arch: 'llama', layers: 24, hidden: 2048, paramsTotal: 1.71e9, sizeBytes: 3.42e9, dtype: 'bf16',
           targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] },
};
const datasetMessage: HostMessage = {
  type: 'dataset',
  dataset: { path: '/work/data/chat.jsonl', format: 'messages', rows: 1280, errors: 0, warnings: 1,
             diagnostics: [{ severity: 'warning', code: 'empty-system', message: 'system message is empty', line: 17, hint: 'remove it or fill it in' }] },
};
const previewMessage: HostMessage = {
  type: 'preview',
  rows: [{ row: 0, segments: [
    { text: '<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n', trained: false },
    { text: 'A low-rank update of frozen weights.<|im_end|>', trained: true },
  ] }],
};
const estimateMessage: HostMessage = {
  type: 'estimate',
  estimate: { parts: [{ label: 'base weights (NF4)', bytes: 1.02e9 }, { label: 'LoRA + AdamW', bytes: 1.8e8 }, { label: 'activations', bytes: 3.1e9 },
                      { label: 'workspace', bytes: 6e8 }],
              totalBytes: 4.9e9, deviceName: 'NVIDIA GeForce RTX 4090', deviceFreeBytes: 23622320128, trainableParams: 18087936, totalParams: 1.71e9 },
};

function chartEvents(lines: Record<string, unknown>[]): ChartEvent[] {
  return lines.map(toChartEvent).filter((e): e is ChartEvent => e !== null);
}

/** Sends events the way the host streams them: batches of at most `batch` lines. */
async function stream(page: Page, runId: string, events: ChartEvent[], batch: number): Promise<void> {
  for (let i = 0; i < events.length; i += batch) await send(page, { type: 'events', runId, events: events.slice(i, i + batch) });
}

/** Counts canvas pixels that differ from the first pixel: zero means nothing was drawn. */
async function inkedPixels(page: Page, selector: string): Promise<number> {
  return page.evaluate((sel) => {
    const canvas = (globalThis as any).document.querySelector(`${sel} canvas`);
    if (!canvas) return -1;
    const ctx = canvas.getContext('2d');
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] !== 0) n++;
    return n;
  }, selector);
}

/** The toolkit's buttons are custom elements: read their `disabled` property. */
async function isDisabled(page: Page, selector: string): Promise<boolean> {
  return page.evaluate((sel) => !!(globalThis as any).document.querySelector(sel).disabled, selector);
}

async function attr(page: Page, selector: string, name: string): Promise<string | null> {
  return page.getAttribute(selector, name);
}

/** Screenshots the whole panel; the viewport grows to the content first so the sticky
 *  Start/Stop bar sits at the bottom instead of over the form, as in a tall sidebar. */
async function shoot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await settle(page);
  const height = await page.evaluate(() => (globalThis as any).document.documentElement.scrollHeight as number);
  const before = page.viewportSize()!;
  await page.setViewportSize({ width: before.width, height });
  await settle(page);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
  await page.setViewportSize(before);
}

describe('training panel (headless Chromium)', { skip }, () => {
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

  it('posts ready, fills the form from init, and posts a valid config on Start', async () => {
    const { page, consoleErrors, cspViolations } = await openPanel(browser, server.url, 'dark');
    assert.deepEqual((await posted(page))[0], { type: 'ready' });
    assert.equal(await isDisabled(page, '#start'), true, 'Start is disabled before a model and dataset are chosen');

    await send(page, initMessage());
    await send(page, modelMessage);
    await send(page, datasetMessage);
    await settle(page);
    assert.match(await page.textContent('#model-summary') ?? '', /llama · 1\.71B params · 24 layers/);
    assert.match(await page.textContent('#dataset-summary') ?? '', /1280 rows · messages · 0 errors · 1 warnings/);
    assert.match(await page.textContent('#dataset-diagnostics') ?? '', /line 17: system message is empty/);
    assert.equal(await page.locator('#targets vscode-checkbox').count(), 7, 'one checkbox per module the model has');

    // Edit fields the way a user does: type into the toolkit's inner input.
    await page.fill('#lora-r input', '32');
    await page.fill('#lora-alpha input', '64');
    await page.fill('#train-lr input', '0.0001');
    await page.fill('#train-max-steps input', '300');
    await page.click('#targets-attention');
    await page.click('#lora-rslora');
    await settle(page);
    assert.equal(await isDisabled(page, '#start'), false, 'Start is enabled once the form is complete');
    await page.click('#start');

    const start = (await posted(page)).filter((m) => m.type === 'start').pop();
    assert.ok(start, 'the panel posted a start message');
    const parsed = parsePanelMessage(start);
    assert.ok(parsed.ok, `start message validates: ${parsed.ok ? '' : parsed.error}`);
    const c = (parsed.value as Extract<typeof parsed.value, { type: 'start' }>).config;
    assert.equal(c.model, '/models/SmolLM2-1.7B-Instruct');
    assert.equal(c.data, '/work/data/chat.jsonl');
    assert.equal(c.lora.r, 32);
    assert.equal(c.lora.alpha, 64);
    assert.equal(c.lora.rslora, true);
    assert.deepEqual(c.lora.targets, ['q_proj', 'k_proj', 'v_proj', 'o_proj']);
    assert.equal(c.train.lr, 1e-4);
    assert.equal(c.train.maxSteps, 300);
    assert.equal(c.quant.type, 'nf4');

    // Edits are debounced, then posted for a fresh estimate.
    await page.waitForFunction(() => (globalThis as any).__posted.some((m: any) => m.type === 'configChanged' && m.config.lora.r === 32));
    const changes = (await posted(page)).filter((m) => m.type === 'configChanged');
    assert.ok(changes.length > 0, 'config changes are posted for the estimate');
    for (const m of changes) {
      const r = parsePanelMessage(m);
      assert.ok(r.ok, `configChanged validates: ${r.ok ? '' : r.error}`);
    }
    assert.deepEqual(cspViolations, [], 'nothing violates the Content-Security-Policy');
    assert.deepEqual(consoleErrors, []);
    await page.close();
  });

  it('refuses to start with an invalid field and names the field', async () => {
    const { page } = await openPanel(browser, server.url, 'light');
    await send(page, initMessage());
    await send(page, modelMessage);
    await send(page, datasetMessage);
    await page.fill('#lora-dropout input', '1.5');
    await settle(page);
    assert.equal(await isDisabled(page, '#start'), true);
    assert.match(await page.textContent('#field-errors') ?? '', /dropout: must be between 0 and 0\.99/);
    await page.fill('#lora-dropout input', '0.1');
    await settle(page);
    assert.equal(await isDisabled(page, '#start'), false);
    await page.close();
  });

  it('applies a preset but keeps the chosen model and dataset', async () => {
    const { page } = await openPanel(browser, server.url, 'dark');
    await send(page, initMessage());
    await send(page, modelMessage);
    await send(page, datasetMessage);
    await page.evaluate(() => {
      const dd = (globalThis as any).document.getElementById('preset');
      dd.value = 'attention-fast';
      dd.dispatchEvent(new (globalThis as any).Event('change'));
    });
    await page.click('#start');
    const start = (await posted(page)).filter((m) => m.type === 'start').pop();
    assert.equal(start.config.preset, 'attention-fast');
    assert.equal(start.config.lora.r, 8);
    assert.deepEqual(start.config.lora.targets, ['q_proj', 'v_proj']);
    assert.equal(start.config.model, '/models/SmolLM2-1.7B-Instruct');
    await page.close();
  });

  it('disables training in an untrusted workspace and says why', async () => {
    const { page } = await openPanel(browser, server.url, 'light');
    await send(page, initMessage({ trusted: false, untrustedReason: 'Training is disabled in an untrusted workspace.' }));
    await send(page, modelMessage);
    await send(page, datasetMessage);
    await settle(page);
    assert.equal(await page.isHidden('#trust-banner'), false);
    assert.match(await page.textContent('#trust-banner') ?? '', /untrusted workspace/);
    assert.equal(await isDisabled(page, '#start'), true);
    assert.match(await page.textContent('#start-hint') ?? '', /untrusted/);
    await send(page, { type: 'trust', trusted: true });
    await settle(page);
    assert.equal(await page.isHidden('#trust-banner'), true);
    assert.equal(await isDisabled(page, '#start'), false, 'granting trust enables Start');
    await page.close();
  });

  it('picks a model from the Hugging Face cache and asks for Hub downloads only with a valid id', async () => {
    const { page } = await openPanel(browser, server.url, 'dark');
    await send(page, initMessage());
    await settle(page);
    assert.equal(await page.locator('#cached-models vscode-option').count(), 2, 'a placeholder and the cached model');
    await page.evaluate(() => {
      const dd = (globalThis as any).document.getElementById('cached-models');
      dd.value = '/home/u/.cache/huggingface/hub/models--org--tiny/snapshots/abc';
      dd.dispatchEvent(new (globalThis as any).Event('change'));
    });
    await page.fill('#hub-id input', 'not a repo id');
    await page.click('#download-model');
    assert.match(await page.textContent('#notice') ?? '', /Hub model id like org\/name/);
    await page.fill('#hub-id input', 'HuggingFaceTB/SmolLM2-135M-Instruct');
    await page.click('#download-model');
    await send(page, { type: 'downloadProgress', repoId: 'HuggingFaceTB/SmolLM2-135M-Instruct', file: 'model.safetensors', bytes: 50 * 2 ** 20, totalBytes: 270 * 2 ** 20, done: false });
    await settle(page);
    assert.equal(await page.textContent('#download-status'), 'Downloading HuggingFaceTB/SmolLM2-135M-Instruct: model.safetensors 50.0 MB of 270 MB');
    const sent = (await posted(page)).filter((m) => m.type === 'selectCachedModel' || m.type === 'downloadModel');
    assert.deepEqual(sent, [
      { type: 'selectCachedModel', path: '/home/u/.cache/huggingface/hub/models--org--tiny/snapshots/abc' },
      { type: 'downloadModel', repoId: 'HuggingFaceTB/SmolLM2-135M-Instruct' },
    ]);
    await page.close();
  });

  it('rejects invalid host messages without changing the panel', async () => {
    const { page } = await openPanel(browser, server.url, 'dark');
    await send(page, initMessage());
    await send(page, { type: 'runStarted', runId: 'run-ok', label: 'run-ok', live: true });
    const bad: unknown[] = [
      { type: 'explode' },
      { type: 'events', runId: 'run-ok', events: [{ type: 'step', step: -1, loss: 1, lr: 0, tokens_per_s: 0, elapsed_s: 0, mem: { used: 0, peak: 0, device_used: 0, device_total: 0 } }] },
      { type: 'events', runId: '../../etc', events: [] },
      { type: 'model', model: { path: '/m', arch: 'llama', layers: 2, hidden: 8, paramsTotal: 1, sizeBytes: 1, dtype: 'f32', targets: ['q_proj; rm -rf'] } },
      { type: 'init', version: 99, trusted: true, presets: [], config: baseConfig(), cachedModels: [], device: null },
      'not an object',
    ];
    for (const m of bad) await send(page, m);
    await settle(page);
    const rejected = (await posted(page)).filter((m) => m.type === 'rejected');
    assert.equal(rejected.length, bad.length, 'every invalid message is reported back');
    assert.match(rejected[1].error, /message\.events\[0\]\.step: -1 is outside/);
    assert.match(rejected[4].error, /message\.version/);
    assert.equal(await attr(page, '#chart-loss', 'data-samples'), '0', 'the invalid step never reached the charts');
    assert.doesNotMatch(await page.textContent('#model-summary') ?? '', /llama/);
    await page.close();
  });

  for (const theme of ['light', 'dark'] as Theme[]) {
    it(`draws live charts from recorded events and screenshots before, during and after a run (${theme})`, async () => {
      const { page, consoleErrors, cspViolations } = await openPanel(browser, server.url, theme);
      await send(page, initMessage());
      await send(page, modelMessage);
      await send(page, datasetMessage);
      await send(page, previewMessage);
      await send(page, estimateMessage);
      await settle(page);
      assert.match(await page.textContent('#estimate-verdict') ?? '', /4\.6 GB of 22\.0 GB free on NVIDIA GeForce RTX 4090/);
      assert.match(await page.textContent('#trainable') ?? '', /Trainable: 18\.1M of 1\.71B parameters \(1\.06%\)/);
      assert.equal(await page.locator('#preview-rows .tok.trained').count(), 1);
      await shoot(page, `panel-${theme}-before`);

      const full = recordedRun({ steps: 400, evalEvery: 50, status: 'completed' });
      const events = chartEvents(full.lines);
      const during = events.filter((e) => e.type !== 'done' && (e.type !== 'step' || e.step <= 160) && (e.type !== 'eval' || e.step <= 160));
      await send(page, { type: 'runStarted', runId: 'run-20260101-000000', label: 'SmolLM2 · chat.jsonl', live: true });
      await stream(page, 'run-20260101-000000', during, 7);
      await settle(page);
      assert.equal(await attr(page, '#chart-loss', 'data-samples'), '160');
      // 160 train points + 3 eval points at steps that are also train steps share x values.
      assert.equal(await attr(page, '#chart-loss', 'data-points'), '160');
      assert.equal(await attr(page, '#chart-mem', 'data-points'), '160');
      for (const chart of ['#chart-loss', '#chart-lr', '#chart-mem', '#chart-tps']) {
        assert.ok(await inkedPixels(page, chart) > 500, `${chart} has drawn lines`);
      }
      assert.match(await page.textContent('#run-stats') ?? '', /step 160 \/ 400 · loss \d\.\d{4} · eval \d\.\d{4} · 5\.\dK tok\/s · peak \d\.\d GB · ETA 12m 24s/);
      assert.equal(await isDisabled(page, '#stop'), false, 'Stop is enabled while the run is live');
      assert.equal(await isDisabled(page, '#start'), true, 'Start is disabled while the run is live');
      await page.click('#stop');
      assert.equal((await posted(page)).filter((m) => m.type === 'stop').length, 1);
      await shoot(page, `panel-${theme}-during`);

      const rest = events.slice(during.length);
      await stream(page, 'run-20260101-000000', rest, 20);
      await send(page, { type: 'runEnded', runId: 'run-20260101-000000', status: 'completed', adapter: '/runs/run-1/adapter' });
      await settle(page);
      assert.equal(await attr(page, '#chart-loss', 'data-samples'), '400');
      assert.equal(await page.textContent('#run-status'), 'completed');
      assert.equal(await page.isHidden('#reveal-adapter'), false);
      await page.click('#reveal-adapter');
      assert.deepEqual((await posted(page)).filter((m) => m.type === 'revealAdapter'), [{ type: 'revealAdapter', runId: 'run-20260101-000000' }]);
      await shoot(page, `panel-${theme}-after`);
      assert.deepEqual(cspViolations, []);
      assert.deepEqual(consoleErrors, []);
      await page.close();
    });
  }

  it('warns when the estimate does not fit, and shows a resumed run as running again', async () => {
    const { page } = await openPanel(browser, server.url, 'dark');
    await send(page, initMessage());
    await send(page, { type: 'estimate', estimate: { parts: [{ label: 'activations', bytes: 30e9 }], totalBytes: 30e9, deviceName: 'RTX 4090',
                                                    deviceFreeBytes: 22e9, trainableParams: 1, totalParams: 10 } });
    await settle(page);
    assert.match(await page.textContent('#estimate-verdict') ?? '', /does not fit/);
    assert.equal(await page.getAttribute('#estimate-verdict', 'class'), 'summary error');
    const first = chartEvents(recordedRun({ steps: 20, stepsTotal: 100, status: 'stopped' }).lines);
    const resumed = chartEvents(recordedRun({ steps: 40, stepsTotal: 100, status: null }).lines).filter((e) => e.type === 'plan' || (e.type === 'step' && e.step > 20));
    await send(page, { type: 'runStarted', runId: 'resumed-run', label: 'resumed', live: true });
    await send(page, { type: 'events', runId: 'resumed-run', events: [...first, ...resumed] });
    await settle(page);
    assert.equal(await page.textContent('#run-status'), 'running', "the earlier session's done does not end the resumed run");
    assert.equal(await page.getAttribute('#chart-loss', 'data-samples'), '40');
    await page.close();
  });

  it('keeps a 100k-step run responsive: all samples kept, display downsampled', async () => {
    const { page } = await openPanel(browser, server.url, 'dark');
    await send(page, initMessage());
    await send(page, { type: 'runStarted', runId: 'long-run', label: 'long', live: true });
    // Generated in the page to avoid shipping 100k events over the test bridge one by one.
    const events = chartEvents(recordedRun({ steps: 100_000, evalEvery: 1000, status: null }).lines);
    for (let i = 0; i < events.length; i += 20_000) await send(page, { type: 'events', runId: 'long-run', events: events.slice(i, i + 20_000) });
    await settle(page);
    assert.equal(await attr(page, '#chart-loss', 'data-samples'), '100000');
    const width = await page.evaluate(() => (globalThis as any).document.getElementById('chart-lr').clientWidth);
    const lrPoints = Number(await attr(page, '#chart-lr', 'data-points'));
    assert.ok(lrPoints > 100 && lrPoints <= width * 2, `lr chart draws ${lrPoints} points for a ${width}px wide chart`);
    const lossPoints = Number(await attr(page, '#chart-loss', 'data-points'));
    assert.ok(lossPoints <= width * 2 + 100, `loss chart draws ${lossPoints} points (downsampled train + 100 eval)`);
    assert.ok(await inkedPixels(page, '#chart-loss') > 500);
    // The panel still answers input after the burst.
    await page.fill('#lora-r input', '12');
    await settle(page);
    assert.equal(await page.inputValue('#lora-r input'), '12');
    await page.close();
  });
});
