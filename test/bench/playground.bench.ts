// Playground throughput on CPU: a generated model and a random non-zero adapter go through
// preparePlayground (lora-runtime merge --dtype f32, ONNX export of base and merged), then
// the playground generates: each column alone, and both columns together as the Try Adapter
// tab runs them. The peer, measured in the same run, is OnnxGenerator.generate alone (no chat
// template, no incremental decoding), so the playground's own overhead is visible.
//   node out/test/bench/playground.bench.js [tiny|100m] [maxTokens]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel, type TinyModelOptions } from '../../src/core/fixtures/tinyModel';
import { OnnxGenerator } from '../../src/core/export/onnxGenerate';
import { PlaygroundSession, preparePlayground } from '../../src/core/playground';
import { bundledRuntimePath } from '../../src/core/runtime/locate';
import { writeRandomAdapter } from '../unit/exportReference';

const MODELS: Record<string, TinyModelOptions> = {
  tiny: { layers: 2, hidden: 64, heads: 4, kvHeads: 2 },
  '100m': { layers: 12, hidden: 768, heads: 12, kvHeads: 4, intermediate: 2560, vocab: 8192 },
};

async function main(): Promise<void> {
  const which = process.argv[2] ?? 'tiny';
  const maxTokens = Number(process.argv[3] ?? (which === 'tiny' ? 128 : 32));
  const opts = MODELS[which];
  if (!opts) throw new Error(`unknown model "${which}"; use ${Object.keys(MODELS).join(' or ')}`);
  const runtime = process.env.LORA_STUDIO_RUNTIME || bundledRuntimePath(path.resolve(__dirname, '..', '..', '..'));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-playground-bench-'));
  try {
    const modelDir = path.join(tmp, 'model');
    const info = writeTinyModel(modelDir, opts);
    const adapterDir = path.join(tmp, 'run', 'adapter');
    writeRandomAdapter(adapterDir, modelDir, { r: 16, alpha: 32 });
    let t = performance.now();
    const prepared = await preparePlayground({ modelDir, adapterDir, cacheDir: path.join(tmp, 'run', 'playground'), runtimePath: runtime });
    const prepareS = (performance.now() - t) / 1000;
    t = performance.now();
    await preparePlayground({ modelDir, adapterDir, cacheDir: path.join(tmp, 'run', 'playground'), runtimePath: runtime });
    const cachedS = (performance.now() - t) / 1000;

    const session = await PlaygroundSession.open({ modelDir, baseOnnx: prepared.baseOnnx, adapterOnnx: prepared.adapterOnnx });
    // No stop tokens but the count: every run decodes exactly maxTokens tokens.
    const settings = { temperature: 0.8, topP: 0.95, maxTokens, seed: 1 };
    const ids = await session.promptIds('Write a short story about a lighthouse keeper who finds a message in a bottle.');
    const noStop = session.stopTokens.slice();
    session.stopTokens.length = 0;
    await session.generateSide('base', ids, { ...settings, maxTokens: 4 });
    const base = await session.generateSide('base', ids, settings);
    const adapter = await session.generateSide('adapter', ids, settings);
    t = performance.now();
    const both = await Promise.all([session.generateSide('base', ids, settings), session.generateSide('adapter', ids, settings)]);
    const bothS = (performance.now() - t) / 1000;
    session.stopTokens.push(...noStop);
    await session.close();

    const peer = await OnnxGenerator.load(prepared.baseOnnx);
    let n = 0;
    let first = 0;
    let last = 0;
    for await (const _ of peer.generate(ids, { maxTokens, temperature: 0.8, topP: 0.95, seed: 1, stopTokens: [] })) {
      last = performance.now();
      if (!n) first = last;
      n++;
    }
    await peer.release();
    const peerRate = ((n - 1) * 1000) / (last - first);

    const f = (x: number) => x.toFixed(x >= 100 ? 0 : 1);
    console.log(`machine: ${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, node ${process.version}, onnxruntime-node CPU (${session.providers.base})`);
    console.log(`model: ${which}, ${(info.paramCount / 1e6).toFixed(1)}M parameters (layers ${opts.layers}, hidden ${opts.hidden}, vocab ${info.config.vocab_size}), prompt ${ids.length} tokens, ${maxTokens} new tokens, temperature 0.8, top-p 0.95`);
    console.log(`prepare (merge + 2 exports): ${prepareS.toFixed(1)} s; again, cached: ${cachedS.toFixed(3)} s`);
    console.log(`base alone:    ${f(base.tokensPerS)} tokens/s (first token ${(base.firstTokenS * 1000).toFixed(0)} ms)`);
    console.log(`adapter alone: ${f(adapter.tokensPerS)} tokens/s (first token ${(adapter.firstTokenS * 1000).toFixed(0)} ms)`);
    console.log(`both columns together: base ${f(both[0].tokensPerS)} + adapter ${f(both[1].tokensPerS)} tokens/s; ${f((both[0].tokens + both[1].tokens) / bothS)} tokens/s in all`);
    console.log(`peer OnnxGenerator.generate alone (no template/decoding, ONNX Runtime's default threads = all ${os.availableParallelism()} cores): ${f(peerRate)} tokens/s; playground base alone/peer = ${(base.tokensPerS / peerRate).toFixed(2)}, both columns together/peer = ${((both[0].tokens + both[1].tokens) / bothS / peerRate).toFixed(2)}`);
    console.log(`(the playground gives each graph ${Math.max(1, Math.floor(os.availableParallelism() / 2))} intra-op threads, since both columns always run together)`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
