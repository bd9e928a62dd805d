// Shared by the data pipeline tests: model folders with a tiny real tokenizer in the style
// of a model family and that family's chat template exactly as the model ships it.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyTokenizer, TinyTokenizerInfo } from '../../src/core/fixtures/tinyTokenizer';

export type Style = 'llama3' | 'chatml' | 'mistral' | 'gemma' | 'none';

/** test/fixtures/templates/<file>: Meta-Llama-3-8B-Instruct, Qwen2.5-*-Instruct, Mistral-7B-Instruct-v0.3, gemma-2-*-it. */
export const REAL_TEMPLATE_FILES: Record<Exclude<Style, 'none'>, string> = {
  llama3: 'llama3.jinja',
  chatml: 'qwen2_5.jinja',
  mistral: 'mistral_v0_3.jinja',
  gemma: 'gemma2.jinja',
};

export function realTemplate(style: Exclude<Style, 'none'>): string {
  return templateFixture(REAL_TEMPLATE_FILES[style]);
}

/** A template from test/fixtures/templates, e.g. llama3_1.jinja (Meta-Llama-3.1-8B-Instruct). */
export function templateFixture(name: string): string {
  const file = path.join(__dirname, '..', '..', '..', 'test', 'fixtures', 'templates', name);
  return fs.readFileSync(file, 'utf8').replace(/\n$/, '');
}

export function tmpDir(prefix = 'data-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface ModelDirOptions {
  /** The chat template to ship: the family's real one (default), a custom text, or none. */
  template?: string | null;
  corpus?: string[];
  vocabSize?: number;
}

export function makeModelDir(style: Style, opts: ModelDirOptions = {}): { dir: string; info: TinyTokenizerInfo } {
  const dir = tmpDir(`model-${style}-`);
  const corpus = opts.corpus ?? [
    'What is the capital of France? Paris is the capital.',
    'How many people live there? About 2.1 million.',
    'You are a geography tutor. Answer briefly.',
  ];
  const info = writeTinyTokenizer(dir, { style, corpus, vocabSize: opts.vocabSize ?? 600 });
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  const template = opts.template === undefined ? (style === 'none' ? null : realTemplate(style)) : opts.template;
  if (template === null) delete cfg.chat_template;
  else cfg.chat_template = template;
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: info.vocabSize }));
  return { dir, info };
}

export function writeJsonl(rows: unknown[], name = 'data.jsonl'): string {
  const file = path.join(tmpDir(), name);
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

export const CONVERSATION = [
  { role: 'user' as const, content: 'What is the capital of France?' },
  { role: 'assistant' as const, content: 'Paris is the capital.' },
  { role: 'user' as const, content: 'How many people live there?' },
  { role: 'assistant' as const, content: 'About 2.1 million.' },
];
