// previewRows: the first rows of a dataset as the model will see them, cut into runs of
// trained and masked tokens, for the extension's preview (and the CLI's `prepare --preview`).
import * as path from 'node:path';
import type { TemplateChoice } from '../tokenize/templates';
import { loadModelTokenizer, resolveTemplate } from '../tokenize/modelTokenizer';
import { ExampleRenderer } from '../tokenize/render';
import { buildTokens, utf16Index } from '../tokenize/encode';
import { Diagnostic, DiagnosticSink, diagnostic } from './diagnostics';
import { ExampleReader } from './pipeline';

export interface PreviewOptions {
  data: string;
  modelDir: string;
  /** Rows to show (default 5). */
  n?: number;
  format?: 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text';
  template?: TemplateChoice;
  trainOn?: 'completion' | 'all';
  assistantTurns?: 'all' | 'last';
  foldSystemIntoUser?: boolean;
  /** When given, rows longer than this are marked where truncation would cut them. */
  seqLen?: number;
  signal?: AbortSignal;
}

export interface PreviewSegment {
  text: string;
  trained: boolean;
  tokenIds: number[];
}

export interface PreviewRow {
  row: number;
  file: string;
  line: number;
  segments: PreviewSegment[];
  tokens: number;
  trainedTokens: number;
  /** Token index where seq_len cuts the row, when it is longer. */
  truncatedAt?: number;
  /** Why the row cannot be used (template error, lost content); segments are empty then. */
  problem?: Diagnostic;
}

export async function previewRows(opts: PreviewOptions): Promise<PreviewRow[]> {
  const n = opts.n ?? 5;
  const data = path.resolve(opts.data);
  const tok = await loadModelTokenizer(opts.modelDir);
  const { template } = resolveTemplate(tok, opts.template ?? 'model');
  const renderer = new ExampleRenderer(
    template,
    { bosToken: tok.bosToken, eosToken: tok.eosToken, eosId: tok.eosId, hasDefaultPrefix: tok.defaultPrefixIds.length > 0, specialTokens: tok.specialTokens },
    { trainOn: opts.trainOn ?? 'completion', assistantTurns: opts.assistantTurns ?? 'all', foldSystemIntoUser: opts.foldSystemIntoUser ?? false },
  );
  const reader = new ExampleReader(data, { format: opts.format ?? 'auto', sink: new DiagnosticSink(), signal: opts.signal });
  const out: PreviewRow[] = [];
  for await (const batch of reader.batches()) {
    for (const row of batch.rows) {
      if (out.length >= n) break;
      const base = { row: row.row, file: row.file, line: row.line };
      const res = renderer.render(row.example);
      if (!res.ok) {
        out.push({ ...base, segments: [], tokens: 0, trainedTokens: 0, problem: diagnostic(res.code, { ...base, message: res.message, hint: res.hint }) });
        continue;
      }
      const r = res.rendered;
      const enc = await tok.tokenizer.encode(r.text, null, { addSpecialTokens: false });
      const doc = buildTokens(enc, r, { prefixIds: tok.defaultPrefixIds, eosId: tok.eosId }, true);
      const offsets = enc.getOffsets();
      const sources = doc.sources!;
      const segments: PreviewSegment[] = [];
      // Start (UTF-16) of the text of the first token at or after index i that has text.
      const textStart = (i: number): number => {
        for (let k = i; k < doc.ids.length; k++) if (sources[k] >= 0) return utf16Index(r.text, offsets[sources[k]][0]);
        return r.text.length;
      };
      let i = 0;
      let trained = 0;
      while (i < doc.ids.length) {
        const m = doc.mask[i];
        let j = i;
        while (j < doc.ids.length && doc.mask[j] === m) j++;
        let text = '';
        let k = i;
        while (k < j) {
          if (sources[k] < 0) {
            text += tok.tokenizer.idToToken(doc.ids[k]) ?? '';
            k++;
            continue;
          }
          let e = k;
          while (e < j && sources[e] >= 0) e++;
          text += r.text.slice(textStart(k), e < doc.ids.length ? textStart(e) : r.text.length);
          k = e;
        }
        if (m === 1) trained += i === 0 ? j - 1 : j - i;
        segments.push({ text, trained: m === 1, tokenIds: Array.from(doc.ids.subarray(i, j)) });
        i = j;
      }
      const p: PreviewRow = { ...base, segments, tokens: doc.ids.length, trainedTokens: trained };
      if (opts.seqLen !== undefined && doc.ids.length > opts.seqLen) p.truncatedAt = opts.seqLen;
      out.push(p);
    }
    if (out.length >= n) break;
  }
  return out;
}
