// Dataset formats and their conversion to one canonical example shape. Detection looks at
// field names only; a row that does not fit the chosen format is reported and skipped, the
// other rows stay usable.
import { Diagnostic, diagnostic } from './diagnostics';
import { SourceRecord } from './readers';

export type DataFormat = 'messages' | 'sharegpt' | 'alpaca' | 'prompt_completion' | 'text';
export type FormatOption = 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text';

export type Role = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: Role;
  content: string;
}

/**
 * `chat`: rendered through a chat template; assistant turns are the answers.
 * `completion`: prompt and completion as plain text, concatenated (completion is the answer).
 * `text`: plain text, trained on as a whole.
 */
export type Example =
  | { kind: 'chat'; messages: ChatMessage[] }
  | { kind: 'completion'; prompt: string; completion: string }
  | { kind: 'text'; text: string };

export interface FormatSpec {
  format: DataFormat;
  required: string[];
  optional: string[];
  describe: string;
}

export const FORMAT_SPECS: FormatSpec[] = [
  { format: 'messages', required: ['messages'], optional: [], describe: '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}' },
  { format: 'sharegpt', required: ['conversations'], optional: [], describe: '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}' },
  { format: 'alpaca', required: ['instruction', 'output'], optional: ['input', 'system'], describe: '{"instruction": ..., "input": ..., "output": ...}' },
  { format: 'prompt_completion', required: ['prompt', 'completion'], optional: [], describe: '{"prompt": ..., "completion": ...}' },
  { format: 'text', required: ['text'], optional: [], describe: '{"text": ...}' },
];

const ROLE_ALIASES: Record<string, Role> = {
  system: 'system',
  user: 'user',
  human: 'user',
  assistant: 'assistant',
  gpt: 'assistant',
  model: 'assistant',
  bot: 'assistant',
  chatgpt: 'assistant',
};

export const KNOWN_ROLE_NAMES = Object.keys(ROLE_ALIASES);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The format a single row looks like, by its field names; null when none fits. */
export function detectRowFormat(value: unknown): DataFormat | null {
  if (!isObject(value)) return null;
  for (const spec of FORMAT_SPECS) {
    if (spec.required.every((k) => k in value)) return spec.format;
  }
  return null;
}

/** Maps the user-facing option to the concrete formats it accepts. */
export function formatsFor(option: FormatOption): DataFormat[] {
  switch (option) {
    case 'messages':
      return ['messages', 'sharegpt'];
    case 'alpaca':
      return ['alpaca'];
    case 'prompt_completion':
      return ['prompt_completion'];
    case 'text':
      return ['text'];
    case 'auto':
      return FORMAT_SPECS.map((s) => s.format);
  }
}

/**
 * For a row that fits no format, names the format it came closest to and the fields it
 * lacks, so that "missing field output" beats "unknown format".
 */
export function closestFormat(value: Record<string, unknown>, allowed: DataFormat[]): { spec: FormatSpec; missing: string[] } | null {
  let best: { spec: FormatSpec; missing: string[]; score: number } | null = null;
  for (const spec of FORMAT_SPECS) {
    if (!allowed.includes(spec.format)) continue;
    const present = spec.required.filter((k) => k in value).length + spec.optional.filter((k) => k in value).length;
    if (present === 0) continue;
    const missing = spec.required.filter((k) => !(k in value));
    if (!best || present > best.score) best = { spec, missing, score: present };
  }
  return best && { spec: best.spec, missing: best.missing };
}

export interface ConvertContext {
  file: string;
  /** Parse JSON-encoded message lists in string fields (CSV cells). */
  fromCsv?: boolean;
}

export type ConvertResult = { ok: true; example: Example } | { ok: false; diagnostics: Diagnostic[] };

/** Where in the record's line to point: the n-th occurrence of `needle` (a JSON key or value). */
export interface Anchor {
  needle: string;
  nth?: number;
}

function columnOf(rec: SourceRecord, anchor?: Anchor): number | undefined {
  if (rec.text === undefined) return undefined;
  if (!anchor) return 1;
  let at = -1;
  for (let k = 0; k <= (anchor.nth ?? 0); k++) {
    at = rec.text.indexOf(anchor.needle, at + 1);
    if (at < 0) return 1;
  }
  return at + 1;
}

