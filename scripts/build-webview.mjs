#!/usr/bin/env node
// Builds the webviews: type-checks webview/ (DOM types, separate from the Node tsconfig),
// then bundles webview/main.ts (training panel) and webview/compare.ts (Compare Runs) into
// dist/webview/{panel,compare}.js, and one stylesheet (uPlot's plus ours) into panel.css.
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
  entryPoints: { panel: path.join(root, 'webview', 'main.ts'), compare: path.join(root, 'webview', 'compare.ts') },
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

const css = [
  readFileSync(path.join(root, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8'),
  readFileSync(path.join(root, 'webview', 'panel.css'), 'utf8'),
].join('\n');
writeFileSync(path.join(outDir, 'panel.css'), css);
