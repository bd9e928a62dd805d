#!/usr/bin/env node
// Builds the bundles the extension ships:
//  - the webviews: type-checks webview/ (DOM types, separate from the Node tsconfig), then
//    bundles webview/main.ts (training panel), webview/compare.ts (Compare Runs) and
//    webview/playground.ts (Try Adapter) into dist/webview/{panel,compare,playground}.js, and one stylesheet (uPlot's plus ours) into panel.css;
//  - the extension host side: src/extension/extension.ts and the core modules it uses into
//    dist/extension.js (package.json "main"), so activation reads one file instead of dozens.
//    Core modules stay lazily evaluated (they are required on first use); packages with
//    native parts or data files stay external and load from node_modules;
//  - the export worker: src/extension/exportWorker.ts into dist/exportWorker.js, beside
//    dist/extension.js where src/extension/exportInWorker.ts looks for it.
// (tsc still compiles src/ into out/ for the CLI and the tests.)
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outDir = path.join(root, 'dist', 'webview');
mkdirSync(outDir, { recursive: true });

if (!process.argv.includes('--no-check')) {
  const tsc = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(root, 'webview')], { stdio: 'inherit' });
  if (tsc.status !== 0) {
    console.error('build-webview: type errors in webview/ (see above)');
    process.exit(1);
  }
}

await build({
  entryPoints: { panel: path.join(root, 'webview', 'main.ts'), compare: path.join(root, 'webview', 'compare.ts'),
                 playground: path.join(root, 'webview', 'playground.ts') },
  outdir: outDir,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome114'],
  minify: !process.argv.includes('--dev'),
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
});

await build({
  entryPoints: { extension: path.join(root, 'src', 'extension', 'extension.ts'), exportWorker: path.join(root, 'src', 'extension', 'exportWorker.ts') },
  outdir: path.join(root, 'dist'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: ['node20'],
  external: ['vscode', 'tokenizers', 'onnxruntime-node', '@huggingface/hub', '@huggingface/jinja', 'chokidar'],
  minify: false,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
});

const css = [
  readFileSync(path.join(root, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8'),
  readFileSync(path.join(root, 'webview', 'panel.css'), 'utf8'),
].join('\n');
writeFileSync(path.join(outDir, 'panel.css'), css);
