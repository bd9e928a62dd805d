#!/usr/bin/env node
// lora-studio: the headless CLI. It runs the same src/core code path as the extension:
// dataset preparation, run folders, the runtime process layer and its events.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs, ParseArgsConfig } from 'node:util';
import {
  ConfigError, ConfigIssue, DeepPartial, PRESETS, TrainConfig, applyPreset, defaultConfig, hasErrors,
  mergeConfig, parseConfig, targetsForModel, toRunJson, validateConfig,
} from './core/config';
import { prepareDataset, PrepareResult } from './core/dataset/prepare';
import { DatasetError, formatDiagnostic } from './core/dataset/diagnostics';
import { estimateMemory, gpuCanTrain } from './core/estimate';
import { ModelInspectError, ModelInspection, describeModel, formatBytes, inspectModel, loraParamCount, targetShapes } from './core/model/inspect';
import { listCachedModels, hfHubCacheDir } from './core/model/hfCache';
import { RuntimeEvent, formatErrorEvent, parseEventLine } from './core/runtime/events';
import { RuntimeLocateError, RuntimeInfo, locateRuntime } from './core/runtime/locate';
import { ManagedProcess, execCommand, spawnProcess } from './core/runtime/process';
import { RUN_FILES, createRunDir, latestCheckpoint, listRuns, readRunJson, summarizeRun, writeRunJson, liveRuntimePid } from './core/runs/runs';
import { ProgressTracker, formatDuration, formatProgress } from './core/runs/progress';
import { EXPORT_FORMATS, EXPORT_FORMAT_INFO, ExportFormat, exportAdapter } from './core/export/exportAdapter';
import { ExportError } from './core/export/hfModel';
import { MergeError } from './core/export/merge';
import { CancellationTokenSource } from './core/runtime/process';

const VERSION = '0.1.0';

/** Exit codes, as the runtime's: 0 done (or stopped on request), 2 bad input, 3 out of memory, 1 internal. */
const EXIT = { ok: 0, internal: 1, badInput: 2, oom: 3 } as const;

class CliError extends Error {
  constructor(message: string, readonly hint?: string, readonly exitCode: number = EXIT.badInput) {
    super(message);
  }
}

const HELP: Record<string, string> = {
  main: `lora-studio ${VERSION}: LoRA / QLoRA fine-tuning from the command line

usage: lora-studio <command> [options]

commands:
  train     prepare a dataset, create a run folder and fine-tune (Ctrl-C stops and keeps a resumable run)
  resume    continue a stopped or interrupted run from its newest checkpoint
  prepare   turn a dataset into token shards (train.bin, eval.bin, summary.json)
  eval      mean loss of a model (and adapter) on a dataset or shard
  runs      list the runs in a runs folder with status, steps, loss and duration
  inspect   show a model folder's architecture, sizes, target modules and a memory estimate
  models    list models in the Hugging Face cache
  export    write a run's adapter as GGUF (llama.cpp / Ollama), a merged HF folder or ONNX

Run "lora-studio <command> --help" for a command's options.
Environment: LORA_STUDIO_RUNTIME=path to lora-runtime (else the bundled native-runtime/build/lora-runtime).`,
  train: `usage: lora-studio train --model DIR --data FILE [options]

  --model DIR            Hugging Face model folder (config.json, *.safetensors, tokenizer.json)
  --data FILE            dataset: .jsonl, .json or .csv (chat messages, alpaca, prompt/completion or text)
  --config FILE          JSON file with TrainConfig settings (see docs); flags override it
  --preset ID            ${PRESETS.map((p) => p.id).join(' | ')}
  --runs-dir DIR         where run folders go (default: .lora-studio/runs)
  --name NAME            run name (default: the dataset's file name)
  --runtime PATH         lora-runtime binary (default: $LORA_STUDIO_RUNTIME, then the bundled build)
  --json                 print every runtime event as a JSON line on stdout (messages go to stderr)

 LoRA:      --r N  --alpha X  --dropout X  --rslora  --targets q_proj,k_proj,...  --init-adapter DIR
 quant:     --quant none|nf4|fp4|int8  --no-double-quant  --block-size N
 training:  --lr X  --schedule constant|linear|cosine  --warmup N  --epochs N  --max-steps N
            --seq-len N  --micro-batch N  --grad-accum N  --optimizer adamw|sgd  --weight-decay X
            --max-grad-norm X  --grad-checkpointing | --no-grad-checkpointing  --seed N  --eval-every N  --save-every N
            --early-stopping N
 data:      --eval-data FILE  --eval-split X  --format auto|messages|alpaca|prompt_completion|text
            --template model|llama3|chatml|mistral|gemma|alpaca  --train-on completion|all
            --assistant-turns all|last  --over-length truncate|drop  --fold-system
 compute:   --device auto|cpu|cuda:N  --dtype fp32|bf16|fp16  --threads N

Ctrl-C asks the runtime to stop: it writes a checkpoint and the run can be continued with
"lora-studio resume RUN_DIR". A second Ctrl-C kills it.`,
  resume: `usage: lora-studio resume RUN_DIR [--runtime PATH] [--json]

Continues a stopped or interrupted run from its newest complete checkpoint.`,
  prepare: `usage: lora-studio prepare --model DIR --data FILE --out DIR [options]

  --seq-len N (default 2048)  --eval-data FILE  --eval-split X  --seed N
  --format auto|messages|alpaca|prompt_completion|text   --template model|llama3|chatml|mistral|gemma|alpaca
  --train-on completion|all  --assistant-turns all|last  --over-length truncate|drop  --fold-system
  --json   print the summary and diagnostics as JSON`,
  eval: `usage: lora-studio eval (--model DIR [--adapter DIR] | --run RUN_DIR) --data FILE|SHARD [options]

  --data FILE            a dataset file (prepared on the fly with the model's template) or a .bin shard
  --run RUN_DIR          use the run's model and its final adapter
  --compare              also evaluate the base model without the adapter
  --seq-len N  --quant none|nf4|fp4|int8  --threads N  --runtime PATH  --json`,
  runs: `usage: lora-studio runs [--runs-dir DIR] [--json]`,
  inspect: `usage: lora-studio inspect --model DIR [--json] [--r N] [--targets ...] [--quant Q] [--seq-len N] [--micro-batch N]

Reads config.json and the safetensors headers only (no weights) and prints the architecture,
sizes, the LoRA target modules with their shapes, and a memory estimate (CUDA and CPU).`,
  export: `usage: lora-studio export (--run RUN_DIR | --adapter DIR [--model DIR]) --format FORMAT --out DIR [options]

  --run RUN_DIR          a run folder: its final adapter (RUN_DIR/adapter) and run.json's model
  --adapter DIR          a PEFT adapter folder (adapter_model.safetensors + adapter_config.json)
  --model DIR            the base model folder (default: the run's model; required with --adapter)
  --format FORMAT        one of:${EXPORT_FORMATS.map((f) => `
    ${f.padEnd(13)} ${EXPORT_FORMAT_INFO[f].detail}`).join('')}
  --out DIR              output folder (created); files are named after the model (--name)
  --dtype T              precision: gguf-adapter f32|f16 (f32), ollama and gguf-model f16|f32|q8_0 (f16),
                         merged bf16|f16|f32 (bf16), onnx f32
  --name NAME            base name of the written files (default: the model folder's name)
  --runtime PATH         lora-runtime, used by merged, gguf-model and onnx (default: $LORA_STUDIO_RUNTIME, then the bundled build)
  --json                 print a JSON summary on stdout (progress goes to stderr)

Ctrl-C cancels; a cancelled or failed export leaves no half-written merged folder.`,
  models: `usage: lora-studio models [--json]

Lists models in the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub).`,
};

