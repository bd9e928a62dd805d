import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatErrorEvent, parseEventLine } from '../../src/core/runtime/events';
import { CancellationTokenSource, LineSplitter, execCommand, isProcessAlive, readPidFile, spawnProcess } from '../../src/core/runtime/process';
import { RUNTIME_ENV, RuntimeLocateError, bundledRuntimePath, locateRuntime, runtimeCandidate } from '../../src/core/runtime/locate';
import { writeFakeRuntime } from '../../src/core/fixtures/fakeRuntime';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'runtime-test-'));
}

function fakeRun(): { bin: string; runDir: string } {
  const dir = tmp();
  const bin = writeFakeRuntime(path.join(dir, 'bin'));
  const runDir = path.join(dir, 'run');
  fs.mkdirSync(runDir);
  fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ v: 1, train: { max_steps: 5 } }));
  return { bin, runDir };
}

test('events: valid events of every type parse; bad ones are rejected with a reason', () => {
  const ok = [
    { v: 1, type: 'hello', runtime: '0.1.0', protocol: 1, device: { kind: 'cpu', name: 'x', memory_total: 1 } },
    { v: 1, type: 'model', arch: 'llama', params_total: 1, params_trainable: 1, quant: 'nf4', bytes_base: 1, bytes_lora: 1, targets: ['q_proj'] },
    { v: 1, type: 'plan', steps_total: 1, tokens_per_step: 1, epochs: 1, train_tokens: 1, eval_tokens: 0 },
    { v: 1, type: 'step', step: 1, epoch: 0.1, loss: null, lr: 1, grad_norm: 1, tokens_per_s: 1, elapsed_s: 1, mem: { used: 1, peak: 1, device_used: 1, device_total: 1 }, extra: 'kept' },
    { v: 1, type: 'eval', step: 1, loss: 1.5 },
    { v: 1, type: 'checkpoint', step: 1, path: '/x' },
    { v: 1, type: 'log', level: 'info', message: 'hi' },
    { v: 1, type: 'error', code: 'config_field', message: 'bad', field: 'lora.r', line: 3 },
    { v: 1, type: 'done', status: 'completed', step: 3, adapter: '/a' },
  ];
  for (const e of ok) {
    const p = parseEventLine(JSON.stringify(e));
    assert.equal(p.kind, 'event', `${e.type}: ${JSON.stringify(p)}`);
  }
  const bad: [string, RegExp][] = [
    ['not json', /not JSON/],
    ['[1]', /not a JSON object/],
    ['{"type":"step"}', /"v" is undefined/],
    ['{"v":2,"type":"step"}', /expected 1/],
    ['{"v":1,"type":"eval","step":"1","loss":2}', /eval event: "step" must be a number/],
    ['{"v":1,"type":"step","step":1,"epoch":0,"loss":1,"lr":1,"grad_norm":1,"tokens_per_s":1,"elapsed_s":1,"mem":{"used":1}}', /mem.peak/],
    ['{"v":1,"type":"done","status":"exploded","step":1}', /status/],
    ['{"v":1,"type":"model","arch":"x","params_total":1,"params_trainable":1,"quant":"q","bytes_base":1,"bytes_lora":1,"targets":[1]}', /list of strings/],
  ];
  for (const [line, re] of bad) {
    const p = parseEventLine(line);
    assert.equal(p.kind, 'invalid', line);
    if (p.kind === 'invalid') assert.match(p.reason, re);
  }
  assert.equal(parseEventLine('{"v":1,"type":"future_thing","x":1}').kind, 'unknown');
  assert.equal(formatErrorEvent({ v: 1, type: 'error', code: 'c', message: 'r too big', file: 'run.json', line: 7, field: 'lora.r', hint: 'use 16' }),
    'r too big (run.json, line 7, field lora.r)\n  hint: use 16');
});

test('process: line splitter handles chunk boundaries, CRLF and split UTF-8', () => {
  const lines: string[] = [];
  const s = new LineSplitter((l) => lines.push(l));
  const bytes = Buffer.from('a\r\nbé', 'utf8');
  s.push(bytes.subarray(0, 5)); // splits the two bytes of "é"
  s.push(bytes.subarray(5));
  s.push('c\n\nlast');
  s.flush();
  assert.deepEqual(lines, ['a', 'béc', '', 'last']);
});

test('process: runs the fake runtime to completion with stdout lines, stderr log and pid file', async () => {
  const { bin, runDir } = fakeRun();
  const out: string[] = [];
  const err: string[] = [];
  const pidFile = path.join(runDir, 'runtime.pid');
  const p = spawnProcess(bin, ['train', '--run', runDir], { onStdoutLine: (l) => out.push(l), onStderrLine: (l) => err.push(l), pidFile });
  assert.equal(readPidFile(pidFile)?.pid, p.pid);
  const exit = await p.exited;
  assert.equal(exit.code, 0);
  const events = out.map(parseEventLine);
  assert.ok(events.every((e) => e.kind === 'event'));
  assert.deepEqual(events.map((e) => (e.kind === 'event' ? e.event.type : '')).filter((t) => t === 'step').length, 5);
  assert.match(err.join('\n'), /fake runtime: starting/);
  assert.equal(fs.existsSync(pidFile), false, 'pid file removed on exit');
  assert.equal(p.hasExited, true);
});

test('process: stop is graceful when the runtime honours {"cmd":"stop"}', async () => {
  const { bin, runDir } = fakeRun();
  const lines: string[] = [];
  const p = spawnProcess(bin, ['train', '--run', runDir], {
    env: { ...process.env, FAKE_STEPS: '100000', FAKE_STEP_MS: '5' },
    onStdoutLine: (l) => { lines.push(l); if (l.includes('"type":"step"') && lines.filter((x) => x.includes('"step"')).length === 3) void p.stop(); },
  });
  const exit = await p.exited;
  assert.equal(exit.code, 0);
  assert.equal(exit.stoppedBy, 'graceful');
  const done = JSON.parse(lines[lines.length - 1]);
  assert.equal(done.type, 'done');
  assert.equal(done.status, 'stopped');
});

