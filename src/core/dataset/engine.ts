// The data preparation engine shared by prepare (writes shards), validate (checks only) and
// the summary: rows are hashed for duplicates and the eval split, rendered through the chat
// template, tokenized in batches, length-checked and handed to the shard writers.
import * as path from 'node:path';
import { ShardWriter } from '../tokenize/shard';
import { ModelTokenizer, loadModelTokenizer, resolveTemplate } from '../tokenize/modelTokenizer';
import { AssistantTurns, ExampleRenderer, RenderedExample, TrainOn } from '../tokenize/render';
import { TokenizedExample, encodeRendered } from '../tokenize/encode';
import { BUILTIN_TEMPLATE_NAMES, ChatTemplateInfo, TemplateChoice } from '../tokenize/templates';
import { DIAGNOSTIC_CODES, DatasetError, Diagnostic, DiagnosticSink } from './diagnostics';
import { DataFormat, Example, FormatOption } from './formats';
import { ExampleReader, ExampleRow, ReadStats, countSkip } from './pipeline';
import { FileKind } from './readers';
import { HashIndex, HashList, hash53 } from './hashIndex';
import { abortError, fileSize } from './lines';

export type OverLength = 'truncate' | 'drop';
export type Side = 'train' | 'eval';

export interface EngineOptions {
  data: string;
  evalData: string | null;
  modelDir: string | null;
  seqLen: number | null;
  format: FormatOption;
  template: TemplateChoice;
  trainOn: TrainOn;
  assistantTurns: AssistantTurns;
  overLength: OverLength;
  evalSplit: number;
  seed: number;
  foldSystemIntoUser: boolean;
  /** Where to write train.bin / eval.bin; null checks without writing. */
  outDir: string | null;
  onProgress?: (p: { rows: number; bytes: number; totalBytes: number }) => void;
  signal?: AbortSignal;
  /** Rows per tokenizer batch. */
  batchSize?: number;
}

export interface LengthHistogram {
  /** Bucket i counts documents with upperBounds[i-1] < length <= upperBounds[i]. */
  upperBounds: number[];
  counts: number[];
  /** Documents longer than seq_len before truncation (not in `counts`). */
  overSeqLen: number;
}

export interface SplitSummary {
  documents: number;
  tokens: number;
  /** Tokens with loss mask 1 that are not the first of their document: the loss terms. */
  trainedTokens: number;
  maxLength: number;
  meanLength: number;
  /** Lengths before truncation, so that seq_len can be chosen from it. */
  lengthHistogram: LengthHistogram;
}

export interface FileSummary {
  file: string;
  role: Side;
  kind: FileKind | null;
  format: DataFormat | null;
  rowsRead: number;
  rowsUsable: number;
  rowsSkipped: Record<string, number>;
}

export interface PrepareSummary {
  version: 1;
  createdAt: string;
  modelDir: string | null;
  vocabSize: number | null;
  template: (ChatTemplateInfo & { fallback: boolean }) | null;
  bos: { token: string | null; addedByTokenizer: boolean };
  eos: { token: string | null; appendedToAnswers: number };
  /** The settings the data was prepared with, as given to the engine. */
  options: Pick<EngineOptions, 'seqLen' | 'format' | 'template' | 'trainOn' | 'assistantTurns' | 'overLength' | 'evalSplit' | 'seed' | 'foldSystemIntoUser'>;
  files: FileSummary[];
  rows: {
    read: number;
    usable: number;
    /** Rows that made it into no shard, by reason (diagnostic code). */
    skipped: number;
    skippedByReason: Record<string, number>;
    /** Exact duplicates kept within a split (each also a warning). */
    duplicates: number;
    truncated: number;
    droppedOverLength: number;
    train: number;
    eval: number;
  };
  train: SplitSummary;
  eval: SplitSummary | null;
  diagnostics: { errors: number; warnings: number; infos: number; byCode: Record<string, number> };
}