type Opts = Record<string, string | boolean | undefined>;

const TRAIN_OPTIONS: ParseArgsConfig['options'] = {
  model: { type: 'string' }, data: { type: 'string' }, config: { type: 'string' }, preset: { type: 'string' },
  'runs-dir': { type: 'string' }, name: { type: 'string' }, runtime: { type: 'string' }, json: { type: 'boolean' },
  r: { type: 'string' }, alpha: { type: 'string' }, dropout: { type: 'string' }, rslora: { type: 'boolean' },
  targets: { type: 'string' }, 'init-adapter': { type: 'string' },
  quant: { type: 'string' }, 'no-double-quant': { type: 'boolean' }, 'block-size': { type: 'string' },
  lr: { type: 'string' }, schedule: { type: 'string' }, warmup: { type: 'string' }, epochs: { type: 'string' },
  'max-steps': { type: 'string' }, 'seq-len': { type: 'string' }, 'micro-batch': { type: 'string' },
  'grad-accum': { type: 'string' }, optimizer: { type: 'string' }, 'weight-decay': { type: 'string' },
  'max-grad-norm': { type: 'string' }, 'grad-checkpointing': { type: 'boolean' }, 'no-grad-checkpointing': { type: 'boolean' }, seed: { type: 'string' },
  'eval-every': { type: 'string' }, 'save-every': { type: 'string' }, 'early-stopping': { type: 'string' },
  'eval-data': { type: 'string' }, 'eval-split': { type: 'string' }, format: { type: 'string' }, template: { type: 'string' },
  'train-on': { type: 'string' }, 'assistant-turns': { type: 'string' }, 'over-length': { type: 'string' },
  'fold-system': { type: 'boolean' }, device: { type: 'string' }, dtype: { type: 'string' }, threads: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

function parse(cmd: string, args: string[], options: ParseArgsConfig['options'], positionals = false): { values: Opts; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: positionals, strict: true });
    return { values: r.values as Opts, positionals: r.positionals };
  } catch (e) {
    throw new CliError(`${cmd}: ${(e as Error).message.replace(/\. To specify a positional argument.*$/s, '')}`, `see "lora-studio ${cmd} --help"`);
  }
}

function num(flag: string, v: string | boolean | undefined, integer: boolean): number | undefined {
  if (v === undefined || typeof v === 'boolean') return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new CliError(`--${flag} must be ${integer ? 'an integer' : 'a number'}, got "${v}"`);
  }
  return n;
}

function str<T extends string>(v: string | boolean | undefined): T | undefined {
  return typeof v === 'string' ? (v as T) : undefined;
}