function fail(ctx: ConvertContext, rec: SourceRecord, code: Parameters<typeof diagnostic>[0], message: string, hint?: string, anchor?: Anchor): ConvertResult {
  return { ok: false, diagnostics: [diagnostic(code, { message, file: ctx.file, line: rec.line, column: columnOf(rec, anchor), row: rec.row, hint })] };
}

const key = (k: string, nth = 0): Anchor => ({ needle: JSON.stringify(k), nth });

/** Text of a message content: a string, or OpenAI-style parts [{type: "text", text}]. */
function contentText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const out: string[] = [];
    for (const part of v) {
      if (typeof part === 'string') out.push(part);
      else if (isObject(part) && part.type === 'text' && typeof part.text === 'string') out.push(part.text);
      else return null;
    }
    return out.join('');
  }
  return null;
}

function convertMessageList(
  list: unknown,
  field: string,
  roleKey: string,
  contentKey: string,
  ctx: ConvertContext,
  rec: SourceRecord,
): { ok: true; messages: ChatMessage[] } | { ok: false; result: ConvertResult } {
  if (ctx.fromCsv && typeof list === 'string') {
    try {
      list = JSON.parse(list);
    } catch {
      return { ok: false, result: fail(ctx, rec, 'wrong-type', `"${field}" is not a JSON list of messages`, 'in a CSV file, the cell must hold the JSON text of the message list', key(field)) };
    }
  }
  if (!Array.isArray(list)) return { ok: false, result: fail(ctx, rec, 'wrong-type', `"${field}" must be a list of messages, found ${typeName(list)}`, undefined, key(field)) };
  if (list.length === 0) return { ok: false, result: fail(ctx, rec, 'missing-field', `"${field}" is an empty list`, undefined, key(field)) };
  const messages: ChatMessage[] = [];
  for (let i = 0; i < list.length; i++) {
    const m = list[i];
    const where = `${field}[${i}]`;
    if (!isObject(m)) return { ok: false, result: fail(ctx, rec, 'wrong-type', `${where} must be an object with "${roleKey}" and "${contentKey}", found ${typeName(m)}`, undefined, key(field)) };
    let rk = roleKey;
    let ck = contentKey;
    // Tolerate the other convention inside either list (role/content inside "conversations").
    if (!(rk in m) && ('role' in m || 'from' in m)) rk = 'role' in m ? 'role' : 'from';
    if (!(ck in m) && ('content' in m || 'value' in m)) ck = 'content' in m ? 'content' : 'value';
    if (!(rk in m)) return { ok: false, result: fail(ctx, rec, 'missing-field', `${where} has no "${roleKey}"`, undefined, key(field)) };
    if (!(ck in m)) return { ok: false, result: fail(ctx, rec, 'missing-field', `${where} has no "${contentKey}"`, undefined, key(rk, i)) };
    const rawRole = m[rk];
    const role = typeof rawRole === 'string' ? ROLE_ALIASES[rawRole.toLowerCase()] : undefined;
    if (!role) {
      return {
        ok: false,
        result: fail(ctx, rec, 'unknown-role', `${where} has the unknown role ${JSON.stringify(rawRole)}`, `supported roles: system, user, assistant (also ShareGPT's human, gpt)`, key(rk, i)),
      };
    }
    const content = contentText(m[ck]);
    if (content === null) return { ok: false, result: fail(ctx, rec, 'wrong-type', `${where}.${ck} must be text, found ${typeName(m[ck])}`, undefined, key(ck, i)) };
    messages.push({ role, content });
  }
  return { ok: true, messages };
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/** Checks a chat for content that cannot be trained on; returns a failure or null. */
function checkChat(messages: ChatMessage[], ctx: ConvertContext, rec: SourceRecord, warnings: Diagnostic[], contentKey: string, listKey: string): ConvertResult | null {
  let assistants = 0;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (m.content.trim() !== '') {
      if (m.role === 'assistant') assistants++;
      continue;
    }
    if (m.role === 'assistant') {
      return fail(ctx, rec, 'empty-answer', `message ${i} (assistant) is empty`, 'remove the row or write the answer; an empty answer teaches the model to say nothing', key(contentKey, i));
    }
    warnings.push(diagnostic('empty-message', { message: `message ${i} (${m.role}) is empty`, file: ctx.file, line: rec.line, column: columnOf(rec, key(contentKey, i)), row: rec.row }));
  }
  if (assistants === 0) return fail(ctx, rec, 'no-assistant-turn', 'the conversation has no assistant message to learn from', 'add the assistant\'s answer as the last message', key(listKey));
  return null;
}

