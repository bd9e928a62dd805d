// The training panel: binds the form to a PanelConfig, shows what the host reports
// (model, dataset, estimate, run progress) and streams run events into the charts.
// Every message from the host goes through parseHostMessage first; a message that fails
// validation is dropped and reported back, never half-applied.

import {
  provideVSCodeDesignSystem, vsCodeButton, vsCodeCheckbox, vsCodeDropdown, vsCodeOption, vsCodeTextField,
} from '@vscode/webview-ui-toolkit';
import { Charts, formatBytes } from './charts';
import {
  ALL_LINEAR_TARGETS, ATTENTION_TARGETS, configProblems, parseHostMessage,
  type HostMessage, type PanelConfig, type PanelMessage, type PresetInfo, type RunStatus,
} from './protocol';

provideVSCodeDesignSystem().register(vsCodeButton(), vsCodeCheckbox(), vsCodeDropdown(), vsCodeOption(), vsCodeTextField());

interface VsCodeApi { postMessage(m: unknown): void; getState(): unknown; setState(s: unknown): void }
declare function acquireVsCodeApi(): VsCodeApi;
const vscode = acquireVsCodeApi();

function post(m: PanelMessage): void {
  vscode.postMessage(m);
}

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`panel markup is missing #${id}`);
  return el;
}

/** The toolkit's form elements expose value/checked like native inputs. */
type Field = HTMLElement & { value: string; checked: boolean; disabled: boolean };
const field = (id: string) => $(id) as Field;

const state = {
  config: null as PanelConfig | null,
  presets: [] as PresetInfo[],
  trusted: true,
  modelTargets: [] as string[],
  runId: null as string | null,
  runStatus: null as RunStatus | null,
  live: false,
  adapter: null as string | null,
  fieldErrors: new Map<string, string>(),
};

const charts = new Charts({ loss: $('chart-loss'), lr: $('chart-lr'), mem: $('chart-mem'), tps: $('chart-tps') });

// --- form <-> config --------------------------------------------------------------------------

interface NumberField { id: string; label: string; integer: boolean; min: number; max: number; optional?: boolean;
  get(c: PanelConfig): number | null; set(c: PanelConfig, v: number | null): void }

const numberFields: NumberField[] = [
  { id: 'lora-r', label: 'r', integer: true, min: 1, max: 4096, get: (c) => c.lora.r, set: (c, v) => { c.lora.r = v!; } },
  { id: 'lora-alpha', label: 'alpha', integer: false, min: 0, max: 1e6, get: (c) => c.lora.alpha, set: (c, v) => { c.lora.alpha = v!; } },
  { id: 'lora-dropout', label: 'dropout', integer: false, min: 0, max: 0.99, get: (c) => c.lora.dropout, set: (c, v) => { c.lora.dropout = v!; } },
  { id: 'train-lr', label: 'learning rate', integer: false, min: 1e-9, max: 1, get: (c) => c.train.lr, set: (c, v) => { c.train.lr = v!; } },
  { id: 'train-warmup', label: 'warmup steps', integer: true, min: 0, max: 1e9, get: (c) => c.train.warmupSteps, set: (c, v) => { c.train.warmupSteps = v!; } },
  { id: 'train-epochs', label: 'epochs', integer: false, min: 0, max: 10000, get: (c) => c.train.epochs, set: (c, v) => { c.train.epochs = v!; } },
  { id: 'train-max-steps', label: 'max steps', integer: true, min: 1, max: 1e9, optional: true, get: (c) => c.train.maxSteps, set: (c, v) => { c.train.maxSteps = v; } },
  { id: 'train-seq-len', label: 'seq len', integer: true, min: 8, max: 1 << 20, get: (c) => c.train.seqLen, set: (c, v) => { c.train.seqLen = v!; } },
  { id: 'train-micro-batch', label: 'micro-batch', integer: true, min: 1, max: 4096, get: (c) => c.train.microBatch, set: (c, v) => { c.train.microBatch = v!; } },
  { id: 'train-grad-accum', label: 'grad accum', integer: true, min: 1, max: 65536, get: (c) => c.train.gradAccum, set: (c, v) => { c.train.gradAccum = v!; } },
  { id: 'train-eval-split', label: 'eval split', integer: false, min: 0, max: 0.5, get: (c) => c.train.evalSplit, set: (c, v) => { c.train.evalSplit = v!; } },
  { id: 'train-save-every', label: 'checkpoint every', integer: true, min: 0, max: 1e9, get: (c) => c.train.saveEvery, set: (c, v) => { c.train.saveEvery = v!; } },
];