/** The TrainConfig overrides given as flags. */
function flagsToConfig(o: Opts): DeepPartial<TrainConfig> {
  const maxSteps = num('max-steps', o['max-steps'], true);
  return {
    model: str(o.model) && path.resolve(o.model as string),
    data: str(o.data) && path.resolve(o.data as string),
    dataOptions: {
      evalData: str(o['eval-data']) && path.resolve(o['eval-data'] as string),
      evalSplit: num('eval-split', o['eval-split'], false),
      format: str(o.format), template: str(o.template), trainOn: str(o['train-on']), assistantTurns: str(o['assistant-turns']),
      overLength: str(o['over-length']), foldSystemIntoUser: o['fold-system'] ? true : undefined,
    },
    lora: {
      r: num('r', o.r, true), alpha: num('alpha', o.alpha, false), dropout: num('dropout', o.dropout, false),
      rslora: o.rslora ? true : undefined,
      targets: str(o.targets)?.split(',').map((t) => t.trim()).filter(Boolean),
      initAdapter: str(o['init-adapter']) && path.resolve(o['init-adapter'] as string),
    },
    quant: { type: str(o.quant), doubleQuant: o['no-double-quant'] ? false : undefined, blockSize: num('block-size', o['block-size'], true) },
    train: {
      lr: num('lr', o.lr, false), schedule: str(o.schedule), warmupSteps: num('warmup', o.warmup, true), epochs: num('epochs', o.epochs, true),
      maxSteps, seqLen: num('seq-len', o['seq-len'], true), microBatch: num('micro-batch', o['micro-batch'], true),
      gradAccum: num('grad-accum', o['grad-accum'], true), optimizer: str(o.optimizer), weightDecay: num('weight-decay', o['weight-decay'], false),
      maxGradNorm: num('max-grad-norm', o['max-grad-norm'], false), gradCheckpointing: o['no-grad-checkpointing'] ? false : o['grad-checkpointing'] ? true : undefined,
      seed: num('seed', o.seed, true), evalEvery: num('eval-every', o['eval-every'], true), saveEvery: num('save-every', o['save-every'], true),
      earlyStoppingPatience: num('early-stopping', o['early-stopping'], true),
    },
    compute: { device: str(o.device), dtype: str(o.dtype), threads: num('threads', o.threads, true) },
  } as DeepPartial<TrainConfig>;
}

