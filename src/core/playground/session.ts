// The playground's generation side: the model's chat template applied to the prompt, then
// the base and the adapter graphs generate from the same prompt ids concurrently, each
// streaming decoded text through callbacks with its own tokens/s.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { OnnxGenerator } from '../export/onnxGenerate';
import { loadModelTokenizer, resolveTemplate, type ModelTokenizer } from '../tokenize/modelTokenizer';
import type { ChatTemplate } from '../tokenize/templates';

export type Side = 'base' | 'adapter';

export interface GenerationSettings {
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  maxTokens: number;
  /** Optional system message, rendered by the template when it supports one. */
  system?: string;
  seed?: number;
  /** Extra token ids that end an answer, besides the model's EOS and end-of-turn tokens. */
  stopTokens?: number[];
}

export const DEFAULT_SETTINGS: GenerationSettings = { temperature: 0.7, topP: 0.9, maxTokens: 256 };

export interface SideResult {
  side: Side;
  text: string;
  tokens: number;
  /** Decode speed after the prompt: generated tokens / seconds from the first to the last token. */
  tokensPerS: number;
  /** Prompt processing + first token, in seconds. */
  firstTokenS: number;
  /** 'eos': the model produced EOS, an end-of-turn token or one of settings.stopTokens. */
  stopReason: 'eos' | 'max_tokens' | 'cancelled';
}

export interface StreamCallbacks {
  /** New text for one side (already decoded; concatenate in order). */
  onText?: (side: Side, delta: string, stats: { tokens: number; tokensPerS: number }) => void;
  onDone?: (result: SideResult) => void;
}

/** End-of-turn markers that chat templates close the assistant's answer with. */
const END_OF_TURN = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '</s>', '<|end_of_text|>'];

/**
 * Whether this onnxruntime-node can run CUDA: the binding lists the provider, and its shared
 * libraries are installed beside the binding (the npm package ships them only when installed
 * with the CUDA option). Checked first because a failed attempt prints native errors on stderr.
 */
