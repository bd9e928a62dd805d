#!/usr/bin/env node
// `npm run bench`: performance figures, each next to a peer measured in the same run.
//
//   1. GEMMs: the runtime's matmul_nt/nn/tn against OpenBLAS's multi-threaded sgemm on every
//      matrix shape of one training step of a ~23M-parameter Llama at seq 256
//      (native-runtime/build/runtime-bench; OpenBLAS is dlopen'ed as a yardstick only).
//   2. CPU training: tokens/s of `lora-runtime train` on that model (LoRA r=16 on all seven
//      projections, seq 256, quant none and nf4), and the step's achieved GFLOP/s (the step's
//      GEMM FLOPs / measured step time) as a fraction of OpenBLAS's rate on the same shapes.
//   3. Data preparation: rows/s, tokens/s and peak heap on a generated 100k-row chat dataset,
//      next to the raw tokenizer's rate.
//
// Options: --quick (fewer steps and rows), --skip-data, --skip-train, --threads N.
// Installs Debian's libopenblas-dev when it is missing and this user can (root or sudo).
//
// --gpu: the GPU benchmark instead (scripts/gpu/bench_gpu.py: the CUDA path against PEFT +
// transformers on Llama-1B/8B shapes; see docs/gpu.md); the other arguments are passed to it.
// Without a working nvidia-smi it says why and exits 1 without running anything else.
import { spawnSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const threadsArg = args.indexOf('--threads');
const threads = threadsArg >= 0 ? Number(args[threadsArg + 1]) : 0;
const runtime = path.join(root, 'native-runtime', 'build', 'lora-runtime');
const runtimeBench = path.join(root, 'native-runtime', 'build', 'runtime-bench');

// The bench model: the shapes runtime-bench times by default (see bench_matmul.cpp).
const MODEL = { hidden: 512, layers: 6, heads: 8, kvHeads: 4, intermediate: 1536, vocab: 8192 };
const SEQ = 256;
const RANK = 16;

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 28, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return r;
}

function ensureBuilt() {
  const outputs = [runtime, runtimeBench, path.join(root, 'out', 'src', 'core', 'fixtures', 'cli.js')];
  if (outputs.every((f) => fs.existsSync(f))) return;
  console.log('bench: building (npm run build) ...');
  const r = spawnSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function openBlasPresent() {
  const r = spawnSync('ldconfig', ['-p'], { encoding: 'utf8' });
  return !r.error && /libopenblas\.so/.test(r.stdout);
}

function ensureOpenBlas() {
  if (openBlasPresent()) return;
  const isRoot = process.getuid?.() === 0;
  const sudo = isRoot ? [] : ['sudo', '-n'];
  console.log('bench: installing Debian libopenblas-dev (the GEMM yardstick; the runtime never links it) ...');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const tool = (argv) => (sudo.length ? spawnSync(sudo[0], [...sudo.slice(1), ...argv], { stdio: 'inherit', env })
                                      : spawnSync(argv[0], argv.slice(1), { stdio: 'inherit', env }));
  tool(['apt-get', 'update', '-qq']);
  const r = tool(['apt-get', 'install', '-y', '-qq', 'libopenblas-dev']);
  if (r.status !== 0 || !openBlasPresent()) {
    console.log('bench: could not install libopenblas-dev; ratios against OpenBLAS will be missing.');
  }
}

function machine() {
  let cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  return `${cpu.trim()}, ${os.cpus().length} hardware threads, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, ` +
    `${os.platform()} ${os.release()}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`;
}

// 1. GEMMs of the training step, ours vs OpenBLAS.
function gemmBench() {
  const argv = ['--tokens', String(SEQ), '--rank', String(RANK), '--json'];
  if (threads) argv.push('--threads', String(threads));
  if (quick) argv.push('--rounds', '1', '--min-time', '0.05');
  const r = run(runtimeBench, argv);
  if (r.status !== 0) throw new Error(`runtime-bench failed (${r.status}):\n${r.stderr}`);
  const lines = r.stdout.trimEnd().split('\n');
  const json = JSON.parse(lines.pop());
  console.log(lines.join('\n'));
  return json;
}

// 2. A real training run on the bench model.
async function makeBenchModel(dir) {
  const cli = path.join(root, 'out', 'src', 'core', 'fixtures', 'cli.js');
  const r = run(process.execPath, [cli, 'model', '--out', dir, '--arch', 'llama', '--hidden', String(MODEL.hidden),
    '--layers', String(MODEL.layers), '--heads', String(MODEL.heads), '--kv-heads', String(MODEL.kvHeads),
    '--intermediate', String(MODEL.intermediate), '--vocab', String(MODEL.vocab), '--dtype', 'F32',
    '--max-pos', '4096', '--seed', '7']);
  if (r.status !== 0) throw new Error(`fixture generator failed:\n${r.stderr}${r.stdout}`);
}

async function writeRandomShard(file, documents, seed) {
  const { ShardWriter } = require(path.join(root, 'out', 'src', 'core', 'tokenize', 'shard.js'));
  const w = new ShardWriter(file, MODEL.vocab);
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % MODEL.vocab);
  for (let d = 0; d < documents; d++) {
    const len = SEQ; // one document per packed row: every row is full, as in a packed run
    const tokens = new Uint32Array(len);
    for (let i = 0; i < len; i++) tokens[i] = next();
    const mask = new Uint8Array(len).fill(1);
    w.addDocument(tokens, mask);
  }
  await w.finish();
}

