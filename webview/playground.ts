// Try Adapter: sends a prompt and generation settings to the host, and appends the streamed
// text of the base and adapter answers to their columns. Every host message is validated
// against the protocol before use; the form is checked here too, and again by the host.

import { parseHostMessage, PLAYGROUND_MAX_TOKENS, type PlaygroundSettings, type PlaygroundSide } from './protocol';

interface VsCodeApi { postMessage(m: unknown): void; getState(): unknown; setState(s: unknown): void }
declare function acquireVsCodeApi(): VsCodeApi;
const vscode = acquireVsCodeApi();

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const prompt = $<HTMLTextAreaElement>('pg-prompt');
const system = $<HTMLTextAreaElement>('pg-system');
const temperature = $<HTMLInputElement>('pg-temperature');
const topP = $<HTMLInputElement>('pg-top-p');
const maxTokens = $<HTMLInputElement>('pg-max-tokens');
const generateBtn = $<HTMLButtonElement>('pg-generate');
const stopBtn = $<HTMLButtonElement>('pg-stop');
const pinnedBtn = $<HTMLButtonElement>('pg-pinned');
const status = $('pg-status');
const error = $('pg-error');
const out: Record<PlaygroundSide, HTMLElement> = { base: $('pg-out-base'), adapter: $('pg-out-adapter') };
const rate: Record<PlaygroundSide, HTMLElement> = { base: $('pg-rate-base'), adapter: $('pg-rate-adapter') };

let ready = false;
let busy = false;
let pinnedCount = 0;

/** The settings in the form, or a message saying which field is wrong. */
function readSettings(): PlaygroundSettings | string {
  const t = Number(temperature.value);
  const p = Number(topP.value);
  const m = Number(maxTokens.value);
  if (!temperature.value.trim() || !(t >= 0 && t <= 2)) return 'temperature must be between 0 and 2 (0 = greedy)';
  if (!topP.value.trim() || !(p > 0 && p <= 1)) return 'top-p must be above 0 and at most 1';
  if (!Number.isInteger(m) || m < 1 || m > PLAYGROUND_MAX_TOKENS) return `max tokens must be a whole number from 1 to ${PLAYGROUND_MAX_TOKENS}`;
  const s: PlaygroundSettings = { temperature: t, topP: p, maxTokens: m };
  if (system.value.trim()) s.system = system.value;
  return s;
}

function showError(message: string | null, hint?: string): void {
  error.hidden = message === null;
  error.textContent = message === null ? '' : hint ? `${message} — ${hint}` : message;
}

function refreshButtons(): void {
  generateBtn.disabled = !ready || busy || !prompt.value.trim();
  pinnedBtn.disabled = !ready || busy || pinnedCount === 0;
  stopBtn.disabled = !busy;
  vscode.setState({ prompt: prompt.value, system: system.value, temperature: temperature.value, topP: topP.value, maxTokens: maxTokens.value });
}

function formatRate(tokens: number, perS: number): string {
  return `${tokens} token${tokens === 1 ? '' : 's'}${perS > 0 ? ` · ${perS.toFixed(perS >= 100 ? 0 : 1)} tokens/s` : ''}`;
}

function send(type: 'generate' | 'runPinned'): void {
  const settings = readSettings();
  if (typeof settings === 'string') {
    showError(settings);
    return;
  }
  showError(null);
  if (type === 'generate') vscode.postMessage({ type, prompt: prompt.value, settings });
  else vscode.postMessage({ type, settings });
}

$('pg-form').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!generateBtn.disabled) send('generate');
});
prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (!generateBtn.disabled) send('generate');
  }
});
for (const el of [prompt, system, temperature, topP, maxTokens]) el.addEventListener('input', refreshButtons);
stopBtn.addEventListener('click', () => vscode.postMessage({ type: 'cancelGeneration' }));
pinnedBtn.addEventListener('click', () => send('runPinned'));

const saved = vscode.getState() as Record<string, string> | undefined;

window.addEventListener('message', (ev: MessageEvent) => {
  const r = parseHostMessage(ev.data);
  if (!r.ok) {
    vscode.postMessage({ type: 'rejected', error: r.error });
    return;
  }
  const m = r.value;
  switch (m.type) {
    case 'playgroundInit':
      $('pg-title').textContent = `Try adapter: ${m.run}`;
      $('pg-source').textContent = `${m.model}  +  ${m.adapter}`;
      temperature.value = saved?.temperature ?? String(m.settings.temperature);
      topP.value = saved?.topP ?? String(m.settings.topP);
      maxTokens.value = saved?.maxTokens ?? String(m.settings.maxTokens);
      if (saved?.prompt) prompt.value = saved.prompt;
      if (saved?.system) system.value = saved.system;
      pinnedCount = m.pinnedCount;
      pinnedBtn.textContent = pinnedCount ? `Run ${pinnedCount} pinned prompt${pinnedCount === 1 ? '' : 's'}` : 'Run pinned prompts';
      ready = true;
      break;
    case 'playgroundStatus':
      busy = m.busy;
      status.textContent = m.level === 'error' ? '' : m.message;
      if (m.level === 'error') showError(m.message, m.hint);
      break;
    case 'playgroundStart': {
      const asked = $('pg-asked');
      asked.hidden = false;
      asked.textContent = m.prompt;
      for (const side of ['base', 'adapter'] as const) {
        out[side].textContent = '';
        out[side].classList.add('streaming');
        rate[side].textContent = '';
      }
      showError(null);
      break;
    }
    case 'playgroundTokens':
      out[m.side].append(m.text);
      rate[m.side].textContent = formatRate(m.tokens, m.tokensPerS);
      out[m.side].dataset.tokens = String(m.tokens);
      break;
    case 'playgroundDone': {
      out[m.side].classList.remove('streaming');
      out[m.side].dataset.tokens = String(m.tokens);
      const why = m.stopReason === 'eos' ? 'end of answer' : m.stopReason === 'max_tokens' ? 'max tokens' : 'stopped';
      rate[m.side].textContent = `${formatRate(m.tokens, m.tokensPerS)} · ${why}`;
      break;
    }
    default:
      return;
  }
  refreshButtons();
});

refreshButtons();
vscode.postMessage({ type: 'ready' });