export interface EngineResult {
  summary: PrepareSummary;
  diagnostics: Diagnostic[];
  trainPath: string | null;
  evalPath: string | null;
}

class SplitAccumulator {
  documents = 0;
  tokens = 0;
  targets = 0;
  maxLength = 0;
  readonly upperBounds: number[];
  readonly counts: number[];
  overSeqLen = 0;

  constructor(
    readonly writer: ShardWriter | null,
    seqLen: number | null,
  ) {
    const limit = seqLen ?? 1 << 20;
    this.upperBounds = [];
    for (let b = 16; b < limit; b *= 2) this.upperBounds.push(b);
    this.upperBounds.push(limit);
    this.counts = new Array(this.upperBounds.length).fill(0);
  }

  record(originalLength: number, seqLen: number | null): void {
    if (seqLen !== null && originalLength > seqLen) {
      this.overSeqLen++;
      return;
    }
    let i = 0;
    while (i < this.upperBounds.length - 1 && originalLength > this.upperBounds[i]) i++;
    this.counts[i]++;
  }

  add(doc: TokenizedExample): void {
    this.writer?.addDocument(doc.ids, doc.mask);
    this.documents++;
    this.tokens += doc.ids.length;
    for (let i = 1; i < doc.mask.length; i++) this.targets += doc.mask[i];
    if (doc.ids.length > this.maxLength) this.maxLength = doc.ids.length;
  }

  summary(): SplitSummary {
    return {
      documents: this.documents,
      tokens: this.tokens,
      trainedTokens: this.targets,
      maxLength: this.maxLength,
      meanLength: this.documents ? Math.round((this.tokens / this.documents) * 10) / 10 : 0,
      lengthHistogram: { upperBounds: this.upperBounds, counts: this.counts, overSeqLen: this.overSeqLen },
    };
  }
}

interface PendingRow {
  row: ExampleRow;
  side: Side;
  rendered: RenderedExample;
}

const FORMAT_OPTIONS: readonly FormatOption[] = ['auto', 'messages', 'alpaca', 'prompt_completion', 'text'];

/** Checks the user-facing options; a bad one is a DatasetError naming the option. */
export function checkOptions(o: EngineOptions): void {
  const bad = (field: string, msg: string, hint?: string): never => {
    throw new DatasetError(`invalid option ${field}: ${msg}`, [], hint);
  };
  if (o.seqLen !== null && (!Number.isInteger(o.seqLen) || o.seqLen < 2 || o.seqLen > 1 << 24)) bad('seqLen', `${o.seqLen} is not an integer between 2 and ${1 << 24}`);
  if (!FORMAT_OPTIONS.includes(o.format)) bad('format', JSON.stringify(o.format), `use one of ${FORMAT_OPTIONS.join(', ')}`);
  if (o.template !== 'model' && !BUILTIN_TEMPLATE_NAMES.includes(o.template)) bad('template', JSON.stringify(o.template), `use model or one of ${BUILTIN_TEMPLATE_NAMES.join(', ')}`);
  if (o.trainOn !== 'completion' && o.trainOn !== 'all') bad('trainOn', JSON.stringify(o.trainOn), 'use completion or all');
  if (o.assistantTurns !== 'all' && o.assistantTurns !== 'last') bad('assistantTurns', JSON.stringify(o.assistantTurns), 'use all or last');
  if (o.overLength !== 'truncate' && o.overLength !== 'drop') bad('overLength', JSON.stringify(o.overLength), 'use truncate or drop');
  if (typeof o.evalSplit !== 'number' || !(o.evalSplit >= 0 && o.evalSplit < 1)) bad('evalSplit', `${o.evalSplit} is not a fraction in [0, 1)`, 'e.g. 0.05 for 5% of the rows');
  if (!Number.isInteger(o.seed)) bad('seed', `${o.seed} is not an integer`);
}