async function trainBench(dir, quant, steps) {
  const runDir = path.join(dir, `run-${quant}`);
  fs.mkdirSync(path.join(runDir, 'data'), { recursive: true });
  fs.copyFileSync(path.join(dir, 'train.bin'), path.join(runDir, 'data', 'train.bin'));
  const runJson = {
    v: 1,
    model: path.join(dir, 'model'),
    data: { train: 'data/train.bin', eval: null },
    lora: { r: RANK, alpha: 16, dropout: 0, rslora: false,
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], init_adapter: null },
    quant: { type: quant, double_quant: quant !== 'none', block_size: 64 },
    train: { seq_len: SEQ, micro_batch: 1, grad_accum: 1, epochs: 1, max_steps: steps, optimizer: 'adamw', lr: 1e-4,
      schedule: 'constant', warmup_steps: 0, weight_decay: 0, max_grad_norm: 1.0, grad_checkpointing: false,
      seed: 1, eval_every: 0, save_every: 0 },
    compute: { device: 'cpu', dtype: 'fp32', threads },
  };
  fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify(runJson, null, 2));
  const child = spawn(runtime, ['train', '--run', runDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const stepsSeen = [];
  let model = null;
  const rl = readline.createInterface({ input: child.stdout });
  rl.on('line', (line) => {
    let ev;
    try { ev = JSON.parse(line); } catch { return; }
    if (ev.type === 'step') stepsSeen.push(ev);
    if (ev.type === 'model') model = ev;
  });
  const code = await new Promise((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`lora-runtime train (${quant}) exited ${code}:\n${stderr}`);
  // The first steps warm caches and the allocator; time the rest.
  const timed = stepsSeen.slice(Math.min(2, stepsSeen.length - 1));
  const tps = timed.map((s) => s.tokens_per_s).sort((a, b) => a - b);
  const median = tps[Math.floor(tps.length / 2)];
  return { quant, tokensPerS: median, steps: stepsSeen.length, peak: stepsSeen.at(-1)?.mem?.peak ?? 0, model };
}

// --gpu: hands over to the Python benchmark, which needs a GPU, PyTorch, transformers and PEFT.
function gpuBench() {
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  if (smi.error || smi.status !== 0 || !/GPU \d+:/.test(smi.stdout)) {
    const why = smi.error ? `nvidia-smi could not be run (${smi.error.code ?? smi.error.message})`
      : `nvidia-smi failed (exit ${smi.status}): ${(smi.stderr || smi.stdout).trim() || 'no GPU listed'}`;
    console.log(`bench --gpu: no NVIDIA GPU here: ${why}. The GPU benchmark needs one; see docs/gpu.md.`);
    process.exit(1);
  }
  const python = process.env.PYTHON ?? 'python3';
  const rest = args.filter((a) => a !== '--gpu');
  const r = spawnSync(python, [path.join(root, 'scripts', 'gpu', 'bench_gpu.py'), ...rest], { cwd: root, stdio: 'inherit' });
  if (r.error) {
    console.log(`bench --gpu: could not run ${python}: ${r.error.message}`);
    process.exit(1);
  }
  process.exit(r.status ?? 1);
}

async function main() {
  if (args.includes('--gpu')) gpuBench();
  console.log(`LoRA Studio benchmarks (${new Date().toISOString()})`);
  console.log(`machine: ${machine()}`);
  ensureBuilt();
  const report = { machine: machine(), date: new Date().toISOString() };

  if (!args.includes('--skip-train')) {
    ensureOpenBlas();
    console.log(`\n== 1. GEMMs of one training step (Llama ${MODEL.hidden}x${MODEL.layers} layers, ` +
      `MLP ${MODEL.intermediate}, vocab ${MODEL.vocab}, ${SEQ} tokens, LoRA r=${RANK}) ==`);
    const gemm = gemmBench();
    report.gemm = { ours_gflops: gemm.ours_gflops, openblas_gflops: gemm.openblas_gflops, ratio: gemm.ratio };

    console.log(`\n== 2. CPU training (lora-runtime train, seq ${SEQ}, micro-batch 1, LoRA r=${RANK} on all 7 projections) ==`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-bench-'));
    try {
      await makeBenchModel(path.join(dir, 'model'));
      const steps = quick ? 5 : 12;
      await writeRandomShard(path.join(dir, 'train.bin'), steps + 2, 11);
      const stepFlops = gemm.shapes.reduce((acc, s) => acc + 2 * s.M * s.N * s.K * s.count, 0);
      report.train = [];
      for (const quant of ['none', 'nf4']) {
        const t = await trainBench(dir, quant, steps);
        const stepSeconds = SEQ / t.tokensPerS;
        const achieved = stepFlops / stepSeconds / 1e9;
        const ratio = gemm.openblas_gflops ? achieved / gemm.openblas_gflops : null;
        const params = t.model ? `${(t.model.params_total / 1e6).toFixed(1)}M params, ` +
          `${(t.model.params_trainable / 1e6).toFixed(2)}M trainable, base ${(t.model.bytes_base / 2 ** 20).toFixed(1)} MiB` : '';
        console.log(`quant ${quant.padEnd(4)}: ${t.tokensPerS.toFixed(0)} tokens/s (median of ${t.steps} steps), ` +
          `step ${(stepSeconds * 1000).toFixed(0)} ms, achieved ${achieved.toFixed(1)} GFLOP/s` +
          (ratio !== null ? ` = ${(ratio * 100).toFixed(0)}% of OpenBLAS's ${gemm.openblas_gflops.toFixed(1)} GFLOP/s on the same shapes` : '') +
          `; peak RSS ${(t.peak / 2 ** 20).toFixed(0)} MiB; ${params}`);
        report.train.push({ quant, tokens_per_s: t.tokensPerS, achieved_gflops: achieved, fraction_of_openblas: ratio });
      }
      console.log(`(step GEMM work: ${(stepFlops / 1e9).toFixed(2)} GFLOP; attention, norms and the optimizer are extra ` +
        `work the runtime does in the same time, so the fraction is conservative; target >= 50%)`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  if (!args.includes('--skip-data')) {
    console.log('\n== 3. Data preparation (prepareDataset on a generated chat dataset) ==');
    const bench = require(path.join(root, 'out', 'test', 'bench', 'dataPrep.bench.js'));
    const result = await bench.runDataPrepBench(quick ? 20_000 : 100_000, 'llama3');
    console.log(bench.formatDataPrepBench(result));
    report.data = result;
  }
  console.log(`\n${JSON.stringify(report)}`);
}

main().catch((e) => {
  console.error(`bench: ${e.stack || e.message}`);
  process.exit(1);
});
