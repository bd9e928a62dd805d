// Turns one example into the text the model will see and the character spans of it that are
// trained on. For chats the spans come from rendering, not from guessing: the answer of
// assistant turn i is what rendering messages[0..i] adds to rendering messages[0..i) with
// the generation prompt, i.e. exactly the text the model would have to produce at inference.
import type { DiagnosticCode } from '../dataset/diagnostics';
import { ChatMessage, Example, foldSystemIntoUser } from '../dataset/formats';
import { ChatTemplate, TemplateRenderError } from './templates';

export type TrainOn = 'completion' | 'all';
export type AssistantTurns = 'all' | 'last';

export interface RenderOptions {
  trainOn: TrainOn;
  assistantTurns: AssistantTurns;
  foldSystemIntoUser: boolean;
}

export interface RenderedExample {
  text: string;
  /** UTF-16 [start, end) spans of `text` that are trained on, in order, not overlapping. */
  spans: Array<[number, number]>;
  /** For each span: the EOS id must be inserted after it (the rendering does not close it). */
  eosAfter: boolean[];
  /** Prepend the tokenizer's default prefix (BOS): the text does not start with it already. */
  addPrefix: boolean;
  /** The messages as rendered (after folding), for previews. */
  messages?: ChatMessage[];
}

export type RenderResult =
  | { ok: true; rendered: RenderedExample }
  | { ok: false; code: DiagnosticCode; message: string; hint?: string };

export interface TokenConventions {
  bosToken: string | null;
  eosToken: string | null;
  eosId: number | null;
  hasDefaultPrefix: boolean;
  specialTokens: ReadonlySet<string>;
}

/**
 * What a template does with one sequence of roles, learned by rendering placeholder contents:
 * the literal text between the messages and the answer spans. A row with the same roles is
 * then rendered once and checked against it, instead of once per assistant turn.
 */
interface Skeleton {
  /** Literal text around the placeholders: pieces[0] + content[order[0]] + pieces[1] + ... */
  pieces: string[];
  order: number[];
  /** Spans and EOS flags in skeleton coordinates, mapped by the placeholder positions. */
  spans: Array<[number, number]>;
  eosAfter: boolean[];
  /** Start of each placeholder in the skeleton text, in order, and its length. */
  holeStarts: number[];
  holeLengths: number[];
}

const HOLE_OPEN = '\u0001';
const HOLE_CLOSE = '\u0002';

export class ExampleRenderer {
  private readonly closers: string[];
  private readonly skeletons = new Map<string, Skeleton | null>();
  /** How many conversations took the one-render shortcut vs. rendering every prefix. */
  readonly stats = { shortcut: 0, prefixes: 0 };

  constructor(
    private readonly template: ChatTemplate | null,
    private readonly conv: TokenConventions,
    private readonly opts: RenderOptions,
    /** Off in tests that compare the shortcut with rendering every prefix. */
    private readonly useSkeletons = true,
  ) {
    // Longest first so that "</s>" is not mistaken for a shorter special ending it.
    const set = new Set(conv.specialTokens);
    if (conv.eosToken) set.add(conv.eosToken);
    this.closers = [...set].filter((s) => s.length > 0).sort((a, b) => b.length - a.length);
  }

  render(ex: Example): RenderResult {
    switch (ex.kind) {
      case 'text':
        return { ok: true, rendered: this.plain(ex.text, 0) };
      case 'completion': {
        const text = ex.prompt + ex.completion;
        return { ok: true, rendered: this.plain(text, this.opts.trainOn === 'all' ? 0 : ex.prompt.length) };
      }
      case 'chat':
        return this.chat(ex.messages);
    }
  }

  /** Plain text: BOS as the tokenizer adds it, the answer closed with EOS. */
  private plain(text: string, answerStart: number): RenderedExample {
    const closed = this.conv.eosToken !== null && this.conv.eosToken !== '' && text.endsWith(this.conv.eosToken);
    return {
      text,
      spans: [[answerStart, text.length]],
      eosAfter: [!closed && this.conv.eosId !== null],
      addPrefix: this.needsPrefix(text),
    };
  }

  private needsPrefix(text: string): boolean {
    if (!this.conv.hasDefaultPrefix) return false;
    const bos = this.conv.bosToken;
    // A template that writes BOS itself must not get a second one from the tokenizer.
    return !(bos && text.startsWith(bos));
  }