function readConfigFile(file: string): TrainConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CliError(`cannot read --config ${file}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (e) {
    const msg = (e as Error).message;
    const at = /at position (\d+)/.exec(msg);
    let where = '';
    if (at) {
      const before = text.replace(/^\uFEFF/, '').slice(0, Number(at[1]));
      const line = before.split('\n').length;
      where = `:${line}:${Number(at[1]) - before.lastIndexOf('\n')}`;
    }
    throw new CliError(`${file}${where}: not valid JSON (${msg})`, 'the config file is a JSON object of TrainConfig settings (see docs/cli.md)');
  }
  const c = parseConfig(json, file);
  // Relative paths in a config file are relative to the file, like run.json's.
  const dir = path.dirname(path.resolve(file));
  if (c.model) c.model = path.resolve(dir, c.model);
  if (c.data) c.data = path.resolve(dir, c.data);
  if (c.dataOptions.evalData) c.dataOptions.evalData = path.resolve(dir, c.dataOptions.evalData);
  if (c.lora.initAdapter) c.lora.initAdapter = path.resolve(dir, c.lora.initAdapter);
  return c;
}

function printIssues(issues: readonly ConfigIssue[], source: string): void {
  for (const i of issues) {
    process.stderr.write(`${source}: ${i.severity === 'warning' ? 'warning' : 'error'}: ${i.field}: ${i.message}${i.hint ? `\n  hint: ${i.hint}` : ''}\n`);
  }
}

function inspectOrFail(dir: string): ModelInspection {
  try {
    return inspectModel(dir);
  } catch (e) {
    if (e instanceof ModelInspectError) throw new CliError(e.message);
    throw e;
  }
}

async function runtimeOrFail(explicit: string | undefined): Promise<RuntimeInfo> {
  try {
    return await locateRuntime({ setting: explicit });
  } catch (e) {
    if (e instanceof RuntimeLocateError) throw new CliError(e.message, e.hint);
    throw e;
  }
}

function log(msg: string): void {
  process.stderr.write(msg + '\n');
}

function prepareProgress(json: boolean): ((p: { rows: number; bytes: number; totalBytes: number }) => void) | undefined {
  if (json || !process.stderr.isTTY) return undefined;
  let last = 0;
  return (p) => {
    const now = Date.now();
    if (now - last < 200) return;
    last = now;
    const pct = p.totalBytes > 0 ? Math.floor((100 * p.bytes) / p.totalBytes) : 0;
    process.stderr.write(`\rpreparing: ${p.rows} rows (${pct}%)`);
  };
}

function printPrepareSummary(res: PrepareResult): void {
  const s = res.summary;
  const errors = res.diagnostics.filter((d) => d.severity === 'error');
  const shown = res.diagnostics.filter((d) => d.severity !== 'info').slice(0, 20);
  for (const d of shown) log(formatDiagnostic(d));
  const hidden = res.diagnostics.filter((d) => d.severity !== 'info').length - shown.length;
  if (hidden > 0) log(`... and ${hidden} more (all of them: lora-studio prepare --json, or the extension's Problems panel)`);
  log(`rows: ${s.rows.read} read, ${s.rows.usable} usable, ${s.rows.skipped} skipped, ${s.rows.truncated} truncated, ${s.rows.droppedOverLength} dropped over length`);
  log(`train: ${s.rows.train} rows, ${s.train.tokens} tokens, ${s.train.trainedTokens} trained tokens -> ${res.trainPath}`);
  if (s.eval && res.evalPath) log(`eval:  ${s.rows.eval} rows, ${s.eval.tokens} tokens, ${s.eval.trainedTokens} trained tokens -> ${res.evalPath}`);
  if (errors.length) log(`${errors.length} rows had errors and were skipped (see above)`);
}

async function prepareOrFail(opts: Parameters<typeof prepareDataset>[0]): Promise<PrepareResult> {
  try {
    const r = await prepareDataset(opts);
    if (opts.onProgress) process.stderr.write('\r\x1b[K');
    return r;
  } catch (e) {
    if (opts.onProgress) process.stderr.write('\r\x1b[K');
    if (e instanceof DatasetError) {
      for (const d of e.diagnostics.slice(0, 20)) log(formatDiagnostic(d));
      throw new CliError(e.reason, e.hint);
    }
    throw e;
  }
}

// ---------------------------------------------------------------- train / resume

interface WatchResult {
  code: number;
  done: Extract<RuntimeEvent, { type: 'done' }> | null;
  error: Extract<RuntimeEvent, { type: 'error' }> | null;
  interrupted: boolean;
}

/** Spawns the runtime on a run folder and follows it: progress on stderr (or events as JSON on
 *  stdout), runtime stderr into runtime.log, Ctrl-C as a graceful stop. */
async function superviseRuntime(rt: RuntimeInfo, runDir: string, resume: boolean, json: boolean): Promise<WatchResult> {
  const logStream = fs.createWriteStream(path.join(runDir, RUN_FILES.log), { flags: 'a' });
  const tracker = new ProgressTracker();
  const tty = !json && process.stderr.isTTY === true;
  let done: WatchResult['done'] = null;
  let error: WatchResult['error'] = null;
  let lastPlain = 0;
  let lastPrintedStep = -1;
  let drawn = false;
  const clearLine = () => { if (drawn) { process.stderr.write('\r\x1b[K'); drawn = false; } };
  const draw = () => {
    const width = Math.max(10, Math.min(30, (process.stderr.columns ?? 100) - 90));
    process.stderr.write(`\r\x1b[K${formatProgress(tracker.state, width)}`);
    drawn = true;
  };
  const onEvent = (e: RuntimeEvent) => {
    tracker.update(e);
    if (json) {
      process.stdout.write(JSON.stringify(e) + '\n');
    }
    if (e.type === 'done') done = e;
    if (e.type === 'error') error = e;
    if (json) return;
    switch (e.type) {
      case 'hello': log(`runtime ${e.runtime} on ${e.device.kind}: ${e.device.name}`); break;
      case 'model': log(`model: ${e.arch}, ${e.params_total.toLocaleString('en-US')} params, ${e.params_trainable.toLocaleString('en-US')} trainable (${((100 * e.params_trainable) / Math.max(1, e.params_total)).toFixed(3)}%), base ${formatBytes(e.bytes_base)} (${e.quant})`); break;
      case 'plan': log(`plan: ${e.steps_total} steps, ${e.tokens_per_step} tokens/step, ${e.epochs} epoch(s), ${e.train_tokens} train tokens${e.eval_tokens ? `, ${e.eval_tokens} eval tokens` : ''}`); break;
      case 'step': {
        if (tty) draw();
        else if (Date.now() - lastPlain >= 1000 || e.step === 1 || e.step === tracker.state.stepsTotal) {
          lastPlain = Date.now();
          lastPrintedStep = e.step;
          log(formatProgress(tracker.state));
        }
        break;
      }
      case 'eval': clearLine(); log(`eval at step ${e.step}: loss ${e.loss === null ? 'NaN' : e.loss.toFixed(4)}`); if (tty) draw(); break;
      case 'checkpoint': clearLine(); log(`checkpoint: ${e.path}`); if (tty) draw(); break;
      case 'log': if (e.level !== 'debug') { clearLine(); log(`[${e.level}] ${e.message}`); if (tty) draw(); } break;
      case 'error': clearLine(); log(`error: ${formatErrorEvent(e)}`); break;
      case 'done': clearLine(); if (lastPrintedStep !== tracker.state.step) log(formatProgress(tracker.state)); break;
    }
  };
  const args = ['train', '--run', runDir];
  if (resume) args.push('--resume');
  let proc: ManagedProcess;
  try {
    proc = spawnProcess(rt.path, args, {
      cwd: runDir,
      pidFile: path.join(runDir, RUN_FILES.pid),
      onStdoutLine: (line) => {
        const p = parseEventLine(line);
        if (p.kind === 'event') onEvent(p.event);
        else if (p.kind === 'invalid') logStream.write(`[lora-studio] ignored runtime output (${p.reason}): ${line}\n`);
      },
      onStderrLine: (line) => logStream.write(line + '\n'),
    });
  } catch (e) {
    logStream.end();
    throw new CliError(`cannot start ${rt.path}: ${(e as Error).message}`);
  }
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    clearLine();
    if (interrupts === 1) {
      log('stopping: the runtime writes a checkpoint first (Ctrl-C again to kill it)');
      void proc.stop();
    } else {
      log('killing the runtime');
      proc.kill();
    }
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    const exit = await proc.exited;
    clearLine();
    return { code: exit.code ?? (exit.signal ? EXIT.internal : EXIT.ok), done, error, interrupted: interrupts > 0 };
  } catch (e) {
    throw new CliError(`cannot start ${rt.path}: ${(e as Error).message}`, 'check the runtime binary (lora-studio --help: LORA_STUDIO_RUNTIME)');
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
    await new Promise<void>((r) => logStream.end(r));
  }
}

function reportOutcome(runDir: string, w: WatchResult, json: boolean): number {
  const resumeHint = `resume with: lora-studio resume ${runDir}`;
  const status = w.done?.status;
  if (!json) {
    if (status === 'completed') {
      const s = summarizeRun(runDir);
      log(`done: ${s.step} steps${s.finalLoss !== null ? `, final loss ${s.finalLoss.toFixed(4)}` : ''}${s.lastEvalLoss !== null ? `, eval loss ${s.lastEvalLoss.toFixed(4)}` : ''}${s.durationS !== null ? `, ${formatDuration(s.durationS)}` : ''}`);
      log(`adapter: ${w.done!.adapter ?? path.join(runDir, RUN_FILES.adapter)}`);
    } else if (status === 'stopped') {
      log(`stopped at step ${w.done!.step}; the run is resumable`);
      log(resumeHint);
    } else if (w.code === EXIT.oom) {
      log('the runtime ran out of memory (see the error above)');
    } else if (!w.error) {
      log(`the runtime exited with code ${w.code} without finishing; see ${path.join(runDir, RUN_FILES.log)}`);
      if (latestCheckpoint(runDir)) log(resumeHint);
    }
  }
  if (status === 'completed' || status === 'stopped') return EXIT.ok;
  if (w.code === EXIT.ok) return w.interrupted ? EXIT.ok : EXIT.internal;
  return w.code;
}