export class DataEngine {
  readonly sink = new DiagnosticSink();
  private tok: ModelTokenizer | null = null;
  private renderer: ExampleRenderer | null = null;
  private templateInfo: (ChatTemplateInfo & { fallback: boolean }) | null = null;
  private readonly seen: Record<Side, HashIndex> = { train: new HashIndex(), eval: new HashIndex() };
  private readonly splits: Record<Side, SplitAccumulator>;
  private readonly skippedLater: Record<Side, ReadStats['skipped']> = { train: {}, eval: {} };
  private evalThreshold: number | null = null;
  /** Rows given to each side, before rendering (what validation without a model reports). */
  private readonly assigned: Record<Side, number> = { train: 0, eval: 0 };
  private duplicates = 0;
  private truncated = 0;
  private droppedOverLength = 0;
  private eosAppended = 0;
  private rowsDone = 0;
  private bytesDone = 0;
  private totalBytes = 0;
  private inflight: Promise<void> = Promise.resolve();
  private readonly trainPath: string | null;
  private readonly evalPath: string | null;
  private readonly batchSize: number;

  constructor(private readonly o: EngineOptions) {
    this.trainPath = o.outDir ? path.join(o.outDir, 'train.bin') : null;
    this.evalPath = o.outDir ? path.join(o.outDir, 'eval.bin') : null;
    this.batchSize = o.batchSize ?? 512;
    this.splits = { train: new SplitAccumulator(null, o.seqLen), eval: new SplitAccumulator(null, o.seqLen) };
  }

  async run(): Promise<EngineResult> {
    const o = this.o;
    checkOptions(o);
    if (o.modelDir) {
      this.tok = await loadModelTokenizer(o.modelDir);
      if (o.outDir) {
        this.splits.train = new SplitAccumulator(new ShardWriter(this.trainPath!, this.tok.vocabSize), o.seqLen);
        this.splits.eval = new SplitAccumulator(new ShardWriter(this.evalPath!, this.tok.vocabSize), o.seqLen);
      }
    }
    const useSplit = !o.evalData && o.evalSplit > 0;
    this.totalBytes = (await fileSizeOrZero(o.data)) * (useSplit ? 2 : 1) + (o.evalData ? await fileSizeOrZero(o.evalData) : 0);
    const files: FileSummary[] = [];
    try {
      if (useSplit) await this.chooseEvalRows();
      const train = new ExampleReader(o.data, { format: o.format, sink: this.sink, signal: o.signal });
      await this.consume(train, false);
      files.push(this.fileSummary(train, 'train'));
      if (o.evalData) {
        const ev = new ExampleReader(o.evalData, { format: o.format, sink: this.sink, signal: o.signal });
        await this.consume(ev, true);
        files.push(this.fileSummary(ev, 'eval'));
      }
      if (this.splits.train.documents === 0 && (this.tok || files[0].rowsUsable === 0)) {
        const list = this.sortedDiagnostics();
        const reasons = Object.entries(files[0].rowsSkipped).map(([k, n]) => `${n} ${k}`).join(', ');
        throw new DatasetError(
          `no usable training rows in ${o.data}: ${files[0].rowsRead} read${reasons ? `, skipped: ${reasons}` : ''}`,
          list,
          list.length ? 'fix the problems listed (file:line) and run again' : 'the file has no rows',
        );
      }
      if (useSplit && (this.tok ? this.splits.eval.documents : this.assigned.eval) === 0) {
        this.sink.emit('eval-too-small', {
          message: `the eval split of ${o.evalSplit} left no eval rows (${this.splits.train.documents} training rows)`,
          file: o.data,
          hint: 'use a larger evalSplit, more rows, or a separate eval file',
        });
      }
      const trainWriter = this.splits.train.writer;
      const evalWriter = this.splits.eval.writer;
      if (trainWriter) await trainWriter.finish();
      let evalPath: string | null = null;
      if (evalWriter) {
        if (this.splits.eval.documents > 0) {
          await evalWriter.finish();
          evalPath = this.evalPath;
        } else evalWriter.abort();
      }
      if (this.eosAppended > 0) {
        this.sink.emit('eos-appended', {
          message: `${this.eosAppended} answer${this.eosAppended === 1 ? '' : 's'} did not end with an end-of-turn token; ${this.tok?.eosToken ?? 'EOS'} was appended so the model learns to stop`,
          file: o.data,
        });
      }
      return { summary: this.summary(files), diagnostics: this.sortedDiagnostics(), trainPath: trainWriter ? this.trainPath : null, evalPath };
    } catch (err) {
      this.splits.train.writer?.abort();
      this.splits.eval.writer?.abort();
      throw err;
    }
  }

