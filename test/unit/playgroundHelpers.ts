// Test helpers for the playground: a plain TypeScript merge (W + scale * B A, the formula of
// `lora-runtime merge`), and a stand-in `lora-runtime` executable that runs it, so the cache
// and process paths of preparePlayground are exercised before (and besides) the real merge.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readModelWeights, readSafetensorsHeader, readTensorF32, TensorToWrite, writeSafetensors } from '../../src/core/model/safetensors';

export function mergeInTypeScript(modelDir: string, adapterDir: string, out: string): number {
  const cfg = JSON.parse(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
  const scale = cfg.use_rslora ? cfg.lora_alpha / Math.sqrt(cfg.r) : cfg.lora_alpha / cfg.r;
  const adapter = readSafetensorsHeader(path.join(adapterDir, 'adapter_model.safetensors'));
  const weights = readModelWeights(modelDir);
  let merged = 0;
  const tensors: TensorToWrite[] = [];
  for (const [name, entry] of weights.tensors) {
    const header = weights.files.find((f) => f.file === entry.file)!;
    const w = readTensorF32(header, name);
    const key = `base_model.model.${name.replace(/\.weight$/, '')}`;
    if (adapter.tensors.some((t) => t.name === `${key}.lora_A.weight`)) {
      const a = readTensorF32(adapter, `${key}.lora_A.weight`);
      const b = readTensorF32(adapter, `${key}.lora_B.weight`);
      const [rows, cols] = entry.shape;
      const r = a.length / cols;
      for (let o = 0; o < rows; o++) {
        for (let k = 0; k < r; k++) {
          const bv = b[o * r + k] * scale;
          for (let i = 0; i < cols; i++) w[o * cols + i] += bv * a[k * cols + i];
        }
      }
      merged++;
    }
    tensors.push({ name, dtype: 'F32', shape: [...entry.shape], data: w });
  }
  fs.mkdirSync(out, { recursive: true });
  writeSafetensors(path.join(out, 'model.safetensors'), tensors, { format: 'pt' });
  for (const f of fs.readdirSync(modelDir)) {
    if (f.endsWith('.json') && f !== 'model.safetensors.index.json') fs.copyFileSync(path.join(modelDir, f), path.join(out, f));
  }
  return merged;
}

/** Writes an executable that answers `merge --model M --adapter A --out O --dtype f32` like
 *  the runtime, counting its calls in `<file>.calls`. */
export function writeMergeStandIn(file: string): string {
  const helper = path.resolve(__dirname, 'playgroundHelpers.js');
  fs.writeFileSync(file, `#!${process.execPath}
const fs = require('node:fs');
const args = process.argv.slice(2);
const get = (k) => args[args.indexOf(k) + 1];
fs.appendFileSync(${JSON.stringify(file + '.calls')}, args.join(' ') + '\\n');
if (args[0] !== 'merge') { console.error('usage: stand-in knows only merge'); process.exit(2); }
if (get('--dtype') !== 'f32') { console.error('expected --dtype f32'); process.exit(2); }
if (!fs.existsSync(get('--adapter') + '/adapter_model.safetensors')) {
  console.log(JSON.stringify({ v: 1, event: 'error', code: 'bad_input', message: 'adapter_model.safetensors not found', hint: 'train first' }));
  process.exit(2);
}
require(${JSON.stringify(helper)}).mergeInTypeScript(get('--model'), get('--adapter'), get('--out'));
console.error('merged');
`, { mode: 0o755 });
  return file;
}

export function standInCalls(file: string): string[] {
  try {
    return fs.readFileSync(file + '.calls', 'utf8').trim().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}
