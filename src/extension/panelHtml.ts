// The training panel's HTML document. No `vscode` import, so the webview tests render
// exactly the document (and the Content-Security-Policy) that the extension serves.

export interface PanelHtmlOptions {
  /** The webview's `cspSource` (the origin its resources are served from). */
  cspSource: string;
  scriptUri: string;
  styleUri: string;
  nonce?: string;
}

const NONCE_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** 32 characters from a CSPRNG (Web Crypto, present in Node and browsers alike). */
export function makeNonce(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => NONCE_ALPHABET[b % NONCE_ALPHABET.length]).join('');
}

function attr(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
}

/**
 * Scripts only with the nonce; stylesheets and fonts only from the extension; images from
 * the extension and data: (uPlot draws to canvas, nothing else loads). The toolkit (FAST)
 * probes for :focus-visible with a <style> element that carries the nonce it reads from
 * the csp-nonce meta tag, hence the style nonce.
 */
function contentSecurityPolicy(cspSource: string, nonce: string): string {
  return [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src ${cspSource} 'nonce-${nonce}'`,
    `font-src ${cspSource}`,
    `img-src ${cspSource} data:`,
  ].join('; ');
}

/** The document shell every LoRA Studio webview shares: the strict CSP with a fresh nonce,
 *  the extension's stylesheet, and the one script, loaded with that nonce. */
function page(o: PanelHtmlOptions, title: string, bodyClass: string, body: string): string {
  const nonce = o.nonce ?? makeNonce();
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${attr(contentSecurityPolicy(o.cspSource, nonce))}">
<meta property="csp-nonce" content="${nonce}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${attr(o.styleUri)}">
<title>${title}</title>
</head>
<body${bodyClass ? ` class="${bodyClass}"` : ''}>${body}<script nonce="${nonce}" src="${attr(o.scriptUri)}"></script>
</body>
</html>`;
}

/** The Compare Runs page: one overlaid loss chart and a table of differing settings. */
export function renderCompareHtml(o: PanelHtmlOptions): string {
  return page(o, 'Compare Runs', 'compare', `
<h3>Compare runs</h3>
<div id="compare-chart" class="chart" data-series="0"></div>
<h3>Settings that differ</h3>
<table id="compare-diff" class="diff-table"></table>
<div id="compare-empty" class="muted" hidden>The runs use the same settings.</div>
`);
}

/** The playground ("Try Adapter"): a prompt box, generation settings, and the base and
 *  adapter answers streaming side by side, each with its decode speed. */
export function renderPlaygroundHtml(o: PanelHtmlOptions): string {
  return page(o, 'Try Adapter', 'playground', `
<header class="pg-head">
  <h3 id="pg-title">Try adapter</h3>
  <div id="pg-source" class="muted small"></div>
</header>
<form id="pg-form" class="pg-form" autocomplete="off" novalidate>
  <label for="pg-prompt" class="pg-label">Prompt <span class="muted small">(the model's chat template is applied; Ctrl+Enter sends)</span></label>
  <textarea id="pg-prompt" rows="4" placeholder="Ask something the adapter was trained for"></textarea>
  <details id="pg-system-box">
    <summary>System message</summary>
    <textarea id="pg-system" rows="2" placeholder="Optional"></textarea>
  </details>
  <div class="pg-settings">
    <label>temperature <input id="pg-temperature" type="number" min="0" max="2" step="0.05"></label>
    <label>top-p <input id="pg-top-p" type="number" min="0.01" max="1" step="0.01"></label>
    <label>max tokens <input id="pg-max-tokens" type="number" min="1" max="4096" step="1"></label>
  </div>
  <div class="pg-actions">
    <button id="pg-generate" type="submit" disabled>Generate</button>
    <button id="pg-stop" type="button" class="secondary" disabled>Stop</button>
    <button id="pg-pinned" type="button" class="secondary" disabled title=".lora-studio/pinned-prompts.json: answers are saved beside the run">Run pinned prompts</button>
    <span id="pg-status" class="muted small" role="status"></span>
  </div>
  <div id="pg-error" class="banner error" role="alert" hidden></div>
</form>
<div id="pg-asked" class="pg-asked muted" hidden></div>
<div class="pg-columns">
  <section class="pg-column" id="pg-col-base" data-side="base">
    <div class="pg-col-head"><span class="pg-col-title">Base</span><span class="pg-rate muted small" id="pg-rate-base"></span></div>
    <pre class="pg-output" id="pg-out-base" aria-live="polite"></pre>
  </section>
  <section class="pg-column" id="pg-col-adapter" data-side="adapter">
    <div class="pg-col-head"><span class="pg-col-title">Adapter</span><span class="pg-rate muted small" id="pg-rate-adapter"></span></div>
    <pre class="pg-output" id="pg-out-adapter" aria-live="polite"></pre>
  </section>
</div>
`);
}

export function renderPanelHtml(o: PanelHtmlOptions): string {
  return page(o, 'LoRA Studio', '', `
<div id="app">
  <div id="trust-banner" class="banner warning" hidden></div>
  <div id="notice" class="banner" hidden></div>

  <section id="run-section" class="card" hidden>
    <div class="run-head">
      <span id="run-label" class="run-label"></span>
      <span id="run-status" class="status-chip"></span>
    </div>
    <div class="progress"><div id="run-progress-bar" class="progress-bar"></div></div>
    <div id="run-stats" class="stats"></div>
    <div id="run-message" class="run-message" hidden></div>
    <div class="smoothing">
      <label for="smoothing">Smoothing</label>
      <input id="smoothing" type="range" min="0" max="0.99" step="0.01" value="0.6" aria-label="Loss smoothing">
      <span id="smoothing-value">0.60</span>
    </div>
    <div class="charts">
      <div class="chart" id="chart-loss" data-points="0"></div>
      <div class="chart" id="chart-lr" data-points="0"></div>
      <div class="chart" id="chart-mem" data-points="0"></div>
      <div class="chart" id="chart-tps" data-points="0"></div>
    </div>
    <div class="actions">
      <vscode-button id="reveal-adapter" appearance="secondary" hidden>Reveal Adapter</vscode-button>
      <vscode-button id="show-log" appearance="secondary">Runtime Log</vscode-button>
    </div>
  </section>

  <section class="card">
    <h3>Model</h3>
    <div class="row">
      <vscode-text-field id="model-path" readonly placeholder="No model folder selected" class="grow"></vscode-text-field>
      <vscode-button id="pick-model" appearance="secondary">Browse…</vscode-button>
    </div>
    <div class="row">
      <vscode-dropdown id="cached-models" class="grow" aria-label="Models in the Hugging Face cache">
        <vscode-option value="">Hugging Face cache…</vscode-option>
      </vscode-dropdown>
    </div>
    <div class="row">
      <vscode-text-field id="hub-id" placeholder="org/model on the Hub" class="grow"></vscode-text-field>
      <vscode-button id="download-model" appearance="secondary">Download</vscode-button>
    </div>
    <div id="download-status" class="muted" hidden></div>
    <div id="model-summary" class="summary muted">Pick a Hugging Face model folder (config.json and *.safetensors).</div>
  </section>

  <section class="card">
    <h3>Dataset</h3>
    <div class="row">
      <vscode-text-field id="data-path" readonly placeholder="No dataset selected" class="grow"></vscode-text-field>
      <vscode-button id="pick-dataset" appearance="secondary">Browse…</vscode-button>
    </div>
    <div id="dataset-summary" class="summary muted">JSONL, JSON or CSV: chat messages, alpaca, prompt/completion or text.</div>
    <ul id="dataset-diagnostics" class="diagnostics"></ul>
    <div id="preview" class="preview" hidden>
      <div class="preview-legend"><span class="tok trained">trained</span><span class="tok masked">masked</span></div>
      <div id="preview-rows"></div>
    </div>
  </section>

  <section class="card">
    <h3>LoRA</h3>
    <div class="row">
      <label for="preset">Preset</label>
      <vscode-dropdown id="preset" class="grow"></vscode-dropdown>
    </div>
    <div id="preset-description" class="muted small"></div>
    <div class="grid">
      <vscode-text-field id="lora-r" size="6" inputmode="numeric">r</vscode-text-field>
      <vscode-text-field id="lora-alpha" size="6" inputmode="decimal">alpha</vscode-text-field>
      <vscode-text-field id="lora-dropout" size="6" inputmode="decimal">dropout</vscode-text-field>
    </div>
    <vscode-checkbox id="lora-rslora">rsLoRA (scale alpha / √r)</vscode-checkbox>
    <div class="row targets-head">
      <span>Target modules</span>
      <vscode-button id="targets-attention" appearance="icon" title="Attention projections only">attention</vscode-button>
      <vscode-button id="targets-all" appearance="icon" title="All linear layers">all linear</vscode-button>
    </div>
    <div id="targets" class="targets"></div>
  </section>

  <section class="card">
    <h3>Quantization</h3>
    <div class="row">
      <vscode-dropdown id="quant-type" class="grow" aria-label="Base model quantization">
        <vscode-option value="nf4">NF4 (QLoRA)</vscode-option>
        <vscode-option value="fp4">FP4</vscode-option>
        <vscode-option value="int8">INT8</vscode-option>
        <vscode-option value="none">None (16-bit base)</vscode-option>
      </vscode-dropdown>
    </div>
    <vscode-checkbox id="quant-double">Double quantization of the scales</vscode-checkbox>
  </section>

  <section class="card">
    <h3>Training</h3>
    <div class="grid">
      <vscode-text-field id="train-lr" size="8" inputmode="decimal">learning rate</vscode-text-field>
      <div class="field">
        <label for="train-schedule">schedule</label>
        <vscode-dropdown id="train-schedule">
          <vscode-option value="cosine">cosine</vscode-option>
          <vscode-option value="linear">linear</vscode-option>
          <vscode-option value="constant">constant</vscode-option>
        </vscode-dropdown>
      </div>
      <vscode-text-field id="train-warmup" size="6" inputmode="numeric">warmup steps</vscode-text-field>
      <vscode-text-field id="train-epochs" size="6" inputmode="decimal">epochs</vscode-text-field>
      <vscode-text-field id="train-max-steps" size="6" inputmode="numeric" placeholder="none">max steps</vscode-text-field>
      <vscode-text-field id="train-seq-len" size="6" inputmode="numeric">seq len</vscode-text-field>
      <vscode-text-field id="train-micro-batch" size="6" inputmode="numeric">micro-batch</vscode-text-field>
      <vscode-text-field id="train-grad-accum" size="6" inputmode="numeric">grad accum</vscode-text-field>
      <vscode-text-field id="train-eval-split" size="6" inputmode="decimal">eval split</vscode-text-field>
      <vscode-text-field id="train-save-every" size="6" inputmode="numeric">checkpoint every</vscode-text-field>
    </div>
    <vscode-checkbox id="train-grad-ckpt">Activation checkpointing</vscode-checkbox>
    <div id="field-errors" class="field-errors" role="alert"></div>
  </section>

  <section class="card">
    <h3>Memory estimate</h3>
    <div id="estimate-bar" class="estimate-bar" aria-hidden="true"></div>
    <table id="estimate-table" class="estimate-table"></table>
    <div id="estimate-verdict" class="summary muted">Choose a model to estimate memory.</div>
    <div id="trainable" class="summary"></div>
  </section>

  <div class="actions sticky">
    <vscode-button id="start" disabled>Start Training</vscode-button>
    <vscode-button id="stop" appearance="secondary" disabled>Stop</vscode-button>
    <span id="start-hint" class="muted small"></span>
  </div>
</div>
`);
}
