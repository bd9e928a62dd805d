// The extension-host side of the panel, without VS Code: message validation, the path
// guard, and the translations between core configs/inspections and panel messages.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PRESETS, validateConfig } from '../../src/core/config';
import { inspectModel, loraParamCount } from '../../src/core/model/inspect';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { PathGuard } from '../../src/extension/pathGuard';
import { estimateInfo, fromPanelConfig, initialPanelConfig, modelSummary, presetInfos, toPanelConfig } from '../../src/extension/panelModel';
import { renderCompareHtml, renderPanelHtml } from '../../src/extension/panelHtml';
import { parseHostMessage, parsePanelConfig, parsePanelMessage, toChartEvent } from '../../webview/protocol';
import { downsample, joinSparse, smooth } from '../../webview/series';

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-host-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('panel protocol', () => {
  it('accepts every panel message shape and rejects unknown or malformed ones with the field named', () => {
    const config = initialPanelConfig('qlora-default', '/m');
    for (const m of [{ type: 'ready' }, { type: 'pickModel' }, { type: 'stop' }, { type: 'start', config }, { type: 'configChanged', config },
                     { type: 'downloadModel', repoId: 'HuggingFaceTB/SmolLM2-135M' }, { type: 'revealAdapter', runId: '20260101-000000-a' }]) {
      const r = parsePanelMessage(m);
      assert.ok(r.ok, `${m.type}: ${r.ok ? '' : r.error}`);
    }
    const cases: [unknown, RegExp][] = [
      [null, /message: expected an object/],
      [{ type: 'launchMissiles' }, /"launchMissiles" is not a panel message/],
      [{ type: 'downloadModel', repoId: '../../etc/passwd' }, /not a Hub model id/],
      [{ type: 'revealAdapter', runId: '../other' }, /is not a run id/],
      [{ type: 'start', config: { ...config, lora: { ...config.lora, r: 0 } } }, /config\.lora\.r: 0 is outside/],
      [{ type: 'start', config: { ...config, lora: { ...config.lora, targets: ['q_proj', 'q_proj'] } } }, /listed twice/],
      [{ type: 'start', config: { ...config, quant: { type: 'int3', doubleQuant: false } } }, /config\.quant\.type: "int3" is not one of/],
      [{ type: 'start', config: { ...config, train: { ...config.train, lr: '1e-4' } } }, /config\.train\.lr: expected a finite number/],
    ];
    for (const [m, re] of cases) {
      const r = parsePanelMessage(m);
      assert.equal(r.ok, false, JSON.stringify(m));
      assert.match((r as { error: string }).error, re);
    }
  });

  it('turns runtime events (kind in "type", NaN loss as null) into chart events and drops the rest', () => {
    const step = { v: 1, type: 'step', step: 3, epoch: 0.1, loss: null, lr: 1e-4, grad_norm: null, tokens_per_s: 900, elapsed_s: 2,
                   mem: { used: 1, peak: 2, device_used: 3, device_total: 4 } };
    const c = toChartEvent(step);
    assert.ok(c && c.type === 'step' && Number.isNaN(c.loss));
    assert.equal(toChartEvent({ v: 1, type: 'hello', runtime: '0.1', protocol: 1, device: {} }), null);
    assert.equal(toChartEvent({ v: 1, type: 'step', step: -2 }), null, 'an invalid step is dropped, not charted');
    const done = toChartEvent({ v: 1, type: 'done', status: 'completed', step: 9, adapter: '/r/adapter' });
    assert.deepEqual(done, { type: 'done', status: 'completed', step: 9, adapter: '/r/adapter' });
  });

  it('validates host messages the panel receives', () => {
    assert.ok(parseHostMessage({ type: 'runEnded', runId: 'r1', status: 'failed', message: 'out of memory', hint: 'lower seq_len' }).ok);
    const bad = parseHostMessage({ type: 'compare', runs: [{ id: 'a', label: 'a', status: 'completed', steps: [1, 2], loss: [1], evalSteps: [], evalLoss: [] }], diff: [] });
    assert.equal(bad.ok, false);
    assert.match((bad as { error: string }).error, /steps and loss differ in length/);
  });
});

