// Loads a vscode-facing module outside VS Code: the `vscode` import resolves to a stand-in
// module written from `vscodeSource` (CommonJS text), for exactly the duration of the load.
// Both modules stay in require's cache, so the caller can keep using the stand-in it got back.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const Module = require('node:module') as { _resolveFilename: (req: string, ...rest: unknown[]) => string };

/** `request` is resolved from this folder (test/webview), like a require in its siblings. */
export function requireWithVscode<T, V = unknown>(request: string, vscodeSource = 'module.exports = {};'): { mod: T; vscode: V } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vscode-standin-'));
  const file = path.join(dir, 'vscode.js');
  writeFileSync(file, vscodeSource);
  const orig = Module._resolveFilename;
  Module._resolveFilename = (req: string, ...rest: unknown[]) => (req === 'vscode' ? file : orig.call(Module, req, ...rest));
  try {
    const mod = require(request) as T;
    const vscode = require(file) as V;
    return { mod, vscode };
  } finally {
    Module._resolveFilename = orig;
    rmSync(dir, { recursive: true, force: true });
  }
}
