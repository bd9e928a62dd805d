import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { writeTinyModel } from '../../src/core/fixtures/tinyModel';
import { writeFakeRuntime } from '../../src/core/fixtures/fakeRuntime';
import { demoCorpus, demoRows, writeDemoDataset } from '../../src/core/fixtures/demoData';
import { readShard, shardCounts } from '../../src/core/tokenize/shard';
import { listRuns, latestCheckpoint } from '../../src/core/runs/runs';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli.js');

interface Env { dir: string; model: string; data: string; runtime: string; runs: string }

function setup(): Env {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-test-'));
  const rows = demoRows(60);
  const model = path.join(dir, 'model');
  writeTinyModel(model, { hidden: 32, layers: 1, heads: 2, kvHeads: 1, tokenizerCorpus: demoCorpus(rows) });
  const data = writeDemoDataset(path.join(dir, 'demo.jsonl'), rows);
  return { dir, model, data, runtime: writeFakeRuntime(path.join(dir, 'bin')), runs: path.join(dir, 'runs') };
}

function cli(e: Env, args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [CLI, ...args], {
    cwd: e.dir, encoding: 'utf8', env: { ...process.env, LORA_STUDIO_RUNTIME: e.runtime, ...env },
  });
}

const trainArgs = (e: Env, ...more: string[]) => ['train', '--model', e.model, '--data', e.data, '--runs-dir', e.runs, '--preset', 'cpu-quick', '--seq-len', '128', ...more];

