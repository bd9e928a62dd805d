// Loads what data preparation needs from an HF model folder: the fast tokenizer
// (tokenizer.json), the special tokens and chat template (tokenizer_config.json, with
// special_tokens_map.json as the older place for bos/eos), and the model's vocabulary size
// (config.json), which bounds the token ids a shard may hold.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from 'tokenizers';
import { DatasetError, diagnostic } from '../dataset/diagnostics';
import { jsonErrorPosition } from '../dataset/readers';
import { BuiltinTemplateName, ChatTemplate, TemplateChoice, TemplateRenderError, builtinTemplateSource, pickModelTemplate } from './templates';

export interface ModelTokenizer {
  modelDir: string;
  tokenizer: Tokenizer;
  /** Ids a shard may hold: config.json's vocab_size, else the tokenizer's size. */
  vocabSize: number;
  bosToken: string | null;
  eosToken: string | null;
  bosId: number | null;
  eosId: number | null;
  /** Ids the tokenizer's post-processor puts before / after a text (usually BOS / nothing). */
  defaultPrefixIds: number[];
  defaultSuffixIds: number[];
  /** Contents of the special added tokens (end-of-turn markers and the like). */
  specialTokens: Set<string>;
  /** The template text from tokenizer_config.json, or null when the model ships none. */
  modelTemplate: { source: string; name?: string } | null;
}

