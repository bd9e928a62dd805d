// Prepares the two ONNX graphs the playground compares: the base model as it is, and the base
// with the adapter folded in (`lora-runtime merge --dtype f32`, since ONNX export always takes
// a plain folder: the graph has no LoRA branch). Everything is cached in one folder beside the
// run (RUN_DIR/playground/) and rebuilt only when a source file changed, so opening the
// playground a second time starts generating at once.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { exportOnnx } from '../export/onnx';
import { MergeError, mergeAdapter } from '../export/merge';
import { CancellationToken } from '../runtime/process';
import { writeJsonAtomic } from '../util/atomicWrite';

export class PlaygroundError extends Error {
  constructor(readonly detail: string, readonly hint?: string) {
    super(hint ? `${detail}. ${hint}` : detail);
    this.name = 'PlaygroundError';
  }
}

export interface PrepareOptions {
  /** HF model folder the adapter was trained on. */
  modelDir: string;
  /** PEFT adapter folder (adapter_model.safetensors + adapter_config.json). */
  adapterDir: string;
  /** Cache folder, usually RUN_DIR/playground. */
  cacheDir: string;
  /** The lora-runtime binary (found by core/runtime/locate). */
  runtimePath: string;
  /** Stops the merge, and the ONNX writer at its next layer; a cancelled step leaves no partial folder. */
  token?: CancellationToken;
  /** One message as each step starts, then the ONNX writer's layers ("…: Layer 3 of 32"). */
  onProgress?: (p: PrepareProgress) => void;
  /** The runtime's stderr, line by line. */
  onLog?: (line: string) => void;
}

export const PREPARE_PHASES = ['merge', 'export-base', 'export-adapter', 'cached'] as const;
export interface PrepareProgress {
  phase: (typeof PREPARE_PHASES)[number];
  message: string;
}

export interface PreparedModels {
  /** Folder with model.onnx of the base model. */
  baseOnnx: string;
  /** Folder with model.onnx of the merged (base + adapter) model. */
  adapterOnnx: string;
  /** The merged HF folder (kept: it is also a usable export). */
  mergedDir: string;
  /** Which outputs were rebuilt in this call. */
  rebuilt: { merged: boolean; base: boolean; adapter: boolean };
}

/** Bumped when the cached layout or the export changes meaning, to invalidate old caches. */
const CACHE_VERSION = 1;
const STAMP_FILE = 'playground-cache.json';

/** Size and mtime of every file that defines a model or adapter folder's weights and config. */
export function folderStamp(dir: string): Record<string, [number, number]> {
  const out: Record<string, [number, number]> = {};
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    throw new PlaygroundError(`folder not found: ${dir}`);
  }
  for (const name of names.sort()) {
    if (!/\.(safetensors|json)$/.test(name)) continue;
    const st = fs.statSync(path.join(dir, name));
    if (st.isFile()) out[name] = [st.size, Math.round(st.mtimeMs)];
  }
  return out;
}

interface CacheStamp {
  v: number;
  model: string;
  adapter: string;
  modelFiles: Record<string, [number, number]>;
  adapterFiles: Record<string, [number, number]>;
  /** Which outputs are complete for the stamps above. */
  done: { merged: boolean; base: boolean; adapter: boolean };
}

function readStamp(cacheDir: string): CacheStamp | null {
  try {
    const s = JSON.parse(fs.readFileSync(path.join(cacheDir, STAMP_FILE), 'utf8')) as CacheStamp;
    return s && s.v === CACHE_VERSION && s.done ? s : null;
  } catch {
    return null;
  }
}

function writeStamp(cacheDir: string, s: CacheStamp): void {
  const file = path.join(cacheDir, STAMP_FILE);
  writeJsonAtomic(file, s, 1);
}

function checkFolder(dir: string, required: string[], what: string, hint: string): void {
  for (const f of required) {
    if (!fs.existsSync(path.join(dir, f))) throw new PlaygroundError(`${what} ${dir} has no ${f}`, hint);
  }
}

/** The shared merge, in f32 (ONNX export takes a plain folder), with its errors as PlaygroundErrors. */
async function mergeForPlayground(opts: PrepareOptions, out: string): Promise<void> {
  try {
    await mergeAdapter({ runtimePath: opts.runtimePath, modelDir: opts.modelDir, adapterDir: opts.adapterDir, outDir: out, dtype: 'f32', token: opts.token, onLog: opts.onLog });
  } catch (e) {
    if (e instanceof MergeError) throw new PlaygroundError(e.detail, e.hint);
    throw e;
  }
}