describe('panel HTML', () => {
  it('has a strict CSP: no inline scripts, nonce-only scripts, resources only from the webview origin', () => {
    for (const html of [renderPanelHtml({ cspSource: 'https://x.vscode-cdn.net', scriptUri: 'https://x/p.js', styleUri: 'https://x/p.css', nonce: 'abc123' }),
                        renderCompareHtml({ cspSource: 'https://x.vscode-cdn.net', scriptUri: 'https://x/c.js', styleUri: 'https://x/p.css', nonce: 'abc123' })]) {
      const csp = /http-equiv="Content-Security-Policy" content="([^"]+)"/.exec(html)?.[1] ?? '';
      assert.match(csp, /^default-src 'none'; /);
      assert.match(csp, /script-src 'nonce-abc123'(;|$)/);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
      const scripts = [...html.matchAll(/<script([^>]*)>/g)].map((m) => m[1]);
      assert.equal(scripts.length, 1);
      assert.match(scripts[0]!, /nonce="abc123" src="https:\/\/x\/(p|c)\.js"/);
    }
  });
});

describe('path guard', () => {
  it('allows picked paths and workspace files, refuses everything else, including links out of the workspace', () => {
    const wsDir = path.join(tmp, 'ws');
    const outside = path.join(tmp, 'outside');
    fs.mkdirSync(path.join(wsDir, 'data'), { recursive: true });
    fs.mkdirSync(outside, { recursive: true });
    fs.writeFileSync(path.join(wsDir, 'data', 'a.jsonl'), '{}\n');
    fs.writeFileSync(path.join(outside, 'secret.jsonl'), '{}\n');
    fs.writeFileSync(path.join(outside, 'picked.jsonl'), '{}\n');
    fs.symlinkSync(path.join(outside, 'secret.jsonl'), path.join(wsDir, 'data', 'link.jsonl'));
    const g = new PathGuard(() => [wsDir]);
    assert.ok(g.check(path.join(wsDir, 'data', 'a.jsonl'), 'dataset').ok);
    assert.equal(g.check(path.join(outside, 'secret.jsonl'), 'dataset').ok, false);
    assert.equal(g.check(path.join(wsDir, 'data', 'link.jsonl'), 'dataset').ok, false, 'a symlink out of the workspace is refused');
    assert.equal(g.check(path.join(wsDir, '..', 'outside', 'secret.jsonl'), 'dataset').ok, false);
    const rel = g.check('data/a.jsonl', 'dataset');
    assert.equal(rel.ok, false);
    assert.match((rel as { reason: string }).reason, /not an absolute path/);
    g.allow(path.join(outside, 'picked.jsonl'));
    assert.ok(g.check(path.join(outside, 'picked.jsonl'), 'dataset').ok);
    assert.equal(g.check(path.join(outside, 'secret.jsonl'), 'dataset').ok, false, 'allowing one file does not allow its folder');
  });
});