async function cmdTrain(args: string[]): Promise<number> {
  const { values: o } = parse('train', args, TRAIN_OPTIONS);
  if (o.help) return help('train');
  const json = o.json === true;
  let cfg = defaultConfig();
  if (typeof o.config === 'string') cfg = readConfigFile(o.config);
  if (typeof o.preset === 'string') cfg = applyPreset(cfg, o.preset);
  cfg = mergeConfig(cfg, flagsToConfig(o));
  if (!cfg.model) throw new CliError('train: --model is required', 'pass an HF model folder: --model DIR');
  if (!cfg.data) throw new CliError('train: --data is required', 'pass a dataset file: --data FILE.jsonl');

  const model = inspectOrFail(cfg.model);
  if (!model.supported) throw new CliError(`${cfg.model}: ${model.unsupportedReason}`);
  for (const w of model.warnings) log(`warning: ${model.dir}: ${w}`);
  const carried = targetsForModel(cfg.lora.targets, model.targets.map((t) => t.name));
  if (carried.join(',') !== cfg.lora.targets.join(',')) {
    log(`lora.targets: ${model.architecture} names its modules differently; using ${carried.join(', ')} for ${cfg.lora.targets.join(', ')}`);
    cfg.lora.targets = carried;
  }
  const chosen = model.targets.filter((t) => cfg.lora.targets.includes(t.name));
  const minDim = chosen.length
    ? Math.min(...chosen.flatMap((t) => targetShapes(t).map((s) => Math.min(s.inFeatures, s.outFeatures)))) : undefined;
  const rt = await runtimeOrFail(str(o.runtime));
  const issues = validateConfig(cfg, { modelTargets: model.targets.map((t) => t.name), minTargetDim: minDim, cuda: rt.cuda });
  printIssues(issues, 'config');
  if (hasErrors(issues)) return EXIT.badInput;
  if (!fs.existsSync(cfg.data)) throw new CliError(`dataset not found: ${cfg.data}`);

  const runsRoot = path.resolve(str(o['runs-dir']) ?? path.join('.lora-studio', 'runs'));
  const name = str(o.name) ?? path.basename(cfg.data).replace(/\.[^.]+$/, '');
  const { id, dir } = createRunDir(runsRoot, name);
  if (!json) log(`run ${id}: ${dir}\nmodel: ${describeModel(model)}\npreparing ${cfg.data}`);
  // A run that never got its data is no run: its folder goes, so listings stay clean.
  const discard = () => fs.rmSync(dir, { recursive: true, force: true });
  const prep = await prepareOrFail({
    data: cfg.data, evalData: cfg.dataOptions.evalData ?? undefined, modelDir: cfg.model, outDir: path.join(dir, RUN_FILES.data),
    seqLen: cfg.train.seqLen, format: cfg.dataOptions.format, template: cfg.dataOptions.template, trainOn: cfg.dataOptions.trainOn,
    assistantTurns: cfg.dataOptions.assistantTurns, overLength: cfg.dataOptions.overLength,
    evalSplit: cfg.dataOptions.evalData ? 0 : cfg.dataOptions.evalSplit, seed: cfg.train.seed,
    foldSystemIntoUser: cfg.dataOptions.foldSystemIntoUser, onProgress: prepareProgress(json),
  }).catch((e: unknown) => { discard(); throw e; });
  if (!json) printPrepareSummary(prep);
  if (prep.summary.train.trainedTokens === 0) {
    discard();
    throw new CliError('no trained tokens in the prepared training data', 'check the diagnostics above: every row was skipped, or no answer tokens are marked for training');
  }
  const rel = (p: string | null) => (p ? path.relative(dir, p) : null);
  const runJson = toRunJson(cfg, {
    model: cfg.model, train: rel(prep.trainPath)!, eval: rel(prep.evalPath),
    meta: { name, created_at: new Date().toISOString(), created_by: `lora-studio ${VERSION}`, config: cfg, dataset: { file: cfg.data, summary: path.relative(dir, prep.summaryPath) } },
  });
  writeRunJson(dir, runJson);
  if (!json) {
    const est = estimateMemory({
      model, lora: cfg.lora, quant: cfg.quant, train: cfg.train, dtype: cfg.compute.dtype,
      offloadActivations: cfg.compute.offloadActivations === true,
      device: rt.cuda && cfg.compute.device !== 'cpu' && gpuCanTrain(model) ? 'cuda' : 'cpu',
    });
    log(`trainable: ${loraParamCount(model, cfg.lora.r, cfg.lora.targets).toLocaleString('en-US')} LoRA params; estimated memory ${formatBytes(est.totalBytes)}`);
  }
  const w = await superviseRuntime(rt, dir, false, json);
  return reportOutcome(dir, w, json);
}

async function cmdResume(args: string[]): Promise<number> {
  const { values: o, positionals } = parse('resume', args, { runtime: { type: 'string' }, json: { type: 'boolean' } }, true);
  if (o.help) return help('resume');
  if (positionals.length !== 1) throw new CliError('resume: give exactly one RUN_DIR', 'e.g. lora-studio resume .lora-studio/runs/20260101-120000-chat');
  const dir = path.resolve(positionals[0]);
  if (!readRunJson(dir)) throw new CliError(`${dir} is not a run folder (no readable run.json)`, 'list runs with: lora-studio runs');
  const live = liveRuntimePid(dir);
  if (live !== null) throw new CliError(`the run is still training (runtime pid ${live})`, 'stop it first, or wait for it to finish');
  const s = summarizeRun(dir);
  if (s.status === 'completed') {
    log(`the run already completed at step ${s.step}; adapter: ${s.adapter}`);
    return EXIT.ok;
  }
  const ck = latestCheckpoint(dir);
  const json = o.json === true;
  if (!json) log(ck ? `resuming ${dir} from step ${ck.step}` : `no checkpoint in ${dir}: the run starts again from step 0`);
  const rt = await runtimeOrFail(str(o.runtime));
  const w = await superviseRuntime(rt, dir, true, json);
  return reportOutcome(dir, w, json);
}