  /** In file order (data, eval data, then model files), by line: how an editor lists them. */
  private sortedDiagnostics(): Diagnostic[] {
    const rank = (d: Diagnostic) => (d.file === this.o.data ? 0 : d.file === this.o.evalData ? 1 : 2);
    return this.sink
      .list()
      .map((d, i) => ({ d, i }))
      .sort((a, b) => rank(a.d) - rank(b.d) || (a.d.line ?? Infinity) - (b.d.line ?? Infinity) || a.i - b.i)
      .map((x) => x.d);
  }

  private fileSummary(r: ExampleReader, role: Side): FileSummary {
    const skipped = { ...r.stats.skipped };
    for (const [k, n] of Object.entries(this.skippedLater[role])) skipped[k] = (skipped[k] ?? 0) + n;
    if (role === 'train' && this.o.evalData === null) {
      for (const [k, n] of Object.entries(this.skippedLater.eval)) skipped[k] = (skipped[k] ?? 0) + n;
    }
    return { file: r.file, role, kind: r.fileKind(), format: r.resolvedFormat(), rowsRead: r.stats.read, rowsUsable: r.stats.usable, rowsSkipped: skipped };
  }

  /** Same example text -> same hash, so exact duplicates always land on the same side. */
  private hash(ex: Example): number {
    return hash53(JSON.stringify(ex), this.o.seed);
  }

  /**
   * First pass for a fractional split: the eval rows are the ones whose seeded hashes are the
   * smallest, so the choice is deterministic for a seed, exact in size, and independent of
   * row order.
   */
  private async chooseEvalRows(): Promise<void> {
    const reader = new ExampleReader(this.o.data, { format: this.o.format, sink: null, signal: this.o.signal });
    const all = new HashList();
    let lastBytes = 0;
    for await (const b of reader.batches()) {
      for (const r of b.rows) all.push(this.hash(r.example));
      this.bytesDone += b.bytesRead - lastBytes;
      lastBytes = b.bytesRead;
      this.progress();
    }
    const hashes = all.sortedUnique();
    const unique = hashes.length;
    let k = Math.round(this.o.evalSplit * unique);
    if (k === 0 && unique >= 2) k = 1;
    if (k >= unique) k = unique - 1;
    this.evalThreshold = k > 0 ? hashes[k - 1] : null;
  }

  private progress(): void {
    this.o.onProgress?.({ rows: this.rowsDone, bytes: this.bytesDone, totalBytes: this.totalBytes });
  }

  private async consume(reader: ExampleReader, isEvalFile: boolean): Promise<void> {
    let lastBytes = 0;
    let pending: PendingRow[] = [];
    for await (const b of reader.batches()) {
      if (this.o.signal?.aborted) throw abortError(this.o.signal);
      for (const row of b.rows) {
        const p = this.admit(row, isEvalFile);
        if (p) pending.push(p);
        if (pending.length >= this.batchSize) {
          await this.flush(pending);
          pending = [];
        }
      }
      this.bytesDone += b.bytesRead - lastBytes;
      lastBytes = b.bytesRead;
      this.progress();
    }
    await this.flush(pending);
    await this.inflight;
  }