describe('panel model', () => {
  it('round-trips every preset through the form and yields configs the core accepts', () => {
    const infos = presetInfos();
    assert.deepEqual(infos.map((p) => p.id), PRESETS.map((p) => p.id));
    for (const p of infos) {
      assert.deepEqual(parsePanelConfig(p.config), p.config, `${p.id} form config is a valid PanelConfig`);
      const c = fromPanelConfig({ ...p.config, model: '/m', data: '/d.jsonl' });
      assert.deepEqual(toPanelConfig(c, p.id), { ...p.config, model: '/m', data: '/d.jsonl' });
      const errors = validateConfig(c).filter((i) => i.severity !== 'warning');
      assert.deepEqual(errors, [], `${p.id} validates`);
    }
    // Fields the form lacks keep the preset's values (cpu-quick computes on the CPU in fp32).
    const quick = fromPanelConfig({ ...infos.find((p) => p.id === 'cpu-quick')!.config, model: '/m', data: '/d' });
    assert.equal(quick.compute.device, 'cpu');
    assert.equal(initialPanelConfig('no-such-preset', '').preset, 'qlora-default');
  });

  it('summarises a model and estimates memory with the trainable parameter count', () => {
    const dir = path.join(tmp, 'tiny');
    writeTinyModel(dir, { arch: 'llama', hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, tokenizerStyle: 'chatml' });
    const m = inspectModel(dir);
    const s = modelSummary(m);
    assert.equal(s.layers, 2);
    assert.equal(s.hidden, 64);
    assert.deepEqual(s.targets, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    const form = { ...initialPanelConfig('attention-only', dir), data: '/d.jsonl' };
    const c = fromPanelConfig(form);
    const cpu = estimateInfo(m, c, null);
    assert.equal(cpu.trainableParams, loraParamCount(m, c.lora.r, c.lora.targets));
    assert.equal(cpu.deviceFreeBytes, null);
    assert.equal(cpu.totalBytes, cpu.parts.reduce((a, p) => a + p.bytes, 0));
    const ram = estimateInfo(m, c, { name: 'AMD EPYC', kind: 'cpu', memoryTotal: 32e9, memoryFree: 20e9 });
    assert.equal(ram.deviceName, 'AMD EPYC (system memory)', 'without a GPU the budget is system memory');
    assert.equal(ram.deviceFreeBytes, 20e9);
    const gpu = estimateInfo(m, c, { name: 'RTX', kind: 'cuda', memoryTotal: 8e9, memoryFree: 7e9 });
    assert.equal(gpu.deviceFreeBytes, 7e9);
    assert.equal(gpu.deviceName, 'RTX');
    // A head size the CUDA kernels refuse (12) trains on the CPU under "auto": the estimate says so.
    const odd = path.join(tmp, 'tiny-odd-head');
    writeTinyModel(odd, { arch: 'llama', hidden: 48, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, tokenizerStyle: 'chatml' });
    const mOdd = inspectModel(odd);
    assert.equal(mOdd.headDim, 12);
    const oddGpu = estimateInfo(mOdd, fromPanelConfig({ ...form, model: odd }), { name: 'RTX', kind: 'cuda', memoryTotal: 8e9, memoryFree: 7e9 });
    assert.equal(oddGpu.deviceName, 'CPU (system memory)');
    assert.equal(oddGpu.deviceFreeBytes, null);
    const r2 = estimateInfo(m, fromPanelConfig({ ...form, lora: { ...form.lora, r: form.lora.r * 2 } }), null);
    assert.equal(r2.trainableParams, 2 * cpu.trainableParams, 'doubling r doubles the trainable parameters');
  });
});

describe('chart series reductions', () => {
  it('debiased smoothing starts at the first value and carries NaN through', () => {
    const s = smooth([2, 2, 2, NaN, 2], 0.9);
    assert.ok(Math.abs(s[0]! - 2) < 1e-12 && Math.abs(s[4]! - 2) < 1e-12);
    assert.ok(Number.isNaN(s[3]!));
    assert.deepEqual(smooth([1, 5, 3], 0), [1, 5, 3]);
  });

  it('downsampling bounds the points and keeps every spike', () => {
    const n = 100_000;
    const x = Array.from({ length: n }, (_, i) => i + 1);
    const y = x.map((i) => (i === 54_321 ? 50 : 1 + Math.sin(i / 1000)));
    const d = downsample(x, [y], 1000);
    assert.ok(d.x.length <= 1000 && d.x.length >= 900, `${d.x.length} points`);
    assert.equal(Math.max(...d.ys[0]!), 50, 'the spike survives');
    assert.ok(d.x.every((v, i) => i === 0 || v > d.x[i - 1]!), 'x stays strictly increasing');
    const small = downsample([1, 2, 3], [[4, 5, 6]], 1000);
    assert.deepEqual(small, { x: [1, 2, 3], ys: [[4, 5, 6]] });
  });

  it('joins sparse eval points onto the train axis', () => {
    const j = joinSparse([1, 2, 4], [2, 3], [0.5, 0.4], [[9, 8, 7]]);
    assert.deepEqual(j, { x: [1, 2, 3, 4], dense: [[9, 8, null, 7]], sparse: [null, 0.5, 0.4, null] });
  });
});
