// Finds the lora-runtime binary, like rust-analyzer's bootstrap.ts: an explicit setting,
// then the LORA_STUDIO_RUNTIME environment variable, then the build bundled with the
// extension; and checks it with `--version` (protocol number) before first use, saying
// clearly what to do when it is missing or stale.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execCommand } from './process';

/** The runtime protocol this LoRA Studio speaks (events, run.json, CLI). */
export const RUNTIME_PROTOCOL = 1;
export const RUNTIME_ENV = 'LORA_STUDIO_RUNTIME';
const BINARY = process.platform === 'win32' ? 'lora-runtime.exe' : 'lora-runtime';

export type RuntimeSource = 'setting' | 'env' | 'bundled';

export interface RuntimeInfo {
  path: string;
  source: RuntimeSource;
  version: string;
  protocol: number;
  cuda: boolean;
}

export class RuntimeLocateError extends Error {
  constructor(message: string, readonly hint: string, readonly code: 'missing' | 'not_executable' | 'bad_version' | 'stale') {
    super(message);
    this.name = 'RuntimeLocateError';
  }
}

/** The repository (or installed extension) root: out/src/core/runtime -> root. */
export function defaultRoot(): string {
  return path.resolve(__dirname, '..', '..', '..', '..');
}

export function bundledRuntimePath(root = defaultRoot()): string {
  return path.join(root, 'native-runtime', 'build', BINARY);
}

export interface LocateOptions {
  /** The loraStudio.runtimePath setting (empty = unset). */
  setting?: string;
  env?: NodeJS.ProcessEnv;
  root?: string;
  /** How long `--version` may take (ms). */
  timeoutMs?: number;
}

/** Where the runtime would be taken from, without running it. */
export function runtimeCandidate(opts: LocateOptions = {}): { path: string; source: RuntimeSource } {
  const env = opts.env ?? process.env;
  if (opts.setting && opts.setting.trim()) return { path: path.resolve(opts.setting.trim()), source: 'setting' };
  if (env[RUNTIME_ENV] && env[RUNTIME_ENV]!.trim()) return { path: path.resolve(env[RUNTIME_ENV]!.trim()), source: 'env' };
  return { path: bundledRuntimePath(opts.root), source: 'bundled' };
}

function origin(source: RuntimeSource): string {
  return source === 'setting' ? 'the loraStudio.runtimePath setting' : source === 'env' ? `$${RUNTIME_ENV}` : 'the bundled build';
}

function buildHint(source: RuntimeSource): string {
  return source === 'bundled'
    ? `Build it with "npm run build:native" (needs cmake and a C++17 compiler), or point ${RUNTIME_ENV} or the loraStudio.runtimePath setting at a lora-runtime binary`
    : `Fix ${origin(source)}, or clear it to use the bundled runtime (built with "npm run build:native")`;
}

/** Locates the runtime and checks that it answers `--version` with our protocol. An explicit
 *  setting or environment variable that is wrong is an error: it is never silently skipped. */
export async function locateRuntime(opts: LocateOptions = {}): Promise<RuntimeInfo> {
  const cand = runtimeCandidate(opts);
  let st: fs.Stats;
  try {
    st = fs.statSync(cand.path);
  } catch {
    throw new RuntimeLocateError(`lora-runtime not found at ${cand.path} (from ${origin(cand.source)})`, buildHint(cand.source), 'missing');
  }
  if (!st.isFile()) {
    throw new RuntimeLocateError(`${cand.path} (from ${origin(cand.source)}) is not a file`, buildHint(cand.source), 'not_executable');
  }
  try {
    fs.accessSync(cand.path, fs.constants.X_OK);
  } catch {
    throw new RuntimeLocateError(`${cand.path} is not executable`, `Run: chmod +x "${cand.path}"`, 'not_executable');
  }
  let res;
  try {
    res = await execCommand(cand.path, ['--version'], { timeoutMs: opts.timeoutMs ?? 10_000 });
  } catch (e) {
    throw new RuntimeLocateError(`cannot start ${cand.path}: ${(e as Error).message}`, buildHint(cand.source), 'not_executable');
  }
  const firstJson = res.stdout.split('\n').find((l) => l.trim().startsWith('{'));
  let v: { version?: unknown; protocol?: unknown; cuda?: unknown } | null = null;
  try {
    v = firstJson ? JSON.parse(firstJson) : null;
  } catch {
    v = null;
  }
  if (res.timedOut || res.code !== 0 || !v || typeof v.version !== 'string' || typeof v.protocol !== 'number') {
    const why = res.timedOut ? 'did not answer within the timeout' : res.code !== 0 ? `exited with code ${res.code}${res.stderr ? `: ${res.stderr.split('\n')[0]}` : ''}` : `printed ${JSON.stringify(res.stdout.slice(0, 200))}`;
    throw new RuntimeLocateError(`${cand.path} --version ${why}; it is not a working lora-runtime`, buildHint(cand.source), 'bad_version');
  }
  if (v.protocol !== RUNTIME_PROTOCOL) {
    const newer = v.protocol > RUNTIME_PROTOCOL;
    throw new RuntimeLocateError(
      `lora-runtime ${v.version} at ${cand.path} speaks protocol ${v.protocol}; this LoRA Studio needs protocol ${RUNTIME_PROTOCOL}`,
      newer ? 'Update the LoRA Studio extension/CLI to match the runtime' : `The runtime is stale: rebuild it with "npm run build:native"${cand.source !== 'bundled' ? ` or update ${origin(cand.source)}` : ''}`,
      'stale');
  }
  return { path: cand.path, source: cand.source, version: v.version, protocol: v.protocol, cuda: v.cuda === true };
}
