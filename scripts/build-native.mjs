#!/usr/bin/env node
// Configures and builds native-runtime/ with CMake (Release): the runtime (with the CUDA path
// when nvcc is on PATH; extra arguments go to the configure step, e.g. -DLORA_CUDA=OFF), its
// tests and its benchmark. Output in native-runtime/build/: lora-runtime, runtime-tests,
// cuda-host-tests (the CUDA model on a fake device), runtime-bench.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = path.join(root, 'native-runtime');
const build = path.join(src, 'build');
const jobs = String(Math.max(1, Math.min(os.cpus().length, 8)));

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.error) {
    console.error(`build-native: could not run ${cmd}: ${r.error.message}` +
      (r.error.code === 'ENOENT' ? ` (install it: bash scripts/setup.sh)` : ''));
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const extra = process.argv.slice(2);
if (!existsSync(path.join(build, 'CMakeCache.txt')) || extra.length) {
  run('cmake', ['-S', src, '-B', build, '-DCMAKE_BUILD_TYPE=Release', ...extra]);
}
run('cmake', ['--build', build, '--parallel', jobs]);