// ---------------------------------------------------------------- prepare / eval

const PREPARE_OPTIONS: ParseArgsConfig['options'] = {
  model: { type: 'string' }, data: { type: 'string' }, out: { type: 'string' }, 'seq-len': { type: 'string' },
  'eval-data': { type: 'string' }, 'eval-split': { type: 'string' }, seed: { type: 'string' }, format: { type: 'string' },
  template: { type: 'string' }, 'train-on': { type: 'string' }, 'assistant-turns': { type: 'string' },
  'over-length': { type: 'string' }, 'fold-system': { type: 'boolean' }, json: { type: 'boolean' },
};

async function cmdPrepare(args: string[]): Promise<number> {
  const { values: o } = parse('prepare', args, PREPARE_OPTIONS);
  if (o.help) return help('prepare');
  for (const f of ['model', 'data', 'out']) if (typeof o[f] !== 'string') throw new CliError(`prepare: --${f} is required`, 'see lora-studio prepare --help');
  const c = mergeConfig(defaultConfig(), flagsToConfig(o));
  const issues = validateConfig({ ...c, model: c.model || 'x', data: c.data || 'x' }).filter((i) => i.field.startsWith('dataOptions') || i.field === 'train.seqLen');
  printIssues(issues, 'prepare');
  if (hasErrors(issues)) return EXIT.badInput;
  const json = o.json === true;
  const res = await prepareOrFail({
    data: c.data, evalData: c.dataOptions.evalData ?? undefined, modelDir: c.model, outDir: path.resolve(o.out as string),
    seqLen: c.train.seqLen, format: c.dataOptions.format, template: c.dataOptions.template, trainOn: c.dataOptions.trainOn,
    assistantTurns: c.dataOptions.assistantTurns, overLength: c.dataOptions.overLength,
    evalSplit: num('eval-split', o['eval-split'], false) ?? 0, seed: c.train.seed, foldSystemIntoUser: c.dataOptions.foldSystemIntoUser,
    onProgress: prepareProgress(json),
  });
  if (json) process.stdout.write(JSON.stringify({ trainPath: res.trainPath, evalPath: res.evalPath, summaryPath: res.summaryPath, summary: res.summary, diagnostics: res.diagnostics }) + '\n');
  else printPrepareSummary(res);
  return res.summary.train.trainedTokens > 0 ? EXIT.ok : EXIT.badInput;
}

async function runtimeEval(rt: RuntimeInfo, model: string, adapter: string | null, shard: string, o: Opts): Promise<{ loss: number; tokens: number }> {
  const args = ['eval', '--model', model, '--data', shard];
  if (adapter) args.push('--adapter', adapter);
  for (const [flag, key] of [['--quant', 'quant'], ['--seq-len', 'seq-len'], ['--threads', 'threads']] as const) {
    if (typeof o[key] === 'string') args.push(flag, o[key] as string);
  }
  const r = await execCommand(rt.path, args, { timeoutMs: 24 * 3600 * 1000 });
  const lines = r.stdout.split('\n').filter((l) => l.trim());
  for (const l of lines) {
    const p = parseEventLine(l);
    if (p.kind === 'event' && p.event.type === 'error') throw new CliError(formatErrorEvent(p.event), undefined, r.code ?? EXIT.badInput);
  }
  const result = lines.map((l) => { try { return JSON.parse(l); } catch { return null; } }).find((v) => v && typeof v.loss === 'number');
  if (r.code !== 0 || !result) {
    throw new CliError(`lora-runtime eval failed (exit ${r.code})${r.stderr ? `: ${r.stderr.split('\n').slice(-3).join(' ')}` : ''}`, undefined, r.code || EXIT.internal);
  }
  return { loss: result.loss, tokens: result.tokens };
}