  /** Decides the side of a row, checks duplicates, renders it; null when the row is left out. */
  private admit(row: ExampleRow, isEvalFile: boolean): PendingRow | null {
    const h = this.hash(row.example);
    const where = { file: row.file, line: row.line, row: row.row };
    let side: Side;
    if (isEvalFile) {
      const inTrain = this.seen.train.get(h);
      if (inTrain !== undefined) {
        this.sink.emit('train-eval-overlap', {
          ...where,
          message: `this eval row is identical to training row ${inTrain} of ${this.o.data}; it is left out of the eval set`,
          hint: 'an eval row that was trained on measures memorisation, not generalisation',
        });
        countSkip({ read: 0, usable: 0, skipped: this.skippedLater.eval }, 'train-eval-overlap');
        return null;
      }
      side = 'eval';
    } else side = this.evalThreshold !== null && h <= this.evalThreshold ? 'eval' : 'train';
    this.assigned[side]++;
    const first = this.seen[side].add(h, row.row);
    if (first !== row.row) {
      this.duplicates++;
      this.sink.emit('duplicate-row', { ...where, message: `exact duplicate of row ${first}`, hint: 'duplicates weigh an example twice; remove them unless that is intended' });
    }
    if (!this.tok) return null;
    const renderer = this.getRenderer();
    const res = renderer.render(row.example);
    if (!res.ok) {
      this.sink.emit(res.code, { ...where, message: res.message, hint: res.hint });
      this.skip(side, res.code);
      return null;
    }
    return { row, side, rendered: res.rendered };
  }

  private skip(side: Side, code: string): void {
    this.skippedLater[side][code] = (this.skippedLater[side][code] ?? 0) + 1;
  }

  private getRenderer(): ExampleRenderer {
    if (this.renderer) return this.renderer;
    const tok = this.tok!;
    const { template, fallbackFrom } = resolveTemplate(tok, this.o.template);
    this.templateInfo = { ...template.info, fallback: fallbackFrom !== undefined };
    if (fallbackFrom) {
      this.sink.emit('fallback-template', {
        message: `the model has no chat template (tokenizer_config.json chat_template); conversations are rendered with the built-in "${template.info.source}" template`,
        file: path.join(tok.modelDir, 'tokenizer_config.json'),
        hint: 'pick another built-in template (llama3, chatml, mistral, gemma, alpaca) if the model was trained with one',
      });
    }
    this.renderer = new ExampleRenderer(
      template,
      { bosToken: tok.bosToken, eosToken: tok.eosToken, eosId: tok.eosId, hasDefaultPrefix: tok.defaultPrefixIds.length > 0, specialTokens: tok.specialTokens },
      { trainOn: this.o.trainOn, assistantTurns: this.o.assistantTurns, foldSystemIntoUser: this.o.foldSystemIntoUser },
    );
    return this.renderer;
  }

  /**
   * Tokenizes a batch while the previous one is written: encodeBatch runs on the tokenizer's
   * native threads, so JavaScript keeps reading and rendering meanwhile.
   */
  private async flush(pending: PendingRow[]): Promise<void> {
    if (pending.length === 0 || !this.tok) return;
    const tok = this.tok;
    const encoded = encodeRendered(tok.tokenizer, pending.map((p) => p.rendered), { prefixIds: tok.defaultPrefixIds, eosId: tok.eosId });
    const previous = this.inflight;
    this.inflight = (async () => {
      const docs = await encoded;
      await previous;
      for (let i = 0; i < docs.length; i++) this.place(pending[i], docs[i]);
      this.rowsDone += docs.length;
    })();
    // Marks the rejection as handled until the next flush or the end of the file awaits it;
    // an error during a read in between must not become an unhandled rejection.
    this.inflight.catch(() => undefined);
    // Keep at most one batch waiting: bounded memory, and errors surface promptly.
    await previous;
  }