/** exportOnnx into a temporary folder renamed into place, so a failed or cancelled export
 *  leaves the previous graph (or nothing) rather than a partial one. */
function exportTo(modelDir: string, outDir: string, opts: PrepareOptions, step: PrepareProgress): void {
  const tmp = `${outDir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  opts.onProgress?.(step);
  try {
    exportOnnx({ modelDir, outDir: tmp, token: opts.token, onProgress: (p) => opts.onProgress?.({ phase: step.phase, message: `${step.message}: ${p.message}` }) });
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (opts.token?.isCancellationRequested) throw new PlaygroundError('cancelled');
    throw e;
  }
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.renameSync(tmp, outDir);
}

/** Merges and exports what is missing or stale; returns the two ONNX folders. */
export async function preparePlayground(opts: PrepareOptions): Promise<PreparedModels> {
  const modelDir = path.resolve(opts.modelDir);
  const adapterDir = path.resolve(opts.adapterDir);
  const cacheDir = path.resolve(opts.cacheDir);
  checkFolder(modelDir, ['config.json'], 'the model folder', 'pick the Hugging Face model folder the run was trained on');
  checkFolder(adapterDir, ['adapter_model.safetensors', 'adapter_config.json'], 'the adapter folder', 'the run has not written its final adapter yet');
  fs.mkdirSync(cacheDir, { recursive: true });

  const modelFiles = folderStamp(modelDir);
  const adapterFiles = folderStamp(adapterDir);
  const old = readStamp(cacheDir);
  const sameModel = old !== null && old.model === modelDir && JSON.stringify(old.modelFiles) === JSON.stringify(modelFiles);
  const sameAdapter = sameModel && old!.adapter === adapterDir && JSON.stringify(old!.adapterFiles) === JSON.stringify(adapterFiles);
  const mergedDir = path.join(cacheDir, 'merged');
  const baseOnnx = path.join(cacheDir, 'base-onnx');
  const adapterOnnx = path.join(cacheDir, 'adapter-onnx');
  const have = (dir: string, file: string) => fs.existsSync(path.join(dir, file));
  const done = {
    merged: sameAdapter && old!.done.merged && have(mergedDir, 'config.json'),
    base: sameModel && old!.done.base && have(baseOnnx, 'model.onnx'),
    adapter: sameAdapter && old!.done.adapter && have(adapterOnnx, 'model.onnx'),
  };
  const stamp: CacheStamp = { v: CACHE_VERSION, model: modelDir, adapter: adapterDir, modelFiles, adapterFiles, done: { ...done } };
  const rebuilt = { merged: false, base: false, adapter: false };
  const cancelled = () => {
    if (opts.token?.isCancellationRequested) throw new PlaygroundError('cancelled');
  };

  if (!done.base) {
    stamp.done.base = false;
    writeStamp(cacheDir, stamp);
    exportTo(modelDir, baseOnnx, opts, { phase: 'export-base', message: 'Exporting the base model to ONNX' });
    stamp.done.base = rebuilt.base = true;
    writeStamp(cacheDir, stamp);
  }
  cancelled();
  if (!done.adapter) {
    if (!done.merged) {
      opts.onProgress?.({ phase: 'merge', message: 'Merging the adapter into the base model (lora-runtime merge)' });
      stamp.done.merged = stamp.done.adapter = false;
      writeStamp(cacheDir, stamp);
      await mergeForPlayground(opts, mergedDir);
      stamp.done.merged = rebuilt.merged = true;
      writeStamp(cacheDir, stamp);
    }
    cancelled();
    exportTo(mergedDir, adapterOnnx, opts, { phase: 'export-adapter', message: 'Exporting the merged model to ONNX' });
    stamp.done.adapter = rebuilt.adapter = true;
    writeStamp(cacheDir, stamp);
  }
  if (!rebuilt.base && !rebuilt.adapter) opts.onProgress?.({ phase: 'cached', message: 'Using the cached ONNX models' });
  return { baseOnnx, adapterOnnx, mergedDir, rebuilt };
}
