// Tokenizes rendered examples and derives each token's loss mask from the trained character
// spans, through the tokenizer's own offsets. Batches go through encodeBatch, which runs in
// the tokenizer's native thread pool while JavaScript renders the next batch.
import type { Encoding, Tokenizer } from 'tokenizers';
import type { RenderedExample } from './render';

export interface TokenizedExample {
  ids: Uint32Array;
  mask: Uint8Array;
  /** With `withSources`: per token, the index of the encoding's token it came from, or -1
   *  for tokens added around the text (BOS prefix, inserted EOS). */
  sources?: Int32Array;
}

export interface EncodeConventions {
  prefixIds: readonly number[];
  eosId: number | null;
}

function hasSurrogates(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) return true;
  }
  return false;
}

/** UTF-16 index -> code point index (the tokenizer's offsets count code points). */
export function codePointIndex(s: string, utf16: number): number {
  return toCodePointIndex(s, utf16);
}

/** Code point index -> UTF-16 index. */
export function utf16Index(s: string, codePoint: number): number {
  let cp = 0;
  let i = 0;
  while (i < s.length && cp < codePoint) {
    const c = s.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < s.length ? 2 : 1;
    cp++;
  }
  return i;
}

function toCodePointIndex(s: string, utf16: number): number {
  let lows = 0;
  for (let i = 0; i < utf16; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xdc00 && c <= 0xdfff) lows++;
  }
  return utf16 - lows;
}

/**
 * Token index ranges [first, end) of the spans: a token is trained when it starts inside a
 * span. Found with a few boundary lookups per span instead of materialising every token's
 * offsets (getOffsets builds one JS array per token and costs more than the tokenizing).
 * Null when a boundary character maps to no token (a normalizer removed it); the caller then
 * falls back to the offsets.
 */
export function spanTokenRanges(enc: Encoding, n: number, spans: Array<[number, number]>): Array<[number, number]> | null {
  const out: Array<[number, number]> = [];
  const startOf = (t: number): number => enc.tokenToChars(t)![0];
  for (const [a, b] of spans) {
    if (b <= a) {
      out.push([out.length ? out[out.length - 1][1] : 0, out.length ? out[out.length - 1][1] : 0]);
      continue;
    }
    let first = enc.charToToken(a);
    let last = enc.charToToken(b - 1);
    if (first === null || first === undefined || last === null || last === undefined) return null;
    while (first < n && startOf(first) < a) first++;
    let end = last + 1;
    while (end < n && startOf(end) < b) end++;
    if (first > end) first = end;
    out.push([first, end]);
  }
  return out;
}

export function spanTokenRangesFromOffsets(enc: Encoding, n: number, spans: Array<[number, number]>): Array<[number, number]> {
  const offsets = enc.getOffsets();
  const out: Array<[number, number]> = [];
  let t = 0;
  for (const [a, b] of spans) {
    while (t < n && offsets[t][0] < a) t++;
    const first = t;
    while (t < n && offsets[t][0] < b) t++;
    out.push([first, t]);
  }
  return out;
}

export function buildTokens(enc: Encoding, r: RenderedExample, conv: EncodeConventions, withSources = false): TokenizedExample {
  const ids = enc.getIds();
  const n = ids.length;
  const prefix = r.addPrefix ? conv.prefixIds : [];
  let inserts = 0;
  if (conv.eosId !== null) for (const e of r.eosAfter) if (e) inserts++;
  const total = prefix.length + n + inserts;
  const outIds = new Uint32Array(total);
  const outMask = new Uint8Array(total);
  const sources = withSources ? new Int32Array(total).fill(-1) : null;
  let k = 0;
  for (const id of prefix) outIds[k++] = id;

  let spans = r.spans;
  if (hasSurrogates(r.text)) spans = spans.map(([a, b]) => [toCodePointIndex(r.text, a), toCodePointIndex(r.text, b)] as [number, number]);
  const ranges = spanTokenRanges(enc, n, spans) ?? spanTokenRangesFromOffsets(enc, n, spans);

  let t = 0;
  for (let si = 0; si < ranges.length; si++) {
    const [first, end] = ranges[si];
    for (; t < end; t++) {
      if (sources) sources[k] = t;
      outIds[k] = ids[t];
      outMask[k++] = t >= first ? 1 : 0;
    }
    // The template left this answer open: EOS closes it, and is trained.
    if (r.eosAfter[si] && conv.eosId !== null) {
      outIds[k] = conv.eosId;
      outMask[k++] = 1;
    }
  }
  for (; t < n; t++) {
    if (sources) sources[k] = t;
    outIds[k] = ids[t];
    outMask[k++] = 0;
  }
  const out: TokenizedExample = { ids: outIds, mask: outMask };
  if (sources) out.sources = sources;
  return out;
}

export async function encodeRendered(tokenizer: Tokenizer, rendered: RenderedExample[], conv: EncodeConventions): Promise<TokenizedExample[]> {
  if (rendered.length === 0) return [];
  const encs = await tokenizer.encodeBatch(
    rendered.map((r) => r.text),
    { addSpecialTokens: false },
  );
  return encs.map((e, i) => buildTokens(e, rendered[i], conv));
}
