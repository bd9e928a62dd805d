// prepareDataset: a dataset file (plus an optional eval file) and a model folder in, token
// shards out: OUT/train.bin, OUT/eval.bin (when there is eval data) and OUT/summary.json.
// The CLI and the extension both call this; nothing here knows about either.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TemplateChoice } from '../tokenize/templates';
import { Diagnostic } from './diagnostics';
import { DataEngine, EngineOptions, PrepareSummary } from './engine';
import { writeJsonAtomic } from '../util/atomicWrite';

export type { PrepareSummary, SplitSummary, LengthHistogram, FileSummary } from './engine';

export interface PrepareOptions {
  data: string;
  evalData?: string;
  modelDir: string;
  outDir: string;
  seqLen: number;
  format?: 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text';
  template?: TemplateChoice;
  trainOn?: 'completion' | 'all';
  assistantTurns?: 'all' | 'last';
  overLength?: 'truncate' | 'drop';
  /** Fraction of the rows held out for eval when there is no evalData file (default 0). */
  evalSplit?: number;
  seed?: number;
  foldSystemIntoUser?: boolean;
  onProgress?: (p: { rows: number; bytes: number; totalBytes: number }) => void;
  signal?: AbortSignal;
}

export interface PrepareResult {
  trainPath: string;
  evalPath: string | null;
  summaryPath: string;
  summary: PrepareSummary;
  diagnostics: Diagnostic[];
}

export const PREPARE_DEFAULTS = {
  format: 'auto',
  template: 'model',
  trainOn: 'completion',
  assistantTurns: 'all',
  overLength: 'truncate',
  evalSplit: 0,
  seed: 42,
  foldSystemIntoUser: false,
} as const;

export function engineOptions(o: Omit<PrepareOptions, 'outDir' | 'modelDir' | 'seqLen'> & { modelDir: string | null; seqLen: number | null }, outDir: string | null): EngineOptions {
  return {
    data: path.resolve(o.data),
    evalData: o.evalData ? path.resolve(o.evalData) : null,
    modelDir: o.modelDir ? path.resolve(o.modelDir) : null,
    seqLen: o.seqLen,
    format: o.format ?? PREPARE_DEFAULTS.format,
    template: o.template ?? PREPARE_DEFAULTS.template,
    trainOn: o.trainOn ?? PREPARE_DEFAULTS.trainOn,
    assistantTurns: o.assistantTurns ?? PREPARE_DEFAULTS.assistantTurns,
    overLength: o.overLength ?? PREPARE_DEFAULTS.overLength,
    evalSplit: o.evalSplit ?? PREPARE_DEFAULTS.evalSplit,
    seed: o.seed ?? PREPARE_DEFAULTS.seed,
    foldSystemIntoUser: o.foldSystemIntoUser ?? PREPARE_DEFAULTS.foldSystemIntoUser,
    outDir,
    onProgress: o.onProgress,
    signal: o.signal,
  };
}

export async function prepareDataset(opts: PrepareOptions): Promise<PrepareResult> {
  const outDir = path.resolve(opts.outDir);
  const engine = new DataEngine(engineOptions(opts, outDir));
  const result = await engine.run();
  const summaryPath = path.join(outDir, 'summary.json');
  writeJsonAtomic(summaryPath, result.summary);
  if (!result.evalPath) fs.rmSync(path.join(outDir, 'eval.bin'), { force: true });
  return { trainPath: result.trainPath!, evalPath: result.evalPath, summaryPath, summary: result.summary, diagnostics: result.diagnostics };
}