/** Converts one record to an Example in the given (already detected) format. */
export function convertRecord(rec: SourceRecord, format: DataFormat, ctx: ConvertContext): ConvertResult & { warnings?: Diagnostic[] } {
  const v = rec.value;
  if (!isObject(v)) return fail(ctx, rec, 'not-an-object', `row must be a JSON object, found ${typeName(v)}`);
  const warnings: Diagnostic[] = [];
  const spec = FORMAT_SPECS.find((s) => s.format === format)!;
  const missing = spec.required.filter((k) => !(k in v));
  if (missing.length) {
    return fail(ctx, rec, 'missing-field', `missing field${missing.length > 1 ? 's' : ''} ${missing.map((k) => `"${k}"`).join(', ')} (${format} format)`, `expected ${spec.describe}`);
  }
  switch (format) {
    case 'messages':
    case 'sharegpt': {
      const field = format === 'messages' ? 'messages' : 'conversations';
      const conv = convertMessageList(v[field], field, format === 'messages' ? 'role' : 'from', format === 'messages' ? 'content' : 'value', ctx, rec);
      if (!conv.ok) return conv.result;
      const bad = checkChat(conv.messages, ctx, rec, warnings, format === 'messages' ? 'content' : 'value', field);
      if (bad) return bad;
      return { ok: true, example: { kind: 'chat', messages: conv.messages }, warnings };
    }
    case 'alpaca': {
      const instruction = v.instruction;
      const input = v.input ?? '';
      const output = v.output;
      const system = v.system ?? '';
      for (const [k, val] of [['instruction', instruction], ['input', input], ['output', output], ['system', system]] as const) {
        if (typeof val !== 'string') return fail(ctx, rec, 'wrong-type', `"${k}" must be text, found ${typeName(val)}`, undefined, key(k));
      }
      const user = (input as string).trim() ? `${instruction as string}\n\n${input as string}` : (instruction as string);
      const messages: ChatMessage[] = [];
      if ((system as string).trim()) messages.push({ role: 'system', content: system as string });
      messages.push({ role: 'user', content: user }, { role: 'assistant', content: output as string });
      if ((output as string).trim() === '') return fail(ctx, rec, 'empty-answer', '"output" is empty', 'remove the row or write the answer', key('output'));
      if (user.trim() === '') warnings.push(diagnostic('empty-message', { message: '"instruction" is empty', file: ctx.file, line: rec.line, column: columnOf(rec, key('instruction')), row: rec.row }));
      return { ok: true, example: { kind: 'chat', messages }, warnings };
    }
    case 'prompt_completion': {
      const prompt = v.prompt;
      const completion = v.completion;
      // TRL's conversational prompt/completion: both sides are message lists.
      if (Array.isArray(prompt) || Array.isArray(completion) || (ctx.fromCsv && typeof prompt === 'string' && prompt.trimStart().startsWith('[{'))) {
        const p = convertMessageList(prompt, 'prompt', 'role', 'content', ctx, rec);
        if (!p.ok) return p.result;
        const c = convertMessageList(completion, 'completion', 'role', 'content', ctx, rec);
        if (!c.ok) return c.result;
        const messages = p.messages.concat(c.messages);
        const bad = checkChat(messages, ctx, rec, warnings, 'content', 'completion');
        if (bad) return bad;
        return { ok: true, example: { kind: 'chat', messages }, warnings };
      }
      if (typeof prompt !== 'string') return fail(ctx, rec, 'wrong-type', `"prompt" must be text, found ${typeName(prompt)}`, undefined, key('prompt'));
      if (typeof completion !== 'string') return fail(ctx, rec, 'wrong-type', `"completion" must be text, found ${typeName(completion)}`, undefined, key('completion'));
      if (completion.trim() === '') return fail(ctx, rec, 'empty-answer', '"completion" is empty', 'remove the row or write the completion', key('completion'));
      return { ok: true, example: { kind: 'completion', prompt, completion }, warnings };
    }
    case 'text': {
      const text = v.text;
      if (typeof text !== 'string') return fail(ctx, rec, 'wrong-type', `"text" must be a string, found ${typeName(text)}`, undefined, key('text'));
      if (text.trim() === '') return fail(ctx, rec, 'empty-text', '"text" is empty', undefined, key('text'));
      return { ok: true, example: { kind: 'text', text }, warnings };
    }
  }
}