async function cmdEval(args: string[]): Promise<number> {
  const { values: o } = parse('eval', args, {
    model: { type: 'string' }, adapter: { type: 'string' }, run: { type: 'string' }, data: { type: 'string' }, compare: { type: 'boolean' },
    'seq-len': { type: 'string' }, quant: { type: 'string' }, threads: { type: 'string' }, runtime: { type: 'string' }, json: { type: 'boolean' },
  });
  if (o.help) return help('eval');
  let model = str(o.model);
  let adapter = str(o.adapter) ?? null;
  if (typeof o.run === 'string') {
    const run = readRunJson(path.resolve(o.run));
    if (!run || typeof run.model !== 'string') throw new CliError(`${o.run} is not a run folder (no readable run.json)`);
    model ??= run.model;
    adapter ??= path.join(path.resolve(o.run), RUN_FILES.adapter);
  }
  if (!model) throw new CliError('eval: --model or --run is required');
  if (typeof o.data !== 'string') throw new CliError('eval: --data is required', 'a dataset file or a .bin token shard');
  if (adapter && !fs.existsSync(path.join(adapter, 'adapter_model.safetensors'))) throw new CliError(`no adapter_model.safetensors in ${adapter}`);
  const rt = await runtimeOrFail(str(o.runtime));
  let shard = path.resolve(o.data);
  let tmpDir: string | null = null;
  try {
    if (!shard.endsWith('.bin')) {
      tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-studio-eval-'));
      const res = await prepareOrFail({ data: shard, modelDir: model, outDir: tmpDir, seqLen: num('seq-len', o['seq-len'], true) ?? 2048, evalSplit: 0 });
      shard = res.trainPath;
    }
    const out: Record<string, unknown> = { model, data: path.resolve(o.data) };
    if (adapter) out.adapter = await runtimeEval(rt, model, adapter, shard, o);
    if (!adapter || o.compare) out.base = await runtimeEval(rt, model, null, shard, o);
    if (o.json) {
      process.stdout.write(JSON.stringify(out) + '\n');
    } else {
      const show = (label: string, r: { loss: number; tokens: number }) => log(`${label}: loss ${r.loss.toFixed(4)} (perplexity ${Math.exp(r.loss).toFixed(2)}) over ${r.tokens} tokens`);
      if (out.base) show('base   ', out.base as { loss: number; tokens: number });
      if (out.adapter) show('adapter', out.adapter as { loss: number; tokens: number });
    }
    return EXIT.ok;
  } finally {
    if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- export

/** run.json's model as written (often relative to where training was started): the cwd first, then the run folder. */
function runModelDir(runDir: string, model: string): string {
  if (path.isAbsolute(model) || fs.existsSync(model)) return path.resolve(model);
  const besideRun = path.resolve(runDir, model);
  return fs.existsSync(besideRun) ? besideRun : path.resolve(model);
}

async function cmdExport(args: string[]): Promise<number> {
  const { values: o } = parse('export', args, {
    run: { type: 'string' }, adapter: { type: 'string' }, model: { type: 'string' }, format: { type: 'string' }, out: { type: 'string' },
    dtype: { type: 'string' }, name: { type: 'string' }, runtime: { type: 'string' }, json: { type: 'boolean' },
  });
  if (o.help) return help('export');
  const json = o.json === true;
  let model = str(o.model);
  let adapter = str(o.adapter);
  if (typeof o.run === 'string') {
    const runDir = path.resolve(o.run);
    const run = readRunJson(runDir);
    if (!run || typeof run.model !== 'string') throw new CliError(`${runDir} is not a run folder (no readable run.json)`, 'list runs with: lora-studio runs');
    model ??= runModelDir(runDir, run.model);
    adapter ??= path.join(runDir, RUN_FILES.adapter);
    if (!fs.existsSync(path.join(adapter, 'adapter_model.safetensors'))) {
      throw new CliError(`${runDir} has no final adapter (${path.join(adapter, 'adapter_model.safetensors')} is missing)`,
        'a run writes its adapter when it completes; finish it with: lora-studio resume RUN_DIR');
    }
  }
  if (!adapter) throw new CliError('export: --run or --adapter is required', 'e.g. lora-studio export --run .lora-studio/runs/RUN --format gguf-adapter --out out/');
  if (!model) throw new CliError('export: --model is required with --adapter', 'pass the Hugging Face model folder the adapter was trained on');
  if (typeof o.format !== 'string') throw new CliError('export: --format is required', `one of ${EXPORT_FORMATS.join(', ')}`);
  if (!(EXPORT_FORMATS as readonly string[]).includes(o.format)) throw new CliError(`export: unknown --format "${o.format}"`, `one of ${EXPORT_FORMATS.join(', ')}`);
  if (typeof o.out !== 'string') throw new CliError('export: --out is required', 'the folder the exported files go to');
  const format = o.format as ExportFormat;
  const runtimePath = EXPORT_FORMAT_INFO[format].needsRuntime ? (await runtimeOrFail(str(o.runtime))).path : undefined;

  const cts = new CancellationTokenSource();
  const onSigint = () => {
    log('cancelling the export (Ctrl-C again to kill)');
    cts.cancel();
    process.removeListener('SIGINT', onSigint);
  };
  process.on('SIGINT', onSigint);
  // Progress as lines (not a redrawn bar) so logs and CI output stay readable: each phase once,
  // then every tenth of the way.
  let lastPhase = '';
  let lastTenth = -1;
  try {
    const r = await exportAdapter({
      format, modelDir: model, adapterDir: adapter, outDir: o.out, dtype: str(o.dtype), name: str(o.name), runtimePath, token: cts.token,
      onProgress: (p) => {
        const tenth = Math.floor(p.fraction * 10);
        if (p.phase === lastPhase && tenth === lastTenth) return;
        if (p.phase !== lastPhase || p.phase === 'done') log(`${p.phase}: ${p.message}`);
        else log(`${p.phase}: ${tenth * 10}%`);
        lastPhase = p.phase;
        lastTenth = tenth;
      },
      onLog: (l) => log(`  ${l}`),
    });
    if (json) process.stdout.write(JSON.stringify({ format: r.format, dtype: r.dtype, out: r.outDir, files: r.files, model: path.resolve(model), adapter: path.resolve(adapter) }) + '\n');
    else for (const f of r.files) log(`wrote ${f}`);
    return EXIT.ok;
  } catch (e) {
    if (e instanceof ExportError) throw new CliError(`${e.file}${e.field ? ` (${e.field})` : ''}: ${e.detail}`, e.hint);
    if (e instanceof MergeError) throw new CliError(e.cancelled ? 'export cancelled' : e.detail, e.hint, e.cancelled ? EXIT.ok : EXIT.badInput);
    throw e;
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

// ---------------------------------------------------------------- runs / inspect / models

function cmdRuns(args: string[]): number {
  const { values: o } = parse('runs', args, { 'runs-dir': { type: 'string' }, json: { type: 'boolean' } });
  if (o.help) return help('runs');
  const root = path.resolve(str(o['runs-dir']) ?? path.join('.lora-studio', 'runs'));
  const runs = listRuns(root);
  if (o.json) {
    process.stdout.write(JSON.stringify(runs) + '\n');
    return EXIT.ok;
  }
  if (runs.length === 0) {
    log(`no runs in ${root}`);
    return EXIT.ok;
  }
  const rows = runs.map((r) => [
    r.id, r.status, `${r.step}/${r.stepsTotal ?? '?'}`, r.finalLoss === null ? '--' : r.finalLoss.toFixed(4),
    r.lastEvalLoss === null ? '--' : r.lastEvalLoss.toFixed(4), formatDuration(r.durationS), r.adapter ?? '',
  ]);
  const head = ['RUN', 'STATUS', 'STEPS', 'LOSS', 'EVAL', 'TIME', 'ADAPTER'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  process.stdout.write([fmt(head), ...rows.map(fmt)].join('\n') + '\n');
  return EXIT.ok;
}

function cmdInspect(args: string[]): number {
  const { values: o } = parse('inspect', args, {
    model: { type: 'string' }, json: { type: 'boolean' }, r: { type: 'string' }, targets: { type: 'string' }, quant: { type: 'string' },
    'seq-len': { type: 'string' }, 'micro-batch': { type: 'string' }, 'no-grad-checkpointing': { type: 'boolean' },
  });
  if (o.help) return help('inspect');
  if (typeof o.model !== 'string') throw new CliError('inspect: --model is required');
  const m = inspectOrFail(o.model);
  const cfg = mergeConfig(defaultConfig(), flagsToConfig(o));
  cfg.lora.targets = targetsForModel(cfg.lora.targets, m.targets.map((t) => t.name));
  const estimateFor = (device: 'cpu' | 'cuda') => estimateMemory({ model: m, lora: cfg.lora, quant: cfg.quant, train: cfg.train, device, dtype: cfg.compute.dtype, offloadActivations: cfg.compute.offloadActivations === true });
  const est = { cuda: estimateFor('cuda'), cpu: estimateFor('cpu') };
  if (o.json) {
    process.stdout.write(JSON.stringify({ model: m, estimate: est }) + '\n');
    return EXIT.ok;
  }
  const out: string[] = [];
  out.push(describeModel(m));
  if (!m.supported) out.push(`not trainable: ${m.unsupportedReason}`);
  for (const w of m.warnings) out.push(`warning: ${w}`);
  out.push(`params: ${m.paramsTotal.toLocaleString('en-US')} (${m.paramsLinear.toLocaleString('en-US')} in decoder linear layers)`);
  out.push(`files: ${m.files.join(', ')}; tokenizer: ${m.hasTokenizer ? 'yes' : 'MISSING'}; chat template: ${m.hasChatTemplate ? 'yes' : 'no'}`);
  out.push('target modules:');
  for (const t of m.targets) out.push(`  ${t.name.padEnd(10)} ${String(t.inFeatures).padStart(6)} -> ${String(t.outFeatures).padEnd(6)} x ${t.layers} layers`);
  out.push(`memory estimate for r=${cfg.lora.r} on ${cfg.lora.targets.join(',')}, ${cfg.quant.type}, seq ${cfg.train.seqLen} x ${cfg.train.microBatch}:`);
  for (const [dev, e] of Object.entries(est)) {
    out.push(`  ${dev}: ${formatBytes(e.totalBytes)} (${e.trainableParams.toLocaleString('en-US')} trainable)`);
    for (const p of e.parts) out.push(`    ${p.label.padEnd(44)} ${formatBytes(p.bytes).padStart(10)}`);
  }
  process.stdout.write(out.join('\n') + '\n');
  return EXIT.ok;
}

function cmdModels(args: string[]): number {
  const { values: o } = parse('models', args, { json: { type: 'boolean' } });
  if (o.help) return help('models');
  const models = listCachedModels();
  if (o.json) {
    process.stdout.write(JSON.stringify(models) + '\n');
    return EXIT.ok;
  }
  if (models.length === 0) log(`no models in ${hfHubCacheDir()}`);
  for (const m of models) {
    process.stdout.write(`${m.repoId.padEnd(40)} ${(m.arch || '?').padEnd(22)} ${formatBytes(m.sizeBytes).padStart(10)}  ${m.complete ? '' : '(incomplete) '}${m.path}\n`);
  }
  return EXIT.ok;
}

function help(cmd: string): number {
  process.stdout.write(HELP[cmd] + '\n');
  return EXIT.ok;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'train': return await cmdTrain(rest);
      case 'resume': return await cmdResume(rest);
      case 'prepare': return await cmdPrepare(rest);
      case 'eval': return await cmdEval(rest);
      case 'runs': return cmdRuns(rest);
      case 'inspect': return cmdInspect(rest);
      case 'models': return cmdModels(rest);
      case 'export': return await cmdExport(rest);
      case '--version': case '-v': process.stdout.write(`${VERSION}\n`); return EXIT.ok;
      case undefined: case '--help': case '-h': case 'help': return help('main');
      default:
        throw new CliError(`unknown command "${cmd}"`, 'commands: train, resume, prepare, eval, runs, inspect, models, export (lora-studio --help)');
    }
  } catch (e) {
    if (e instanceof CliError) {
      log(`lora-studio: ${e.message}${e.hint ? `\n  hint: ${e.hint}` : ''}`);
      return e.exitCode;
    }
    if (e instanceof ConfigError) {
      printIssues(e.issues.map((i) => ({ ...i, severity: 'error' as const })), e.source ?? 'config');
      return EXIT.badInput;
    }
    log(`lora-studio: internal error: ${(e as Error).stack ?? String(e)}`);
    return EXIT.internal;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
