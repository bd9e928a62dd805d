#!/usr/bin/env node
// `npm test`: builds everything, then runs every suite and prints one closing line
// "N passed, N failed, N skipped" summed over all of them.
//   1. native-runtime/build/runtime-tests      (C++ op, format and quantization tests)
//      native-runtime/build/cuda-host-tests    (the CUDA model's orchestration and its GPU
//      tests on a fake device made of the CPU ops; built with or without nvcc)
//   2. node --test out/test/{unit,native,webview}  (TypeScript tests; the native suite drives
//      the lora-runtime binary end to end; webview tests use headless Chromium)
//   3. test/integration/run.mjs, when present  (the extension inside a real VS Code)
// Arguments are passed to node --test as name patterns: npm test -- --test-name-pattern=shard
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);
const totals = { passed: 0, failed: 0, skipped: 0 };
const suites = [];

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 30, ...opts });
  if (r.error) throw r.error;
  return r;
}

function buildOrDie(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`npm test: build step failed: ${cmd} ${args.join(' ')}`);
    console.log(`0 passed, 1 failed`);
    process.exit(1);
  }
}

function count(name, out, re) {
  const m = re(out);
  suites.push(`${name}: ${m.passed} passed, ${m.failed} failed, ${m.skipped} skipped`);
  totals.passed += m.passed;
  totals.failed += m.failed;
  totals.skipped += m.skipped;
}

buildOrDie('npm', ['run', '--silent', 'build']);

// 1. C++ tests: each executable ends with "N passed, N failed, N skipped"; a crash or a
// missing binary counts as one failure.
function cppSuite(name, exe) {
  const bin = path.join(root, 'native-runtime', 'build', exe);
  if (!existsSync(bin)) {
    console.error(`npm test: ${bin} was not built`);
    count(name, '', () => ({ passed: 0, failed: 1, skipped: 0 }));
    return;
  }
  const r = sh(bin, [], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.stdout.write(r.stdout);
  count(name, r.stdout, (out) => {
    const m = /^(\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(out);
    if (!m || r.status !== 0 && Number(m?.[2] ?? 0) === 0) return { passed: 0, failed: 1, skipped: 0 };
    return { passed: +m[1], failed: +m[2], skipped: +m[3] };
  });
}
cppSuite('native (C++)', 'runtime-tests');
cppSuite('CUDA orchestration (fake device)', 'cuda-host-tests');

// 2. TypeScript suites
{
  const dirs = ['unit', 'native', 'webview'].map((d) => path.join('out', 'test', d)).filter((d) => existsSync(d));
  if (dirs.length) {
    const r = sh(process.execPath, ['--test', '--test-reporter=spec', ...process.argv.slice(2), ...dirs], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    process.stdout.write(r.stdout);
    count('node --test', r.stdout, (out) => {
      const num = (k) => Number((new RegExp(`^\\S*\\s*${k} (\\d+)$`, 'm').exec(out) || [])[1] ?? NaN);
      const passed = num('pass'), failed = num('fail'), skipped = num('skipped');
      if ([passed, failed, skipped].some(Number.isNaN)) return { passed: 0, failed: 1, skipped: 0 };
      return { passed, failed: failed || (r.status !== 0 ? 1 : 0), skipped };
    });
  }
}

// 3. Integration tests inside VS Code
{
  const runner = path.join(root, 'test', 'integration', 'run.mjs');
  if (existsSync(runner)) {
    const r = sh(process.execPath, [runner], { stdio: ['ignore', 'pipe', 'inherit'] });
    process.stdout.write(r.stdout);
    count('integration (VS Code)', r.stdout, (out) => {
      const m = /^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$/m.exec(out);
      if (!m) return { passed: 0, failed: 1, skipped: 0 };
      return { passed: +m[1], failed: +m[2] || (r.status !== 0 ? 1 : 0), skipped: +(m[3] ?? 0) };
    });
  }
}

console.log('\nSuites:');
for (const s of suites) console.log(`  ${s}`);
console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
process.exit(totals.failed ? 1 : 0);