function parseNumber(f: NumberField, raw: string): { value: number | null } | { error: string } {
  const s = raw.trim();
  if (s === '') return f.optional ? { value: null } : { error: `${f.label}: enter a number` };
  const v = Number(s);
  if (!Number.isFinite(v)) return { error: `${f.label}: "${s}" is not a number` };
  if (f.integer && !Number.isInteger(v)) return { error: `${f.label}: must be a whole number` };
  if (v < f.min || v > f.max) return { error: `${f.label}: must be between ${f.min} and ${f.max}` };
  return { value: v };
}

function renderForm(c: PanelConfig): void {
  field('model-path').value = c.model;
  field('data-path').value = c.data;
  for (const f of numberFields) {
    const v = f.get(c);
    field(f.id).value = v === null ? '' : String(v);
  }
  field('lora-rslora').checked = c.lora.rslora;
  field('quant-type').value = c.quant.type;
  field('quant-double').checked = c.quant.doubleQuant;
  field('quant-double').disabled = c.quant.type === 'none' || c.quant.type === 'int8';
  field('train-schedule').value = c.train.schedule;
  field('train-grad-ckpt').checked = c.train.gradCheckpointing;
  if (state.presets.some((p) => p.id === c.preset)) field('preset').value = c.preset;
  $('preset-description').textContent = state.presets.find((p) => p.id === c.preset)?.description ?? '';
  renderTargets();
  state.fieldErrors.clear();
  renderProblems();
}

function renderTargets(): void {
  const c = state.config;
  const box = $('targets');
  box.textContent = '';
  // The model's own module names when known; otherwise the Llama family's.
  const names = state.modelTargets.length ? state.modelTargets : ALL_LINEAR_TARGETS;
  for (const name of names) {
    const cb = document.createElement('vscode-checkbox') as Field;
    cb.textContent = name;
    cb.dataset.module = name;
    cb.checked = !!c && c.lora.targets.includes(name);
    cb.addEventListener('change', () => {
      if (!state.config) return;
      const set = new Set(state.config.lora.targets);
      if (cb.checked) set.add(name); else set.delete(name);
      state.config.lora.targets = names.filter((n) => set.has(n));
      changed();
    });
    box.appendChild(cb);
  }
}

/** "Attention only" for the chosen model: GPT-2's fused q/k/v is c_attn (PEFT's default
 *  for gpt2); its c_proj also names the MLP's output projection, so it is left out. */
function attentionTargets(): readonly string[] {
  return state.modelTargets.includes('c_attn') ? ['c_attn'] : ATTENTION_TARGETS;
}

function setTargets(wanted: readonly string[]): void {
  if (!state.config) return;
  const names = state.modelTargets.length ? state.modelTargets : ALL_LINEAR_TARGETS;
  state.config.lora.targets = names.filter((n) => wanted.includes(n));
  renderTargets();
  changed();
}

let changeTimer: ReturnType<typeof setTimeout> | undefined;
/** Saves the form and asks the host for a fresh estimate, debounced while typing. */
function changed(): void {
  if (!state.config) return;
  vscode.setState({ config: state.config });
  renderProblems();
  clearTimeout(changeTimer);
  changeTimer = setTimeout(() => {
    if (state.config && state.fieldErrors.size === 0) post({ type: 'configChanged', config: state.config });
  }, 150);
}

