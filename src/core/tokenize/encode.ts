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

export function buildTokens(enc: Encoding, r: RenderedExample, conv: EncodeConventions, withSources = false): TokenizedExample {
  const ids = enc.getIds();
  const offsets = enc.getOffsets();
  const n = ids.length;
  const prefix = r.addPrefix ? conv.prefixIds : [];
  let inserts = 0;
  for (const e of r.eosAfter) if (e) inserts++;
  const total = prefix.length + n + (conv.eosId === null ? 0 : inserts);
  const outIds = new Uint32Array(total);
  const outMask = new Uint8Array(total);
  const sources = withSources ? new Int32Array(total).fill(-1) : null;
  let k = 0;
  for (const id of prefix) outIds[k++] = id;

  let spans = r.spans;
  if (hasSurrogates(r.text)) spans = spans.map(([a, b]) => [toCodePointIndex(r.text, a), toCodePointIndex(r.text, b)] as [number, number]);

  let si = 0;
  for (let t = 0; t < n; t++) {
    const start = offsets[t][0];
    // Close every span that ends at or before this token, inserting EOS where the template
    // left the answer open.
    while (si < spans.length && start >= spans[si][1]) {
      if (r.eosAfter[si] && conv.eosId !== null) {
        outIds[k] = conv.eosId;
        outMask[k++] = 1;
      }
      si++;
    }
    if (sources) sources[k] = t;
    outIds[k] = ids[t];
    outMask[k++] = si < spans.length && start >= spans[si][0] ? 1 : 0;
  }
  while (si < spans.length) {
    if (r.eosAfter[si] && conv.eosId !== null) {
      outIds[k] = conv.eosId;
      outMask[k++] = 1;
    }
    si++;
  }
  const out: TokenizedExample = { ids: k === total ? outIds : outIds.subarray(0, k), mask: k === total ? outMask : outMask.subarray(0, k) };
  if (sources) out.sources = sources.subarray(0, k);
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