  private renderSafe(messages: ChatMessage[], agp: boolean): string | TemplateRenderError {
    try {
      return this.template!.render(messages, agp);
    } catch (err) {
      if (err instanceof TemplateRenderError) return err;
      throw err;
    }
  }

  private chat(original: ChatMessage[]): RenderResult {
    if (!this.template) return { ok: false, code: 'template-error', message: 'no chat template to render a conversation with' };
    const messages = this.opts.foldSystemIntoUser ? foldSystemIntoUser(original) : original;
    const full = this.renderSafe(messages, false);
    if (this.useSkeletons && typeof full === 'string') {
      const fast = this.fromSkeleton(messages, full);
      if (fast) {
        this.stats.shortcut++;
        return fast;
      }
    }
    this.stats.prefixes++;
    return this.chatByPrefixes(messages, full);
  }

  private skeletonFor(messages: ChatMessage[]): Skeleton | null {
    let key = '';
    for (const m of messages) key += m.role[0];
    let sk = this.skeletons.get(key);
    if (sk !== undefined) return sk;
    sk = null;
    const holes = messages.map((m, i) => ({ role: m.role, content: `${HOLE_OPEN}${i}${HOLE_CLOSE}` }));
    const res = this.chatByPrefixes(holes, this.renderSafe(holes, false));
    if (res.ok) {
      const text = res.rendered.text;
      const holeStarts: number[] = [];
      const holeLengths: number[] = [];
      const order: number[] = [];
      const pieces: string[] = [];
      let at = 0;
      let fine = true;
      for (;;) {
        const open = text.indexOf(HOLE_OPEN, at);
        if (open < 0) break;
        const close = text.indexOf(HOLE_CLOSE, open);
        const idx = close < 0 ? NaN : Number(text.slice(open + 1, close));
        if (!Number.isInteger(idx) || idx < 0 || idx >= messages.length || order.includes(idx)) {
          fine = false;
          break;
        }
        pieces.push(text.slice(at, open));
        order.push(idx);
        holeStarts.push(open);
        holeLengths.push(close + 1 - open);
        at = close + 1;
      }
      pieces.push(text.slice(at));
      // Every message must be rendered exactly once, and no span boundary may cut a placeholder.
      if (fine && order.length === messages.length) {
        const inside = (p: number) => holeStarts.some((h, k) => p > h && p < h + holeLengths[k]);
        if (!res.rendered.spans.some(([a, b]) => inside(a) || inside(b))) {
          sk = { pieces, order, spans: res.rendered.spans, eosAfter: res.rendered.eosAfter, holeStarts, holeLengths };
        }
      }
    }
    this.skeletons.set(key, sk);
    return sk;
  }

  /** The rendering of a row whose roles have a skeleton, if the template treated it the same way. */
  private fromSkeleton(messages: ChatMessage[], full: string): RenderResult | null {
    const sk = this.skeletonFor(messages);
    if (!sk) return null;
    let assembled = sk.pieces[0];
    for (let k = 0; k < sk.order.length; k++) assembled += messages[sk.order[k]].content + sk.pieces[k + 1];
    if (assembled !== full) return null;
    const shiftAt = (p: number): number => {
      let shift = 0;
      for (let k = 0; k < sk.holeStarts.length && sk.holeStarts[k] < p; k++) shift += messages[sk.order[k]].content.length - sk.holeLengths[k];
      return p + shift;
    };
    const spans = sk.spans.map(([a, b]) => [shiftAt(a), shiftAt(b)] as [number, number]);
    return { ok: true, rendered: { text: full, spans, eosAfter: sk.eosAfter.slice(), addPrefix: this.needsPrefix(full), messages } };
  }