test('cli: help, version and unknown commands', () => {
  const e = setup();
  const h = cli(e, ['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /commands:[\s\S]*train[\s\S]*resume[\s\S]*runs/);
  assert.match(cli(e, ['train', '--help']).stdout, /--model DIR[\s\S]*--quant none\|nf4\|fp4\|int8/);
  const bad = cli(e, ['frobnicate']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown command "frobnicate"/);
  const badFlag = cli(e, ['train', '--bogus']);
  assert.equal(badFlag.status, 2);
  assert.match(badFlag.stderr, /Unknown option '--bogus'/);
});

test('cli: train prepares the data, writes run.json, follows the runtime to completion', () => {
  const e = setup();
  const r = cli(e, trainArgs(e, '--max-steps', '7', '--eval-split', '0.1', '--r', '4', '--targets', 'q_proj,v_proj'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /plan: 7 steps/);
  assert.match(r.stderr, /done: 7 steps, final loss/);
  const runs = listRuns(e.runs);
  assert.equal(runs.length, 1);
  assert.equal(runs[0].status, 'completed');
  const runDir = runs[0].dir;
  const run = JSON.parse(fs.readFileSync(path.join(runDir, 'run.json'), 'utf8'));
  assert.equal(run.v, 1);
  assert.equal(run.model, e.model);
  assert.deepEqual(run.data, { train: 'data/train.bin', eval: 'data/eval.bin' });
  assert.deepEqual(run.lora.targets, ['q_proj', 'v_proj']);
  assert.equal(run.lora.r, 4);
  assert.equal(run.train.max_steps, 7);
  assert.equal(run.train.seq_len, 128);
  assert.equal(run.quant.type, 'none');
  assert.equal(run.meta.config.data, e.data);
  const shard = readShard(path.join(runDir, 'data', 'train.bin'));
  const counts = shardCounts(shard);
  assert.ok(counts.documents >= 50 && counts.targets > 0);
  assert.ok(fs.existsSync(path.join(runDir, 'events.jsonl')));
  assert.match(fs.readFileSync(path.join(runDir, 'runtime.log'), 'utf8'), /fake runtime: starting/);
  assert.equal(fs.existsSync(path.join(runDir, 'runtime.pid')), false);
  const list = cli(e, ['runs', '--runs-dir', e.runs]);
  assert.match(list.stdout, new RegExp(`${runs[0].id}\\s+completed\\s+7/7`));
});

test('cli: --json prints only validated runtime events on stdout', () => {
  const e = setup();
  const r = cli(e, trainArgs(e, '--max-steps', '3', '--json'));
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.type), ['hello', 'model', 'plan', 'step', 'step', 'step', 'done']);
  assert.ok(lines.every((l) => l.v === 1));
});

test('cli: Ctrl-C stops gracefully with a checkpoint, and resume finishes the run', async () => {
  const e = setup();
  const child = spawn(process.execPath, [CLI, ...trainArgs(e, '--json')], {
    cwd: e.dir, env: { ...process.env, LORA_STUDIO_RUNTIME: e.runtime, FAKE_STEPS: '1000', FAKE_STEP_MS: '30' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let signalled = false;
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    if (!signalled && (out.match(/"type":"step"/g) ?? []).length >= 3) {
      signalled = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  assert.equal(code, 0);
  const done = out.trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.type === 'done');
  assert.deepEqual(done.map((d) => d.status), ['stopped']);
  const [run] = listRuns(e.runs);
  assert.equal(run.status, 'stopped');
  const ck = latestCheckpoint(run.dir);
  assert.ok(ck && ck.step >= 3);

  const resumed = cli(e, ['resume', run.dir], { FAKE_STEPS: '1000', FAKE_STEP_MS: '1' });
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`resuming .* from step ${ck!.step}`));
  assert.equal(listRuns(e.runs)[0].status, 'completed');
  const again = cli(e, ['resume', run.dir]);
  assert.match(again.stderr, /already completed/);
});

test('cli: bad config, bad model, runtime errors and a missing runtime exit 2 with clear messages', () => {
  const e = setup();
  const badR = cli(e, trainArgs(e, '--r', '0', '--targets', 'q_proj,lm_head'));
  assert.equal(badR.status, 2);
  assert.match(badR.stderr, /lora\.r: is 0, outside 1\.\.4096/);
  assert.match(badR.stderr, /lora\.targets: names "lm_head", which this model does not have/);
  assert.equal(fs.existsSync(e.runs), false, 'no run folder for a rejected config');

  const cfgFile = path.join(e.dir, 'cfg.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ lora: { rank: 8 } }));
  const badCfg = cli(e, [...trainArgs(e), '--config', cfgFile]);
  assert.equal(badCfg.status, 2);
  assert.match(badCfg.stderr, /cfg\.json: error: lora\.rank: is not a known setting/);

  fs.writeFileSync(cfgFile, '{\n  "lora": {\n    "r": 8,\n  }\n}\n');
  const badJson = cli(e, [...trainArgs(e), '--config', cfgFile]);
  assert.equal(badJson.status, 2);
  assert.match(badJson.stderr, /cfg\.json:4:3: not valid JSON/);

  const noModel = cli(e, ['train', '--model', path.join(e.dir, 'nope'), '--data', e.data]);
  assert.equal(noModel.status, 2);
  assert.match(noModel.stderr, /model folder not found/);

  const failing = cli(e, trainArgs(e), { FAKE_FAIL: 'config' });
  assert.equal(failing.status, 2);
  assert.match(failing.stderr, /error: lora\.r must be at most 64 .*field lora\.r\)\n\s+hint: use r <= 64/);
  assert.equal(listRuns(e.runs)[0].status, 'failed');

  const noRuntime = cli(e, trainArgs(e), { LORA_STUDIO_RUNTIME: path.join(e.dir, 'missing-runtime') });
  assert.equal(noRuntime.status, 2);
  assert.match(noRuntime.stderr, /lora-runtime not found .*LORA_STUDIO_RUNTIME/);

  const empty = path.join(e.dir, 'empty.jsonl');
  fs.writeFileSync(empty, '{"nonsense": 1}\n');
  const before = fs.readdirSync(e.runs).length;
  const badData = cli(e, ['train', '--model', e.model, '--data', empty, '--runs-dir', e.runs]);
  assert.equal(badData.status, 2);
  assert.match(badData.stderr, /empty\.jsonl/);
  assert.equal(fs.readdirSync(e.runs).length, before, 'the run folder of a dataset that cannot be prepared is removed');

  const noData = cli(e, ['train', '--model', e.model, '--data', path.join(e.dir, 'none.jsonl'), '--runs-dir', e.runs]);
  assert.equal(noData.status, 2);
  assert.match(noData.stderr, /dataset not found/);
});

test('cli: prepare, inspect and eval', () => {
  const e = setup();
  const out = path.join(e.dir, 'prepared');
  const p = cli(e, ['prepare', '--model', e.model, '--data', e.data, '--out', out, '--seq-len', '128', '--eval-split', '0.2', '--json']);
  assert.equal(p.status, 0, p.stderr);
  const summary = JSON.parse(p.stdout);
  assert.equal(summary.trainPath, path.join(out, 'train.bin'));
  assert.ok(fs.existsSync(path.join(out, 'eval.bin')));
  const train = shardCounts(readShard(path.join(out, 'train.bin')));
  assert.equal(summary.summary.train.trainedTokens, train.targets);

  const i = cli(e, ['inspect', '--model', e.model, '--json']);
  assert.equal(i.status, 0, i.stderr);
  const info = JSON.parse(i.stdout);
  assert.equal(info.model.architecture, 'LlamaForCausalLM');
  assert.ok(info.estimate.cuda.totalBytes > info.estimate.cpu.totalBytes, 'CUDA adds its context');
  assert.match(cli(e, ['inspect', '--model', e.model]).stdout, /target modules:\n\s+q_proj\s+32 ->/);

  const ev = cli(e, ['eval', '--model', e.model, '--data', path.join(out, 'train.bin'), '--json']);
  assert.equal(ev.status, 0, ev.stderr);
  assert.deepEqual(JSON.parse(ev.stdout).base, { loss: 2.5, tokens: train.targets });
  const evData = cli(e, ['eval', '--model', e.model, '--data', e.data, '--seq-len', '128', '--json']);
  assert.equal(evData.status, 0, evData.stderr);
  assert.ok(JSON.parse(evData.stdout).base.tokens > train.targets, 'a dataset file is prepared whole, without a split');
});