function readJsonFile(file: string, what: string): Record<string, unknown> {
  const text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const pos = jsonErrorPosition(err, text);
    const d = diagnostic('bad-json', { message: `${what} is not valid JSON: ${pos.message}`, file, line: pos.lineOffset + 1, column: pos.column });
    throw new DatasetError(`${file}:${pos.lineOffset + 1}:${pos.column}: ${what} is not valid JSON: ${pos.message}`, [d]);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new DatasetError(`${file}: ${what} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** A special token field: a string, or {content: string} as tokenizer_config.json stores AddedToken. */
function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export async function loadModelTokenizer(modelDir: string): Promise<ModelTokenizer> {
  const dir = path.resolve(modelDir);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new DatasetError(`model folder not found: ${dir}`, [], 'pass the folder of a Hugging Face model (with config.json and tokenizer.json)');
  }
  if (!st.isDirectory()) throw new DatasetError(`the model path is not a folder: ${dir}`, [], 'pass the folder that holds config.json and tokenizer.json');
  const tokFile = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(tokFile)) {
    const hasSentencePiece = fs.existsSync(path.join(dir, 'tokenizer.model'));
    throw new DatasetError(
      `the model folder has no tokenizer.json: ${dir}`,
      [],
      hasSentencePiece
        ? 'only the slow SentencePiece tokenizer (tokenizer.model) is there; convert it once with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)'
        : 'copy tokenizer.json (and tokenizer_config.json) from the model repository into this folder',
    );
  }
  let tokenizer: Tokenizer;
  try {
    tokenizer = Tokenizer.fromFile(tokFile);
  } catch (err) {
    throw new DatasetError(`${tokFile}: the tokenizer cannot be loaded: ${err instanceof Error ? err.message : String(err)}`, [], 'the file may be truncated or written by a newer tokenizers version');
  }
  // Some tokenizer.json files ship with truncation or padding switched on (e.g. truncation
  // at 512 from a classification export): rows must be cut only by seq_len, visibly.
  tokenizer.disableTruncation();
  tokenizer.disablePadding();
  const tokJson = readJsonFile(tokFile, 'tokenizer.json');
  const specialTokens = new Set<string>();
  if (Array.isArray(tokJson.added_tokens)) {
    for (const t of tokJson.added_tokens as { content?: unknown; special?: unknown }[]) {
      if (t && t.special === true && typeof t.content === 'string') specialTokens.add(t.content);
    }
  }

  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgFile) ? readJsonFile(cfgFile, 'tokenizer_config.json') : {};
  const mapFile = path.join(dir, 'special_tokens_map.json');
  const map = fs.existsSync(mapFile) ? readJsonFile(mapFile, 'special_tokens_map.json') : {};
  const bosToken = tokenText(cfg.bos_token) ?? tokenText(map.bos_token);
  const eosToken = tokenText(cfg.eos_token) ?? tokenText(map.eos_token);
  const idOf = (t: string | null) => (t === null ? null : tokenizer.tokenToId(t) ?? null);

  let vocabSize = tokenizer.getVocabSize(true);
  const modelCfgFile = path.join(dir, 'config.json');
  if (fs.existsSync(modelCfgFile)) {
    const modelCfg = readJsonFile(modelCfgFile, 'config.json');
    const textCfg = (modelCfg.text_config as Record<string, unknown> | undefined) ?? modelCfg;
    const v = textCfg.vocab_size ?? modelCfg.vocab_size;
    if (typeof v === 'number' && Number.isInteger(v) && v > 0) vocabSize = v;
  }

  // What add_special_tokens=True adds, learned from the tokenizer itself rather than guessed
  // from add_bos_token (Llama 3's tokenizer adds BOS through its post-processor while its
  // config says nothing about it).
  const probe = 'a';
  const plain = (await tokenizer.encode(probe, null, { addSpecialTokens: false })).getIds();
  const withSpecial = (await tokenizer.encode(probe, null, { addSpecialTokens: true })).getIds();
  let defaultPrefixIds: number[] = [];
  let defaultSuffixIds: number[] = [];
  for (let i = 0; i + plain.length <= withSpecial.length; i++) {
    if (plain.every((id, k) => withSpecial[i + k] === id)) {
      defaultPrefixIds = withSpecial.slice(0, i);
      defaultSuffixIds = withSpecial.slice(i + plain.length);
      break;
    }
  }

  return {
    modelDir: dir,
    tokenizer,
    vocabSize,
    bosToken,
    eosToken,
    bosId: idOf(bosToken),
    eosId: idOf(eosToken),
    defaultPrefixIds,
    defaultSuffixIds,
    specialTokens,
    modelTemplate: pickModelTemplate(cfg.chat_template) ?? templateFromSideFile(dir),
  };
}

/** Newer transformers save the template next to the config: chat_template.jinja or .json. */
function templateFromSideFile(dir: string): { source: string; name?: string } | null {
  const jinja = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinja)) return pickModelTemplate(fs.readFileSync(jinja, 'utf8'));
  const json = path.join(dir, 'chat_template.json');
  if (fs.existsSync(json)) return pickModelTemplate(readJsonFile(json, 'chat_template.json').chat_template);
  return null;
}

export interface ResolvedTemplate {
  template: ChatTemplate;
  /** Set when the model has no template and a built-in one is used instead. */
  fallbackFrom?: 'model';
}

/**
 * The template to render chats with. `model` means the model's own; when it has none the
 * `fallback` built-in is used and the caller reports it.
 */
export function resolveTemplate(tok: ModelTokenizer, choice: TemplateChoice, fallback: BuiltinTemplateName = 'alpaca'): ResolvedTemplate {
  const bos = tok.bosToken ?? '';
  const eos = tok.eosToken ?? '';
  try {
    if (choice === 'model') {
      if (tok.modelTemplate) return { template: new ChatTemplate(tok.modelTemplate.source, { source: 'model', name: tok.modelTemplate.name }, bos, eos) };
      return { template: new ChatTemplate(builtinTemplateSource(fallback), { source: fallback }, bos, eos), fallbackFrom: 'model' };
    }
    return { template: new ChatTemplate(builtinTemplateSource(choice), { source: choice }, bos, eos) };
  } catch (err) {
    if (err instanceof TemplateRenderError) {
      throw new DatasetError(`${path.join(tok.modelDir, 'tokenizer_config.json')}: chat_template: ${err.message}`, [], 'choose a built-in template instead (llama3, chatml, mistral, gemma or alpaca)');
    }
    throw err;
  }
}
