// `lora-runtime merge` through the one process layer: the adapter folded into the base as a plain
// HF folder. Shared by the playground (which exports the merged folder to ONNX) and the export
// command (merged folder, merged GGUF, ONNX), so both cancel, report and fail the same way.
import * as fs from 'node:fs';
import { CancellationToken, spawnProcess } from '../runtime/process';

export type MergeDtype = 'bf16' | 'f16' | 'f32';

export class MergeError extends Error {
  constructor(readonly detail: string, readonly hint?: string, readonly cancelled = false) {
    super(hint ? `${detail}. ${hint}` : detail);
    this.name = 'MergeError';
  }
}

export interface MergeOptions {
  /** The lora-runtime binary (found by core/runtime/locate). */
  runtimePath: string;
  modelDir: string;
  adapterDir: string;
  /** Replaced when it exists; nothing is left there when the merge fails or is cancelled. */
  outDir: string;
  dtype?: MergeDtype;
  token?: CancellationToken;
  /** The runtime's stderr, line by line. */
  onLog?: (line: string) => void;
}

export interface MergeResult {
  outDir: string;
  /** The runtime's JSON summary ({out, tensors, merged_modules, dtype, bytes, ...}) when it printed one. */
  summary: Record<string, unknown> | null;
}

/** Runs `lora-runtime merge` into a fresh temporary folder, then renames it into place. */
export async function mergeAdapter(opts: MergeOptions): Promise<MergeResult> {
  const out = opts.outDir;
  // The runtime refuses a non-empty --out; a private temporary folder also keeps an older
  // complete output in place until the new one is whole.
  const tmp = `${out}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  const stderr: string[] = [];
  const stdout: string[] = [];
  const proc = spawnProcess(opts.runtimePath, ['merge', '--model', opts.modelDir, '--adapter', opts.adapterDir, '--out', tmp, '--dtype', opts.dtype ?? 'f32'], {
    token: opts.token,
    // merge has no stdin protocol: cancelling goes straight to SIGTERM.
    stopMessage: null,
    killTimeoutMs: 5000,
    onStdoutLine: (l) => stdout.push(l),
    onStderrLine: (l) => {
      stderr.push(l);
      opts.onLog?.(l);
    },
  });
  let exit;
  try {
    exit = await proc.exited;
  } catch (e) {
    throw new MergeError(`cannot start ${opts.runtimePath}: ${(e as Error).message}`, 'set loraStudio.runtimePath (or $LORA_STUDIO_RUNTIME) to a built lora-runtime');
  }
  if (opts.token?.isCancellationRequested) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw new MergeError('cancelled', undefined, true);
  }
  if (exit.code !== 0) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const detail = runtimeErrorText(stdout, stderr);
    if (/unknown command|usage:/i.test(detail) && !/merge --model/.test(detail)) {
      throw new MergeError(`this lora-runtime has no merge command (${opts.runtimePath})`, 'rebuild the runtime (node scripts/build-native.mjs) or update LoRA Studio');
    }
    throw new MergeError(`lora-runtime merge failed (exit ${exit.code ?? exit.signal}): ${detail}`);
  }
  fs.rmSync(out, { recursive: true, force: true });
  fs.renameSync(tmp, out);
  return { outDir: out, summary: lastJsonObject(stdout) };
}

function lastJsonObject(lines: string[]): Record<string, unknown> | null {
  for (const line of [...lines].reverse()) {
    try {
      const v = JSON.parse(line) as unknown;
      if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
    } catch {
      // not JSON: plain output
    }
  }
  return null;
}

/** The runtime's own error event when it printed one (message + hint), else the last stderr lines. */
function runtimeErrorText(stdout: string[], stderr: string[]): string {
  for (const line of [...stdout].reverse()) {
    try {
      const e = JSON.parse(line) as { event?: string; type?: string; message?: string; hint?: string };
      if ((e.event ?? e.type) === 'error' && typeof e.message === 'string') return e.hint ? `${e.message} (${e.hint})` : e.message;
    } catch {
      // not JSON: plain output
    }
  }
  return [...stderr, ...stdout].slice(-5).join(' | ') || 'no output';
}