test('process: stop escalates to SIGTERM, then SIGKILL, when the runtime does not react', async () => {
  const { bin, runDir } = fakeRun();
  const slow = { ...process.env, FAKE_STEPS: '100000', FAKE_STEP_MS: '50', FAKE_IGNORE_STOP: '1' };
  const started = (p: ReturnType<typeof spawnProcess>, lines: string[]) => new Promise<void>((resolve) => {
    const iv = setInterval(() => { if (lines.some((l) => l.includes('"plan"'))) { clearInterval(iv); resolve(); } }, 5);
    void p.exited.then(() => clearInterval(iv));
  });
  const l1: string[] = [];
  const p1 = spawnProcess(bin, ['train', '--run', runDir], { env: slow, stopTimeoutMs: 100, killTimeoutMs: 5000, onStdoutLine: (l) => l1.push(l) });
  await started(p1, l1);
  const e1 = await p1.stop();
  assert.equal(e1.stoppedBy, 'terminated');
  assert.equal(JSON.parse(l1[l1.length - 1]).status, 'stopped', 'SIGTERM is a graceful stop for the runtime');

  const l2: string[] = [];
  const p2 = spawnProcess(bin, ['train', '--run', runDir], { env: { ...slow, FAKE_IGNORE_TERM: '1' }, stopTimeoutMs: 100, killTimeoutMs: 100, onStdoutLine: (l) => l2.push(l) });
  await started(p2, l2);
  const e2 = await p2.stop();
  assert.equal(e2.stoppedBy, 'killed');
  assert.equal(e2.signal, 'SIGKILL');
});

test('process: a cancellation token stops the process; spawn errors reject', async () => {
  const { bin, runDir } = fakeRun();
  const cts = new CancellationTokenSource();
  const p = spawnProcess(bin, ['train', '--run', runDir], { env: { ...process.env, FAKE_STEPS: '100000' }, token: cts.token });
  setTimeout(() => cts.cancel(), 50);
  const exit = await p.exited;
  assert.equal(exit.stoppedBy, 'graceful');
  const missing = spawnProcess(path.join(tmp(), 'nope'), []);
  await assert.rejects(missing.exited, /ENOENT/);
  assert.deepEqual(await missing.stop(), { code: null, signal: null, stoppedBy: 'graceful' }, 'stop() settles for a process that never started');
  const r = await execCommand(process.execPath, ['-e', 'console.log("a b"); console.error("e"); process.exit(3)']);
  assert.deepEqual([r.code, r.stdout, r.stderr], [3, 'a b', 'e']);
});

test('process: liveness check by pid, and by command name against pid reuse', () => {
  assert.equal(isProcessAlive(process.pid), true);
  assert.equal(isProcessAlive(process.pid, process.execPath), true);
  if (process.platform === 'linux') assert.equal(isProcessAlive(process.pid, '/usr/bin/lora-runtime'), false);
  assert.equal(isProcessAlive(2 ** 22 + 12345), false);
});

test('locate: setting, then environment, then the bundled build', () => {
  assert.deepEqual(runtimeCandidate({ setting: '/a/rt', env: { [RUNTIME_ENV]: '/b/rt' } }), { path: '/a/rt', source: 'setting' });
  assert.deepEqual(runtimeCandidate({ setting: ' ', env: { [RUNTIME_ENV]: '/b/rt' } }), { path: '/b/rt', source: 'env' });
  assert.deepEqual(runtimeCandidate({ env: {}, root: '/r' }), { path: bundledRuntimePath('/r'), source: 'bundled' });
  assert.equal(bundledRuntimePath('/r'), '/r/native-runtime/build/lora-runtime');
});

test('locate: checks --version and explains missing, broken and stale runtimes', async () => {
  const bin = writeFakeRuntime(tmp());
  const info = await locateRuntime({ setting: bin });
  assert.deepEqual(info, { path: bin, source: 'setting', version: '0.0.0-fake', protocol: 1, cuda: false });
  const err = async (p: Promise<unknown>, code: string, re: RegExp) => {
    await assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof RuntimeLocateError, String(e));
      assert.equal(e.code, code);
      assert.match(`${e.message} ${e.hint}`, re);
      return true;
    });
  };
  await err(locateRuntime({ env: {}, root: tmp() }), 'missing', /not found.*bundled build.*npm run build:native/);
  await err(locateRuntime({ env: { [RUNTIME_ENV]: '/no/such/rt' } }), 'missing', /LORA_STUDIO_RUNTIME/);
  const notExec = path.join(tmp(), 'lora-runtime');
  fs.writeFileSync(notExec, '#!/bin/sh\n');
  await err(locateRuntime({ setting: notExec }), 'not_executable', /chmod \+x/);
  const liar = path.join(tmp(), 'lora-runtime');
  fs.writeFileSync(liar, '#!/bin/sh\necho hello\n', { mode: 0o755 });
  await err(locateRuntime({ setting: liar }), 'bad_version', /not a working lora-runtime/);
  const old = path.join(tmp(), 'lora-runtime');
  fs.writeFileSync(old, `#!/bin/sh\necho '{"version":"0.0.1","protocol":0,"cuda":false}'\n`, { mode: 0o755 });
  await err(locateRuntime({ setting: old }), 'stale', /protocol 0.*needs protocol 1.*rebuild/);
});