  private place(p: PendingRow, doc: TokenizedExample): void {
    const tok = this.tok!;
    const { row, side } = p;
    for (const e of p.rendered.eosAfter) if (e) this.eosAppended++;
    for (let i = 0; i < doc.ids.length; i++) {
      if (doc.ids[i] >= tok.vocabSize) {
        throw new DatasetError(
          `${row.file}:${row.line}: token id ${doc.ids[i]} is outside the model's vocabulary (${tok.vocabSize}, config.json vocab_size)`,
          [],
          'tokenizer.json does not belong to this model',
        );
      }
    }
    const split = this.splits[side];
    const seqLen = this.o.seqLen;
    const len = doc.ids.length;
    split.record(len, seqLen);
    let out = doc;
    if (seqLen !== null && len > seqLen) {
      const where = { file: row.file, line: row.line, row: row.row };
      let keptTargets = 0;
      for (let i = 1; i < seqLen; i++) keptTargets += doc.mask[i];
      if (this.o.overLength === 'drop' || keptTargets === 0) {
        this.droppedOverLength++;
        this.skip(side, 'over-length');
        this.sink.emit('over-length', {
          ...where,
          message:
            this.o.overLength === 'drop'
              ? `row is ${len} tokens, longer than seq_len ${seqLen}: dropped`
              : `row is ${len} tokens, longer than seq_len ${seqLen}, and truncating it would leave no trained token: dropped`,
          hint: 'raise seq_len or shorten the row',
        });
        return;
      }
      out = { ids: doc.ids.subarray(0, seqLen), mask: doc.mask.subarray(0, seqLen) };
      this.truncated++;
      this.sink.emit('over-length', {
        ...where,
        message: `row is ${len} tokens, longer than seq_len ${seqLen}: truncated to ${seqLen}`,
        hint: 'raise seq_len, shorten the row, or set overLength to drop',
      });
    }
    split.add(out);
  }

  private summary(files: FileSummary[]): PrepareSummary {
    const o = this.o;
    const tok = this.tok;
    const skippedByReason: Record<string, number> = {};
    let read = 0;
    let usable = 0;
    for (const f of files) {
      read += f.rowsRead;
      usable += f.rowsUsable;
      for (const [k, n] of Object.entries(f.rowsSkipped)) skippedByReason[k] = (skippedByReason[k] ?? 0) + n;
    }
    let skipped = 0;
    for (const n of Object.values(skippedByReason)) skipped += n;
    const byCode = this.sink.counts();
    let errors = 0;
    let warnings = 0;
    let infos = 0;
    for (const [code, n] of Object.entries(byCode)) {
      const sev = (DIAGNOSTIC_CODES as Record<string, string>)[code];
      if (sev === 'error') errors += n;
      else if (sev === 'warning') warnings += n;
      else infos += n;
    }
    const hasEval = this.splits.eval.documents > 0 || (!tok && this.assigned.eval > 0);
    return {
      version: 1,
      createdAt: new Date().toISOString(),
      modelDir: tok ? tok.modelDir : null,
      vocabSize: tok ? tok.vocabSize : null,
      template: this.templateInfo,
      bos: { token: tok?.bosToken ?? null, addedByTokenizer: (tok?.defaultPrefixIds.length ?? 0) > 0 },
      eos: { token: tok?.eosToken ?? null, appendedToAnswers: this.eosAppended },
      options: {
        seqLen: o.seqLen,
        format: o.format,
        template: o.template,
        trainOn: o.trainOn,
        assistantTurns: o.assistantTurns,
        overLength: o.overLength,
        evalSplit: o.evalSplit,
        seed: o.seed,
        foldSystemIntoUser: o.foldSystemIntoUser,
      },
      files,
      rows: {
        read,
        usable,
        skipped,
        skippedByReason,
        duplicates: this.duplicates,
        truncated: this.truncated,
        droppedOverLength: this.droppedOverLength,
        train: tok ? this.splits.train.documents : this.assigned.train,
        eval: tok ? this.splits.eval.documents : this.assigned.eval,
      },
      train: this.splits.train.summary(),
      eval: hasEval ? this.splits.eval.summary() : null,
      diagnostics: { errors, warnings, infos, byCode },
    };
  }

}

async function fileSizeOrZero(file: string): Promise<number> {
  try {
    return await fileSize(file);
  } catch {
    return 0;
  }
}