function renderProblems(): void {
  const errors = [...state.fieldErrors.values()];
  $('field-errors').textContent = errors.join(' ');
  const running = state.runStatus === 'running' && state.live;
  const problems = state.config ? configProblems(state.config) : ['Waiting for the extension…'];
  const blockers = !state.trusted ? ['Training is disabled in an untrusted workspace.'] : running ? ['A run is in progress.'] : [...errors, ...problems];
  field('start').disabled = blockers.length > 0;
  $('start-hint').textContent = blockers[0] ?? '';
  field('stop').disabled = !running;
}

function bindForm(): void {
  for (const f of numberFields) {
    const el = field(f.id);
    el.addEventListener('input', () => {
      if (!state.config) return;
      const r = parseNumber(f, el.value);
      if ('error' in r) {
        state.fieldErrors.set(f.id, r.error);
        el.setAttribute('aria-invalid', 'true');
        renderProblems();
        return;
      }
      state.fieldErrors.delete(f.id);
      el.removeAttribute('aria-invalid');
      f.set(state.config, r.value);
      changed();
    });
  }
  field('lora-rslora').addEventListener('change', () => {
    if (state.config) { state.config.lora.rslora = field('lora-rslora').checked; changed(); }
  });
  field('quant-type').addEventListener('change', () => {
    if (!state.config) return;
    const v = field('quant-type').value;
    if (v === 'none' || v === 'nf4' || v === 'fp4' || v === 'int8') {
      state.config.quant.type = v;
      field('quant-double').disabled = v === 'none' || v === 'int8';
      if (field('quant-double').disabled) { state.config.quant.doubleQuant = false; field('quant-double').checked = false; }
      changed();
    }
  });
  field('quant-double').addEventListener('change', () => {
    if (state.config) { state.config.quant.doubleQuant = field('quant-double').checked; changed(); }
  });
  field('train-schedule').addEventListener('change', () => {
    const v = field('train-schedule').value;
    if (state.config && (v === 'cosine' || v === 'linear' || v === 'constant')) { state.config.train.schedule = v; changed(); }
  });
  field('train-grad-ckpt').addEventListener('change', () => {
    if (state.config) { state.config.train.gradCheckpointing = field('train-grad-ckpt').checked; changed(); }
  });
  field('preset').addEventListener('change', () => {
    const p = state.presets.find((x) => x.id === field('preset').value);
    if (!p || !state.config) return;
    // A preset sets the hyper-parameters; the chosen model and dataset stay.
    const keep = { model: state.config.model, data: state.config.data };
    state.config = { ...structuredClone(p.config), ...keep, preset: p.id };
    const allowed = state.modelTargets.length ? state.modelTargets : ALL_LINEAR_TARGETS;
    state.config.lora.targets = state.config.lora.targets.filter((t) => allowed.includes(t));
    // Presets name Llama modules; on another architecture keep their intent (attention).
    if (state.config.lora.targets.length === 0) state.config.lora.targets = attentionTargets().slice();
    renderForm(state.config);
    changed();
  });
  $('targets-attention').addEventListener('click', () => setTargets(attentionTargets()));
  $('targets-all').addEventListener('click', () => setTargets(state.modelTargets.length ? state.modelTargets : ALL_LINEAR_TARGETS));
  $('pick-model').addEventListener('click', () => post({ type: 'pickModel' }));
  $('pick-dataset').addEventListener('click', () => post({ type: 'pickDataset' }));
  field('cached-models').addEventListener('change', () => {
    const path = field('cached-models').value;
    if (path) post({ type: 'selectCachedModel', path });
  });
  $('download-model').addEventListener('click', () => {
    const repoId = field('hub-id').value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/.test(repoId)) {
      showNotice('warning', 'Enter a Hub model id like org/name.');
      return;
    }
    post({ type: 'downloadModel', repoId });
  });
  $('start').addEventListener('click', () => {
    if (!state.config || field('start').disabled) return;
    post({ type: 'start', config: state.config });
  });
  $('stop').addEventListener('click', () => {
    if (!field('stop').disabled) post({ type: 'stop' });
  });
  $('reveal-adapter').addEventListener('click', () => {
    if (state.runId) post({ type: 'revealAdapter', runId: state.runId });
  });
  $('show-log').addEventListener('click', () => post({ type: 'showLog' }));
  const slider = $('smoothing') as HTMLInputElement;
  slider.addEventListener('input', () => {
    const w = Number(slider.value);
    $('smoothing-value').textContent = w.toFixed(2);
    charts.setSmoothing(w);
  });
}

