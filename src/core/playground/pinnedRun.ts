// "Run against every new adapter": the whole pinned-prompts pass for one run folder, from its
// run.json and final adapter to RUN_DIR/playground/pinned-outputs.json, for callers that have
// no playground open (the extension after a run completes, scripts).
import * as path from 'node:path';
import type { CancellationToken } from '../runtime/process';
import { readRunJson, summarizeRun } from '../runs/runs';
import { readPinnedPrompts, runPinnedPrompts, type PinnedOutput } from './pinned';
import { PlaygroundError, preparePlayground, type PrepareOptions, type PreparedModels } from './prepare';
import { DEFAULT_SETTINGS, PlaygroundSession, type GenerationSettings } from './session';

export interface PinnedRunOptions {
  runDir: string;
  workspaceDir: string;
  runtimePath: string;
  settings?: GenerationSettings;
  token?: CancellationToken;
  onProgress?: (message: string) => void;
  onLog?: (line: string) => void;
  /** Runs the preparation; preparePlayground by default. The extension passes its worker-thread
   *  runner so the ONNX writing stays off the extension host's thread. */
  prepare?: (opts: PrepareOptions) => Promise<PreparedModels>;
}

/** Null when the workspace has no pinned prompts; otherwise the file written and its outputs. */
export async function runPinnedForRun(opts: PinnedRunOptions): Promise<{ file: string; outputs: PinnedOutput[] } | null> {
  const prompts = readPinnedPrompts(opts.workspaceDir);
  if (!prompts.length) return null;
  const runDir = path.resolve(opts.runDir);
  const runJson = readRunJson(runDir);
  const model = typeof runJson?.model === 'string' ? runJson.model : null;
  if (!model) throw new PlaygroundError(`${path.join(runDir, 'run.json')}: field "model" is missing`, 'the run folder is incomplete');
  const modelDir = path.resolve(runDir, model);
  const adapterDir = summarizeRun(runDir).adapter ?? path.join(runDir, 'adapter');
  const prepared = await (opts.prepare ?? preparePlayground)({
    modelDir, adapterDir, cacheDir: path.join(runDir, 'playground'), runtimePath: opts.runtimePath, token: opts.token,
    onProgress: (p) => opts.onProgress?.(p.message), onLog: opts.onLog,
  });
  if (opts.token?.isCancellationRequested) throw new PlaygroundError('cancelled');
  const session = await PlaygroundSession.open({ modelDir, baseOnnx: prepared.baseOnnx, adapterOnnx: prepared.adapterOnnx });
  try {
    return await runPinnedPrompts({
      session, prompts, runDir, adapterDir, settings: opts.settings ?? DEFAULT_SETTINGS,
      cancelled: () => opts.token?.isCancellationRequested ?? false,
      onPrompt: (i) => opts.onProgress?.(`Pinned prompt ${i + 1}/${prompts.length}`),
    });
  } finally {
    await session.close();
  }
}