export function cudaProviderInstalled(): boolean {
  try {
    const ort = require('onnxruntime-node') as { listSupportedBackends?: () => { name: string; bundled: boolean }[] };
    const cuda = ort.listSupportedBackends?.().find((b) => b.name === 'cuda');
    if (!cuda) return false;
    if (cuda.bundled) return true;
    const pkg = path.dirname(require.resolve('onnxruntime-node/package.json'));
    const bin = path.join(pkg, 'bin', 'napi-v6', process.platform, process.arch);
    return fs.existsSync(path.join(bin, process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so'));
  } catch {
    return false;
  }
}

/** Which ONNX Runtime execution providers to try, best first; the CPU one always works. */
function providerChoices(preferCuda: boolean): string[][] {
  return preferCuda && cudaProviderInstalled() ? [['cuda', 'cpu'], ['cpu']] : [['cpu']];
}

/** Loads a graph on CUDA when this onnxruntime-node build has it, else on the CPU, silently. */
export async function loadGenerator(dir: string, opts: { preferCuda?: boolean; threads?: number } = {}): Promise<{ generator: OnnxGenerator; provider: string }> {
  let lastError: unknown;
  for (const providers of providerChoices(opts.preferCuda ?? true)) {
    try {
      const generator = await OnnxGenerator.load(dir, { executionProviders: providers, threads: opts.threads });
      return { generator, provider: providers[0]! };
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

/**
 * Token ids in, text out, as text-generation-inference detokenizes a stream: each step decodes
 * a short window that starts at the tokens emitted the step before (so leading spaces and
 * merges come out as in a full decode) instead of the whole answer, and emits only when the
 * text grew and does not end in an incomplete character (U+FFFD).
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  private emitted = '';

  constructor(private readonly decode: (ids: number[]) => Promise<string>) {}

  /** The new text this token completes ('' while a character or word is still open). */
  async push(id: number): Promise<string> {
    this.ids.push(id);
    const before = this.readOffset > this.prefixOffset ? await this.decode(this.ids.slice(this.prefixOffset, this.readOffset)) : '';
    const window = await this.decode(this.ids.slice(this.prefixOffset));
    if (window.length <= before.length || !window.startsWith(before) || window.endsWith('\uFFFD')) return '';
    const delta = window.slice(before.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  /** What the last tokens still hold back (an unfinished character comes out as U+FFFD). */
  async finish(): Promise<string> {
    const full = await this.decode(this.ids);
    if (full === this.emitted || !full.startsWith(this.emitted)) return '';
    const rest = full.slice(this.emitted.length);
    this.emitted = full;
    return rest;
  }
}

export class PlaygroundSession {
  private constructor(
    readonly tokenizer: ModelTokenizer,
    readonly template: ChatTemplate,
    /** True when the model ships no chat template and a built-in one is used. */
    readonly templateFallback: boolean,
    private readonly generators: Record<Side, OnnxGenerator>,
    readonly providers: Record<Side, string>,
    readonly stopTokens: number[],
  ) {}

  /** `modelDir` supplies the tokenizer and chat template (the merged model shares them). */
  /** `threads`: intra-op threads of each graph; by default half the cores each, since the
   *  two columns always generate at the same time and would otherwise contend for every core. */
  static async open(opts: { modelDir: string; baseOnnx: string; adapterOnnx: string; preferCuda?: boolean; threads?: number }): Promise<PlaygroundSession> {
    const tokenizer = await loadModelTokenizer(opts.modelDir);
    const { template, fallbackFrom } = resolveTemplate(tokenizer, 'model');
    opts = { ...opts, threads: opts.threads ?? Math.max(1, Math.floor(os.availableParallelism() / 2)) };
    const base = await loadGenerator(opts.baseOnnx, opts);
    let adapter;
    try {
      adapter = await loadGenerator(opts.adapterOnnx, opts);
    } catch (e) {
      await base.generator.release();
      throw e;
    }
    const stops = new Set<number>();
    const add = (id: number | null | undefined) => {
      if (typeof id === 'number' && Number.isInteger(id) && id >= 0) stops.add(id);
    };
    add(tokenizer.eosId);
    add(base.generator.info.eos);
    for (const id of generationConfigEos(opts.modelDir)) add(id);
    for (const t of END_OF_TURN) if (tokenizer.specialTokens.has(t)) add(tokenizer.tokenizer.tokenToId(t));
    return new PlaygroundSession(tokenizer, template, fallbackFrom === 'model', { base: base.generator, adapter: adapter.generator },
                                 { base: base.provider, adapter: adapter.provider }, [...stops].sort((a, b) => a - b));
  }

  async close(): Promise<void> {
    await Promise.all([this.generators.base.release(), this.generators.adapter.release()]);
  }

  /** The prompt as the model sees it: the chat template with the assistant's turn opened. */
  renderPrompt(prompt: string, system?: string): string {
    const messages = [...(system ? [{ role: 'system' as const, content: system }] : []), { role: 'user' as const, content: prompt }];
    return this.template.render(messages, true);
  }

  async promptIds(prompt: string, system?: string): Promise<number[]> {
    const text = this.renderPrompt(prompt, system);
    const ids = (await this.tokenizer.tokenizer.encode(text, null, { addSpecialTokens: false })).getIds();
    // Templates that write bos_token themselves already start with it; others rely on the
    // tokenizer's post-processor, as training did.
    const prefix = this.tokenizer.defaultPrefixIds;
    const startsWithPrefix = prefix.length > 0 && prefix.every((id, i) => ids[i] === id);
    return startsWithPrefix ? ids : [...prefix, ...ids];
  }

  /** Generates with one side, streaming decoded text. */
  async generateSide(side: Side, ids: readonly number[], settings: GenerationSettings, cb: StreamCallbacks = {}, cancelled?: () => boolean): Promise<SideResult> {
    const gen = this.generators[side];
    const tokens: number[] = [];
    let text = '';
    const detok = new IncrementalDecoder((ids) => this.tokenizer.tokenizer.decode(ids, true));
    const t0 = performance.now();
    let tFirst = 0;
    let tLast = 0;
    let stopReason: SideResult['stopReason'] = 'eos';
    const rate = () => (tokens.length > 1 && tLast > tFirst ? ((tokens.length - 1) * 1000) / (tLast - tFirst) : 0);
    for await (const t of gen.generate(ids, {
      maxTokens: settings.maxTokens, temperature: settings.temperature, topP: settings.topP,
      stopTokens: settings.stopTokens?.length ? [...this.stopTokens, ...settings.stopTokens] : this.stopTokens, seed: settings.seed ?? 0, cancelled,
    })) {
      tLast = performance.now();
      if (!tokens.length) tFirst = tLast;
      tokens.push(t.token);
      const delta = await detok.push(t.token);
      if (delta) {
        text += delta;
        cb.onText?.(side, delta, { tokens: tokens.length, tokensPerS: rate() });
      }
    }
    if (cancelled?.()) stopReason = 'cancelled';
    else if (tokens.length >= settings.maxTokens) stopReason = 'max_tokens';
    const rest = await detok.finish();
    if (rest) {
      text += rest;
      cb.onText?.(side, rest, { tokens: tokens.length, tokensPerS: rate() });
    }
    const result: SideResult = { side, text, tokens: tokens.length, tokensPerS: rate(), firstTokenS: tokens.length ? (tFirst - t0) / 1000 : 0, stopReason };
    cb.onDone?.(result);
    return result;
  }

  /** Both sides from the same prompt, concurrently (ONNX Runtime runs each call on its own threads). */
  async generate(prompt: string, settings: GenerationSettings, cb: StreamCallbacks = {}, cancelled?: () => boolean): Promise<Record<Side, SideResult>> {
    const ids = await this.promptIds(prompt, settings.system);
    const [base, adapter] = await Promise.all([
      this.generateSide('base', ids, settings, cb, cancelled),
      this.generateSide('adapter', ids, settings, cb, cancelled),
    ]);
    return { base, adapter };
  }
}

/** generation_config.json's eos_token_id: a number or a list (Llama 3 lists eot_id there). */
function generationConfigEos(modelDir: string): number[] {
  const file = path.join(modelDir, 'generation_config.json');
  try {
    const v = (JSON.parse(fs.readFileSync(file, 'utf8')) as { eos_token_id?: unknown }).eos_token_id;
    if (typeof v === 'number') return [v];
    if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  } catch {
    // absent or unreadable: the tokenizer's EOS is enough
  }
  return [];
}