// --- host messages ----------------------------------------------------------------------------

function showNotice(level: 'info' | 'warning' | 'error', message: string, hint?: string): void {
  const el = $('notice');
  el.className = `banner ${level}`;
  el.textContent = hint ? `${message} ${hint}` : message;
  el.hidden = false;
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(Math.round(n));
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '–';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function renderRun(): void {
  const section = $('run-section');
  section.hidden = state.runId === null;
  const r = charts.data;
  const status = state.runStatus ?? 'running';
  const chip = $('run-status');
  chip.textContent = status;
  chip.className = `status-chip ${status}`;
  const last = r.lastStep;
  const total = r.stepsTotal;
  ($('run-progress-bar') as HTMLElement).style.width = total && last !== null ? `${Math.min(100, (100 * last) / total)}%` : '0%';
  const parts: string[] = [];
  if (last !== null) parts.push(`step ${last}${total ? ` / ${total}` : ''}`);
  const n = r.loss.length;
  if (n) parts.push(`loss ${Number.isFinite(r.loss[n - 1]!) ? r.loss[n - 1]!.toFixed(4) : 'NaN'}`);
  if (r.evalLoss.length) parts.push(`eval ${r.evalLoss[r.evalLoss.length - 1]!.toFixed(4)}`);
  if (n) parts.push(`${formatCount(r.tokensPerS[n - 1]!)} tok/s`);
  if (n) parts.push(`peak ${formatBytes(r.memPeak[n - 1]!)}`);
  const eta = r.etaSeconds();
  if (status === 'running' && eta !== null) parts.push(`ETA ${formatDuration(eta)}`);
  if (status !== 'running' && n) parts.push(`took ${formatDuration(r.elapsed[n - 1]!)}`);
  $('run-stats').textContent = parts.join(' · ');
  $('reveal-adapter').hidden = !state.adapter;
  renderProblems();
}

function handle(m: HostMessage): void {
  switch (m.type) {
    case 'init': {
      state.presets = m.presets;
      state.trusted = m.trusted;
      const dd = $('preset');
      dd.textContent = '';
      for (const p of m.presets) {
        const o = document.createElement('vscode-option');
        o.setAttribute('value', p.id);
        o.textContent = p.label;
        dd.appendChild(o);
      }
      const cm = $('cached-models');
      cm.textContent = '';
      const first = document.createElement('vscode-option');
      first.setAttribute('value', '');
      first.textContent = m.cachedModels.length ? `Hugging Face cache (${m.cachedModels.length})…` : 'Hugging Face cache: no models found';
      cm.appendChild(first);
      for (const c of m.cachedModels) {
        const o = document.createElement('vscode-option');
        o.setAttribute('value', c.path);
        o.textContent = `${c.repoId} · ${c.arch} · ${formatBytes(c.sizeBytes)}`;
        cm.appendChild(o);
      }
      // The panel's own saved form wins over the defaults after a reload of the view.
      const saved = vscode.getState() as { config?: PanelConfig } | undefined;
      state.config = saved?.config && m.config.model === '' && m.config.data === '' ? saved.config : m.config;
      renderTrust(m.trusted, m.untrustedReason);
      renderForm(state.config);
      changed();
      break;
    }
    case 'trust':
      state.trusted = m.trusted;
      renderTrust(m.trusted, m.untrustedReason);
      renderProblems();
      break;
    case 'config':
      state.config = m.config;
      renderForm(m.config);
      changed();
      break;
    case 'model': {
      const el = $('model-summary');
      if (!m.model) {
        el.className = 'summary error';
        el.textContent = m.error ? `${m.error}${m.hint ? ` ${m.hint}` : ''}` : 'No model selected.';
        state.modelTargets = [];
        renderTargets();
        break;
      }
      const s = m.model;
      el.className = 'summary';
      el.textContent = `${s.arch} · ${formatCount(s.paramsTotal)} params · ${s.layers} layers · hidden ${s.hidden} · ${s.dtype} · ${formatBytes(s.sizeBytes)}`;
      state.modelTargets = s.targets;
      if (state.config) {
        state.config.model = s.path;
        field('model-path').value = s.path;
        state.config.lora.targets = state.config.lora.targets.filter((t) => s.targets.includes(t));
        if (state.config.lora.targets.length === 0) state.config.lora.targets = s.targets.slice();
      }
      renderTargets();
      changed();
      break;
    }
    case 'dataset': {
      const el = $('dataset-summary');
      const list = $('dataset-diagnostics');
      list.textContent = '';
      if (!m.dataset) {
        el.className = 'summary error';
        el.textContent = m.error ?? 'No dataset selected.';
        break;
      }
      const d = m.dataset;
      if (state.config) { state.config.data = d.path; field('data-path').value = d.path; }
      el.className = d.errors ? 'summary error' : 'summary';
      el.textContent = `${d.rows} rows · ${d.format} · ${d.errors} errors · ${d.warnings} warnings`;
      for (const diag of d.diagnostics.slice(0, 8)) {
        const li = document.createElement('li');
        li.className = diag.severity;
        const where = diag.line ? `line ${diag.line}: ` : diag.row !== undefined ? `row ${diag.row}: ` : '';
        li.textContent = `${where}${diag.message}${diag.hint ? ` (${diag.hint})` : ''}`;
        list.appendChild(li);
      }
      changed();
      break;
    }
    case 'preview': {
      const box = $('preview-rows');
      box.textContent = '';
      $('preview').hidden = m.rows.length === 0 && !m.error;
      if (m.error) {
        const e = document.createElement('div');
        e.className = 'error';
        e.textContent = m.error;
        box.appendChild(e);
      }
      for (const row of m.rows) {
        const div = document.createElement('div');
        div.className = 'preview-row';
        const head = document.createElement('div');
        head.className = 'muted small';
        head.textContent = `row ${row.row}`;
        div.appendChild(head);
        const body = document.createElement('pre');
        for (const seg of row.segments) {
          const span = document.createElement('span');
          span.className = seg.trained ? 'tok trained' : 'tok masked';
          span.textContent = seg.text;
          body.appendChild(span);
        }
        div.appendChild(body);
        box.appendChild(div);
      }
      break;
    }
    case 'estimate':
      renderEstimate(m);
      break;
    case 'runStarted':
      state.runId = m.runId;
      state.runStatus = 'running';
      state.live = m.live;
      state.adapter = null;
      $('run-label').textContent = m.label;
      $('run-message').hidden = true;
      charts.reset();
      renderRun();
      break;
    case 'events':
      if (m.runId !== state.runId) break;
      for (const e of m.events) {
        charts.data.add(e);
        if (e.type === 'done') {
          state.runStatus = e.status;
          if (e.adapter) state.adapter = e.adapter;
        } else if (e.type === 'plan' && state.live) {
          // A resumed run's history holds the earlier session's `done`; a new plan means it trains again.
          state.runStatus = 'running';
        }
      }
      charts.schedule();
      scheduleRunRender();
      break;
    case 'runEnded': {
      if (m.runId !== state.runId) break;
      state.runStatus = m.status;
      state.live = m.status === 'running' ? state.live : false;
      if (m.adapter) state.adapter = m.adapter;
      const msg = $('run-message');
      msg.hidden = !m.message;
      msg.className = `run-message ${m.status === 'failed' ? 'error' : ''}`;
      msg.textContent = m.message ? `${m.message}${m.hint ? ` — ${m.hint}` : ''}` : '';
      renderRun();
      break;
    }
    case 'downloadProgress': {
      const el = $('download-status');
      el.hidden = false;
      el.className = m.error ? 'error' : 'muted';
      el.textContent = m.error
        ? `Download of ${m.repoId} failed: ${m.error}`
        : m.done ? `Downloaded ${m.repoId}.`
        : `Downloading ${m.repoId}: ${m.file} ${formatBytes(m.bytes)}${m.totalBytes ? ` of ${formatBytes(m.totalBytes)}` : ''}`;
      break;
    }
    case 'notice':
      showNotice(m.level, m.message, m.hint);
      break;
  }
}

let runRenderQueued = false;
function scheduleRunRender(): void {
  if (runRenderQueued) return;
  runRenderQueued = true;
  requestAnimationFrame(() => {
    runRenderQueued = false;
    renderRun();
  });
}

function renderTrust(trusted: boolean, reason?: string): void {
  const b = $('trust-banner');
  b.hidden = trusted;
  b.textContent = trusted ? '' : reason ?? 'This workspace is not trusted. Training runs a native program on workspace files, so it is disabled until you trust the workspace.';
}

function renderEstimate(m: Extract<HostMessage, { type: 'estimate' }>): void {
  const bar = $('estimate-bar');
  const table = $('estimate-table') as HTMLTableElement;
  const verdict = $('estimate-verdict');
  bar.textContent = '';
  table.textContent = '';
  if (!m.estimate) {
    verdict.className = m.error ? 'summary error' : 'summary muted';
    verdict.textContent = m.error ?? 'Choose a model to estimate memory.';
    $('trainable').textContent = '';
    return;
  }
  const e = m.estimate;
  const scale = Math.max(e.totalBytes, e.deviceFreeBytes ?? 0) || 1;
  e.parts.forEach((p, i) => {
    const seg = document.createElement('div');
    seg.className = `seg c${i % 6}`;
    seg.style.width = `${(100 * p.bytes) / scale}%`;
    seg.title = `${p.label}: ${formatBytes(p.bytes)}`;
    bar.appendChild(seg);
    const tr = table.insertRow();
    const sw = tr.insertCell();
    sw.className = `swatch c${i % 6}`;
    tr.insertCell().textContent = p.label;
    const v = tr.insertCell();
    v.className = 'num';
    v.textContent = formatBytes(p.bytes);
  });
  const tr = table.insertRow();
  tr.className = 'total';
  tr.insertCell();
  tr.insertCell().textContent = 'Total';
  const v = tr.insertCell();
  v.className = 'num';
  v.textContent = formatBytes(e.totalBytes);
  if (e.deviceFreeBytes !== null) {
    const fits = e.totalBytes <= e.deviceFreeBytes;
    verdict.className = fits ? 'summary ok' : 'summary error';
    verdict.textContent = `${formatBytes(e.totalBytes)} of ${formatBytes(e.deviceFreeBytes)} free on ${e.deviceName ?? 'the GPU'}${fits ? '' : ' — does not fit: lower seq len or micro-batch, quantize to NF4, or enable activation checkpointing'}`;
  } else {
    verdict.className = 'summary muted';
    verdict.textContent = `${formatBytes(e.totalBytes)} needed; no GPU found, training runs on the CPU`;
  }
  const pct = e.totalParams ? (100 * e.trainableParams) / e.totalParams : 0;
  $('trainable').textContent = `Trainable: ${formatCount(e.trainableParams)} of ${formatCount(e.totalParams)} parameters (${pct < 0.01 ? pct.toExponential(1) : pct.toFixed(2)}%)`;
}

window.addEventListener('message', (ev: MessageEvent) => {
  const r = parseHostMessage(ev.data);
  if (!r.ok) {
    console.warn(`LoRA Studio panel: dropped an invalid message: ${r.error}`);
    post({ type: 'rejected', error: r.error });
    return;
  }
  handle(r.value);
});

bindForm();
post({ type: 'ready' });