  /** Masks by rendering each assistant turn's prefix: the reference method. */
  private chatByPrefixes(messages: ChatMessage[], full: string | TemplateRenderError): RenderResult {
    const hasSystem = messages.some((m) => m.role === 'system');
    if (full instanceof TemplateRenderError) {
      return {
        ok: false,
        code: 'template-error',
        message: `the chat template failed on this conversation: ${full.message}`,
        hint: hasSystem
          ? 'if the template has no system role (Gemma), turn on "fold system prompt into the first user message" (foldSystemIntoUser; CLI: --fold-system)'
          : 'check that roles alternate user/assistant, as most templates require',
      };
    }

    // Every message must survive rendering: templates that silently drop a message (Mistral
    // v0.3 keeps the system prompt only before the last user turn) would train on something
    // else than the dataset says.
    const found: number[] = new Array(messages.length).fill(-1);
    let cursor = 0;
    for (let i = 0; i < messages.length; i++) {
      const c = messages[i].content.trim();
      if (c === '') continue;
      let at = full.indexOf(c, cursor);
      if (at >= 0) cursor = at + c.length;
      else at = full.indexOf(c);
      if (at < 0) {
        const m = messages[i];
        return {
          ok: false,
          code: 'template-lost-content',
          message: `the chat template drops message ${i} (${m.role}): its text does not appear in the rendered conversation`,
          hint:
            m.role === 'system'
              ? 'turn on "fold system prompt into the first user message" (foldSystemIntoUser; CLI: --fold-system), or choose another template'
              : 'choose another template, or check the roles of this conversation',
        };
      }
      found[i] = at;
    }

    if (this.opts.trainOn === 'all') {
      return { ok: true, rendered: { text: full, spans: [[0, full.length]], eosAfter: [this.needsEos(full, 0, full.length)], addPrefix: this.needsPrefix(full), messages } };
    }

    const targets: number[] = [];
    for (let i = 0; i < messages.length; i++) if (messages[i].role === 'assistant' && messages[i].content.trim() !== '') targets.push(i);
    const chosen = this.opts.assistantTurns === 'last' ? targets.slice(-1) : targets;
    const spans: Array<[number, number]> = [];
    const eosAfter: boolean[] = [];
    let prevEnd = 0;
    for (const i of chosen) {
      const span = this.locateTurn(messages, i, full, found[i], prevEnd);
      if (!span) {
        return {
          ok: false,
          code: 'template-unlocatable-turn',
          message: `cannot tell where assistant message ${i} starts and ends in the rendered conversation`,
          hint: 'the template renders earlier turns differently from later ones; choose another template or train on everything (trainOn: all)',
        };
      }
      // Whitespace the template writes after the end-of-turn token is layout between turns,
      // not part of the answer.
      const closedAt = this.closedEnd(full, span[0], span[1]);
      if (closedAt >= 0) span[1] = closedAt;
      spans.push(span);
      eosAfter.push(closedAt < 0 && this.conv.eosId !== null);
      prevEnd = span[1];
    }
    return { ok: true, rendered: { text: full, spans, eosAfter, addPrefix: this.needsPrefix(full), messages } };
  }

  /**
   * The span of assistant turn i. The rendering of the prefix with the generation prompt and
   * the rendering through turn i are both prefixes of the full rendering for well-behaved
   * templates; for templates that render older turns differently (e.g. stripping reasoning),
   * the answer is found by its content and closed with what the template writes after it.
   */
  private locateTurn(messages: ChatMessage[], i: number, full: string, contentAt: number, prevEnd: number): [number, number] | null {
    const before = i === 0 ? '' : this.renderSafe(messages.slice(0, i), true);
    const through = i === messages.length - 1 ? full : this.renderSafe(messages.slice(0, i + 1), false);
    if (typeof before === 'string' && typeof through === 'string') {
      if (before.length >= prevEnd && through.length > before.length && through.startsWith(before) && full.startsWith(through)) {
        return [before.length, through.length];
      }
    }
    if (typeof through !== 'string') return null;
    const c = messages[i].content.trim();
    let start = full.indexOf(c, Math.max(prevEnd, contentAt));
    if (start < 0) start = contentAt >= prevEnd ? contentAt : -1;
    if (start < 0) return null;
    const inThrough = through.lastIndexOf(c);
    if (inThrough < 0) return null;
    const closing = through.slice(inThrough + c.length);
    let end = start + c.length;
    if (closing && full.startsWith(closing, end)) end += closing.length;
    else if (closing.trim() !== '') return null;
    return [start, end];
  }

  /** True when the trained text does not end with EOS or another special token (end of turn). */
  private needsEos(text: string, start: number, end: number): boolean {
    return this.conv.eosId !== null && this.closedEnd(text, start, end) < 0;
  }

  /** Where [start, end) ends if it ends with EOS or a special token (ignoring trailing whitespace), else -1. */
  private closedEnd(text: string, start: number, end: number): number {
    let e = end;
    while (e > start && isSpace(text.charCodeAt(e - 1))) e--;
    for (const s of this.closers) {
      if (e - start >= s.length && text.startsWith(s, e - s.length)) return e;
    }
    return -1;
  }
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 13 || c === 9;
}
