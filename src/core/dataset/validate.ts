// validateDataset: every check of data preparation without writing shards. Without a model
// folder it checks reading, formats, duplicates and the eval overlap; with one it also
// renders and tokenizes every row (template failures, lost content, over-length rows).
import type { TemplateChoice } from '../tokenize/templates';
import { DatasetError, Diagnostic, diagnostic } from './diagnostics';
import { DataEngine, PrepareSummary } from './engine';
import { engineOptions } from './prepare';

export interface ValidateOptions {
  format?: 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text';
  modelDir?: string;
  seqLen?: number;
  evalData?: string;
  evalSplit?: number;
  seed?: number;
  template?: TemplateChoice;
  trainOn?: 'completion' | 'all';
  assistantTurns?: 'all' | 'last';
  overLength?: 'truncate' | 'drop';
  foldSystemIntoUser?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: { rows: number; bytes: number; totalBytes: number }) => void;
}

export interface ValidateResult {
  summary: PrepareSummary | null;
  diagnostics: Diagnostic[];
}

/**
 * Never throws for problems in the data: a file that cannot be used at all comes back as
 * its diagnostics with a null summary (the Problems panel shows them the same way).
 */
export async function validateDataset(path: string, opts: ValidateOptions = {}): Promise<ValidateResult> {
  const engine = new DataEngine(engineOptions({ ...opts, data: path, modelDir: opts.modelDir ?? null, seqLen: opts.seqLen ?? null }, null));
  try {
    const r = await engine.run();
    return { summary: r.summary, diagnostics: r.diagnostics };
  } catch (err) {
    if (err instanceof DatasetError) {
      if (err.diagnostics.length) return { summary: null, diagnostics: err.diagnostics };
      const diagnostics = engine.sink.list();
      diagnostics.push(diagnostic('unusable-dataset', { message: err.reason, file: path, hint: err.hint }));
      return { summary: null, diagnostics };
    }
    throw err;
  }
}
