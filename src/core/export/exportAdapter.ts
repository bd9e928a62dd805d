// One export entry point for the CLI (`lora-studio export`) and the extension ("Export
// Adapter…"): a trained adapter (and its base model) to the format a user deploys with. The
// formats that need the adapter folded in go through `lora-runtime merge`, so the merged
// weights are the runtime's own, not a second implementation of the merge.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { exportAdapterGguf, exportGguf } from './ggufExport';
import type { GgufModelOutType, GgufOutType, ProgressCallback } from './ggufExport';
import { ExportError } from './hfModel';
import { MergeDtype, MergeError, mergeAdapter } from './merge';
import { exportOnnx } from './onnx';
import type { CancellationToken } from '../runtime/process';

export const EXPORT_FORMATS = ['gguf-adapter', 'ollama', 'gguf-model', 'merged', 'onnx'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

/** What each format writes, for help texts and pickers. */
export const EXPORT_FORMAT_INFO: Readonly<Record<ExportFormat, { label: string; detail: string; dtypes: readonly string[]; defaultDtype: string; needsRuntime: boolean }>> = {
  'gguf-adapter': { label: 'GGUF adapter', detail: 'the LoRA adapter alone, for llama.cpp --lora or an Ollama ADAPTER line', dtypes: ['f32', 'f16'], defaultDtype: 'f32', needsRuntime: false },
  ollama: { label: 'Ollama', detail: 'base model GGUF + adapter GGUF + Modelfile (ollama create NAME -f Modelfile)', dtypes: ['f16', 'f32', 'q8_0'], defaultDtype: 'f16', needsRuntime: false },
  'gguf-model': { label: 'Merged GGUF model', detail: 'the adapter folded into the base, one GGUF for llama.cpp / Ollama, with a Modelfile', dtypes: ['f16', 'f32', 'q8_0'], defaultDtype: 'f16', needsRuntime: true },
  merged: { label: 'Merged Hugging Face folder', detail: 'safetensors + config + tokenizer, loadable by transformers and vLLM without PEFT', dtypes: ['bf16', 'f16', 'f32'], defaultDtype: 'bf16', needsRuntime: true },
  onnx: { label: 'ONNX (merged)', detail: 'the merged model as an fp32 ONNX decoder graph with a KV cache (onnxruntime)', dtypes: ['f32'], defaultDtype: 'f32', needsRuntime: true },
};

export interface ExportAdapterOptions {
  format: ExportFormat;
  /** The HF base model folder the adapter was trained on. */
  modelDir: string;
  /** PEFT adapter folder (adapter_model.safetensors + adapter_config.json). */
  adapterDir: string;
  /** Created when missing; each format writes named files (or one named folder) inside it. */
  outDir: string;
  /** Precision of the written weights; one of EXPORT_FORMAT_INFO[format].dtypes. */
  dtype?: string;
  /** Base name of the written files (default: the model folder's name). */
  name?: string;
  /** lora-runtime, needed by the formats that merge. */
  runtimePath?: string;
  token?: CancellationToken;
  onProgress?: ProgressCallback;
  /** The runtime's stderr, line by line. */
  onLog?: (line: string) => void;
}

export interface ExportAdapterResult {
  format: ExportFormat;
  outDir: string;
  dtype: string;
  /** Every file or folder written, the main one first. */
  files: string[];
}

function requireFiles(dir: string, names: string[], what: string, hint: string): void {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new ExportError(dir, undefined, `${what} folder not found`, hint);
  for (const n of names) {
    if (!fs.existsSync(path.join(dir, n))) throw new ExportError(path.join(dir, n), undefined, `missing from the ${what} folder`, hint);
  }
}

export function checkExportInputs(opts: Pick<ExportAdapterOptions, 'format' | 'modelDir' | 'adapterDir' | 'outDir' | 'dtype'>): string {
  const info = EXPORT_FORMAT_INFO[opts.format];
  if (!info) throw new ExportError('format', undefined, `unknown export format "${opts.format}"`, `use one of ${EXPORT_FORMATS.join(', ')}`);
  const dtype = opts.dtype ?? info.defaultDtype;
  if (!info.dtypes.includes(dtype)) {
    throw new ExportError('dtype', undefined, `"${dtype}" is not a precision the ${opts.format} export writes`, `use one of ${info.dtypes.join(', ')}`);
  }
  requireFiles(opts.modelDir, ['config.json'], 'model', 'pass the Hugging Face model folder the adapter was trained on');
  requireFiles(opts.adapterDir, ['adapter_model.safetensors', 'adapter_config.json'], 'adapter',
    'pass a PEFT adapter folder (a finished run has one in RUN_DIR/adapter)');
  const out = path.resolve(opts.outDir);
  for (const src of [opts.modelDir, opts.adapterDir]) {
    if (path.resolve(src) === out) throw new ExportError(out, undefined, 'the output folder is an input folder', 'choose an empty or new output folder');
  }
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new ExportError(out, undefined, 'the output path is a file, not a folder', 'choose a folder');
  return dtype;
}

export async function exportAdapter(opts: ExportAdapterOptions): Promise<ExportAdapterResult> {
  const dtype = checkExportInputs(opts);
  const outDir = path.resolve(opts.outDir);
  const modelDir = path.resolve(opts.modelDir);
  const adapterDir = path.resolve(opts.adapterDir);
  const name = opts.name ?? path.basename(modelDir);
  const progress = opts.onProgress;
  const cancelled = () => {
    if (opts.token?.isCancellationRequested) throw new MergeError('cancelled', undefined, true);
  };
  fs.mkdirSync(outDir, { recursive: true });

  /** Merges into `dir`; the runtime is required for these formats. */
  const merge = async (dir: string, mergeDtype: MergeDtype) => {
    if (!opts.runtimePath) throw new ExportError('lora-runtime', undefined, `the ${opts.format} export merges with lora-runtime, and none was found`, 'build it (npm run build:native) or set loraStudio.runtimePath / $LORA_STUDIO_RUNTIME');
    progress?.({ phase: 'merge', fraction: 0, message: `Merging the adapter into the base model (lora-runtime merge, ${mergeDtype})` });
    await mergeAdapter({ runtimePath: opts.runtimePath, modelDir, adapterDir, outDir: dir, dtype: mergeDtype, token: opts.token, onLog: opts.onLog });
    cancelled();
  };
  /** A merged folder that only feeds another export: removed afterwards, even on failure. */
  const withTempMerge = async <T>(fn: (dir: string) => T): Promise<T> => {
    const dir = path.join(outDir, `.${name}-merged-tmp-${process.pid}`);
    try {
      await merge(dir, 'f32');
      return fn(dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  const scaled = (lo: number, hi: number): ProgressCallback | undefined => progress && ((p) => progress({ ...p, fraction: lo + (hi - lo) * p.fraction }));

  let files: string[];
  try {
    switch (opts.format) {
      case 'gguf-adapter': {
        const out = path.join(outDir, `${name}-lora-${dtype}.gguf`);
        const r = exportAdapterGguf({ adapterDir, modelDir, out, outType: dtype as GgufOutType, name: `${name}-lora`, onProgress: progress, token: opts.token });
        files = [r.file];
        break;
      }
      case 'ollama': {
        const r = exportGguf({ modelDir, adapterDir, outDir, outType: dtype as GgufModelOutType, name, onProgress: progress, token: opts.token });
        files = [r.modelfile, ...(r.model ? [r.model.file] : []), ...(r.adapter ? [r.adapter.file] : [])];
        break;
      }
      case 'gguf-model': {
        files = await withTempMerge((dir) => {
          const r = exportGguf({ modelDir: dir, outDir, outType: dtype as GgufModelOutType, name: `${name}-merged`, onProgress: scaled(0.3, 1), token: opts.token });
          return [r.model!.file, r.modelfile];
        });
        break;
      }
      case 'merged': {
        const dir = path.join(outDir, `${name}-merged`);
        await merge(dir, dtype as MergeDtype);
        files = [dir];
        break;
      }
      case 'onnx': {
        files = await withTempMerge((dir) => {
          progress?.({ phase: 'onnx', fraction: 0.3, message: 'Exporting the merged model to ONNX' });
          const target = path.join(outDir, `${name}-onnx`);
          const tmp = `${target}.tmp-${process.pid}`;
          fs.rmSync(tmp, { recursive: true, force: true });
          try {
            exportOnnx({ modelDir: dir, outDir: tmp, onProgress: scaled(0.3, 1), token: opts.token });
            copyTokenizerFiles(dir, tmp);
            fs.rmSync(target, { recursive: true, force: true });
            fs.renameSync(tmp, target);
          } finally {
            fs.rmSync(tmp, { recursive: true, force: true });
          }
          return [path.join(target, 'model.onnx')];
        });
        break;
      }
      default:
        throw new ExportError('format', undefined, `unknown export format "${String(opts.format)}"`, `use one of ${EXPORT_FORMATS.join(', ')}`);
    }
  } catch (e) {
    // The GGUF and ONNX writers stop between tensors with an ExportError; callers see every
    // cancel the way they see a cancelled merge.
    if (opts.token?.isCancellationRequested && !(e instanceof MergeError && e.cancelled)) throw new MergeError('cancelled', undefined, true);
    throw e;
  }
  progress?.({ phase: 'done', fraction: 1, message: `Wrote ${files[0]}` });
  return { format: opts.format, outDir, dtype, files };
}

/** A graph alone cannot be driven: the tokenizer and configs travel with it. */
function copyTokenizerFiles(from: string, to: string): void {
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja']) {
    const src = path.join(from, f);
    if (fs.existsSync(src) && !fs.existsSync(path.join(to, f))) fs.copyFileSync(src, path.join(to, f));
  }
}
