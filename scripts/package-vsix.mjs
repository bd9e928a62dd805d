#!/usr/bin/env node
// `npm run package`: builds everything (TypeScript, panel bundle, native runtime) and packs
// a VSIX for the current platform with @vscode/vsce. .vscodeignore keeps sources and tests
// out and keeps the built lora-runtime binary in. Prints the VSIX path and size.
// Options: --no-build (use what is built), --out FILE.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) {
    console.error(`package: ${cmd} ${args.join(' ')} failed`);
    process.exit(r.status ?? 1);
  }
}

if (!process.argv.includes('--no-build')) run('npm', ['run', '--silent', 'build']);
const runtime = path.join('native-runtime', 'build', 'lora-runtime');
if (!existsSync(runtime)) {
  console.error(`package: ${runtime} is missing; run npm run build:native first`);
  process.exit(1);
}
const pkg = JSON.parse(readFileSync('package.json', 'utf8'));
const target = `${process.platform === 'win32' ? 'win32' : process.platform}-${process.arch}`;
const outArg = process.argv.indexOf('--out');
const out = outArg > 0 && process.argv[outArg + 1] ? process.argv[outArg + 1] : `${pkg.name}-${pkg.version}-${target}.vsix`;
// A VSIX is per platform: leave out the native binaries of every other platform.
const ignoreFile = path.join(os.tmpdir(), `lora-studio-vscodeignore-${process.pid}`);
const keepTokenizers = `tokenizers.${process.platform}-${process.arch}${process.platform === 'linux' ? '-gnu' : process.platform === 'win32' ? '-msvc' : ''}.node`;
const extra = [
  ...readdirSync(path.join('node_modules', 'tokenizers')).filter((f) => f.endsWith('.node') && f !== keepTokenizers).map((f) => `node_modules/tokenizers/${f}`),
];
const ortBin = path.join('node_modules', 'onnxruntime-node', 'bin');
for (const napi of existsSync(ortBin) ? readdirSync(ortBin) : []) {
  for (const platform of readdirSync(path.join(ortBin, napi))) {
    for (const arch of readdirSync(path.join(ortBin, napi, platform))) {
      if (platform !== process.platform || arch !== process.arch) extra.push(`node_modules/onnxruntime-node/bin/${napi}/${platform}/${arch}/**`);
    }
  }
}
writeFileSync(ignoreFile, `${readFileSync('.vscodeignore', 'utf8')}\n${extra.join('\n')}\n`);
const vsce = path.join('node_modules', '@vscode', 'vsce', 'vsce');
try {
  run(process.execPath, [vsce, 'package', '--target', target, '--out', out, '--ignoreFile', ignoreFile, '--allow-missing-repository', '--skip-license',
                         '--no-rewrite-relative-links'], { ONNXRUNTIME_NODE_INSTALL: 'skip' });
} finally {
  rmSync(ignoreFile, { force: true });
}
const size = statSync(out).size;
console.log(`package: ${out} ${(size / 1024 / 1024).toFixed(1)} MB (${size} bytes)`);