/**
 * Decides the dataset's format. `auto` takes the format of the first row that fits one;
 * an explicit option is taken as is. Returns null while no row has decided it yet.
 */
export class FormatResolver {
  private resolved: DataFormat | null = null;
  private readonly allowed: DataFormat[];

  constructor(
    readonly option: FormatOption,
    private readonly file: string,
  ) {
    this.allowed = formatsFor(option);
    if (option !== 'auto' && option !== 'messages') this.resolved = this.allowed[0];
  }

  get format(): DataFormat | null {
    return this.resolved;
  }

  /** The format for this record, or a diagnostic explaining why it fits none. */
  resolve(rec: SourceRecord): { format: DataFormat } | { diagnostic: Diagnostic } {
    const v = rec.value;
    if (!isObject(v)) {
      return { diagnostic: diagnostic('not-an-object', { message: `row must be a JSON object, found ${typeName(v)}`, file: this.file, line: rec.line, column: columnOf(rec), row: rec.row }) };
    }
    if (this.resolved && this.resolved !== 'messages' && this.resolved !== 'sharegpt') return { format: this.resolved };
    const own = detectRowFormat(v);
    if (own && this.allowed.includes(own)) {
      // messages and ShareGPT rows may be mixed; every other format is fixed by the first row.
      if (this.resolved === null) this.resolved = own;
      if (own === this.resolved || ((own === 'messages' || own === 'sharegpt') && (this.resolved === 'messages' || this.resolved === 'sharegpt'))) {
        return { format: own };
      }
    }
    if (this.resolved) return { format: this.resolved };
    const near = closestFormat(v, this.allowed);
    const keys = Object.keys(v);
    if (near && near.missing.length) {
      return {
        diagnostic: diagnostic('missing-field', {
          message: `missing field${near.missing.length > 1 ? 's' : ''} ${near.missing.map((k) => `"${k}"`).join(', ')} (${near.spec.format} format)`,
          file: this.file,
          line: rec.line,
          column: columnOf(rec),
          row: rec.row,
          hint: `expected ${near.spec.describe}`,
        }),
      };
    }
    return {
      diagnostic: diagnostic('unknown-format', {
        message: `row has fields ${keys.length ? keys.map((k) => `"${k}"`).join(', ') : '(none)'}, which match no dataset format`,
        file: this.file,
        line: rec.line,
        column: columnOf(rec),
        row: rec.row,
        hint: 'use "messages" (chat), "conversations" (ShareGPT), "instruction"/"input"/"output" (alpaca), "prompt"/"completion", or "text"',
      }),
    };
  }
}

/** Merges a leading system message into the first user turn, for templates without a system role. */
export function foldSystemIntoUser(messages: ChatMessage[]): ChatMessage[] {
  if (messages.length === 0 || messages[0].role !== 'system') return messages;
  const system = messages[0].content;
  const rest = messages.slice(1);
  const firstUser = rest.findIndex((m) => m.role === 'user');
  if (firstUser < 0) return [{ role: 'user', content: system }, ...rest];
  return rest.map((m, i) => (i === firstUser ? { role: 'user', content: system.trim() ? `${system}\n\n${m.content}` : m.content } : m));
}
