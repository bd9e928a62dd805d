import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import {
  EventsTail, createRunDir, digestEvents, latestCheckpoint, listRuns, makeRunId, summarizeRun, writeRunJson,
} from '../../src/core/runs/runs';
import { parseEventLine, RuntimeEvent } from '../../src/core/runtime/events';
import { ProgressTracker, formatDuration, formatProgress } from '../../src/core/runs/progress';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'runs-test-'));
}

const ev = (o: Record<string, unknown>) => JSON.stringify({ v: 1, ...o }) + '\n';
const step = (n: number, loss: number) => ev({ type: 'step', step: n, epoch: n / 10, loss, lr: 1e-3, grad_norm: 1, tokens_per_s: 100, elapsed_s: n * 2, mem: { used: 1, peak: 2, device_used: 3, device_total: 4 } });

test('runs: ids sort by time and are unique within a second', () => {
  const t = new Date('2026-11-23T05:04:03.123Z');
  assert.equal(makeRunId('My Model / chat v2!', t), '20261123-050403-my-model-chat-v2');
  assert.ok(makeRunId('z', new Date('2026-01-01T00:00:00Z')) < makeRunId('a', new Date('2026-01-01T00:00:01Z')));
  const root = tmp();
  const a = createRunDir(root, 'x', t);
  const b = createRunDir(root, 'x', t);
  assert.notEqual(a.id, b.id);
  assert.equal(b.id, `${a.id}-2`);
  assert.ok(fs.statSync(path.join(b.dir, 'data')).isDirectory());
});

test('runs: EventsTail returns only complete new lines, keeps partial ones, survives truncation', () => {
  const file = path.join(tmp(), 'events.jsonl');
  const tail = new EventsTail(file);
  assert.deepEqual(tail.read(), [], 'missing file is empty');
  fs.writeFileSync(file, step(1, 2.0) + step(2, 1.9).slice(0, 20));
  assert.deepEqual(tail.read().map((e) => e.type), ['step']);
  fs.appendFileSync(file, step(2, 1.9).slice(20) + 'garbage\n' + ev({ type: 'eval', step: 2, loss: 1.8 }));
  const next = tail.read();
  assert.deepEqual(next.map((e) => [e.type, (e as { step: number }).step]), [['step', 2], ['eval', 2]]);
  assert.equal(tail.invalid.length, 1);
  assert.match(tail.invalid[0].reason, /not JSON/);
  assert.deepEqual(tail.read(), [], 'nothing new');
  fs.writeFileSync(file, step(1, 5));
  assert.deepEqual(tail.read().map((e) => (e as { loss: number }).loss), [5], 'a replaced file is read from the start');
  const big = Array.from({ length: 3000 }, (_, i) => step(i + 1, 1)).join('');
  fs.writeFileSync(file, big);
  const t2 = new EventsTail(file);
  assert.equal(t2.read().length, 3000, 'reads across 64 KiB chunk boundaries');
  assert.equal(t2.position, Buffer.byteLength(big));
});

test('runs: digest of events gives status, steps, losses, duration; last done wins after resume', () => {
  const parse = (s: string) => s.trim().split('\n').map((l) => { const p = parseEventLine(l); assert.equal(p.kind, 'event'); return (p as { event: RuntimeEvent }).event; });
  const first = ev({ type: 'plan', steps_total: 10, tokens_per_step: 1, epochs: 1, train_tokens: 1, eval_tokens: 0 }) + step(1, 3) + step(2, 2.5) +
    ev({ type: 'checkpoint', step: 2, path: '/r/checkpoints/step-2' }) + ev({ type: 'done', status: 'stopped', step: 2 });
  let d = digestEvents(parse(first));
  assert.deepEqual([d.status, d.step, d.stepsTotal, d.finalLoss, d.durationS, d.lastCheckpoint], ['stopped', 2, 10, 2.5, 4, '/r/checkpoints/step-2']);
  const resumed = first + ev({ type: 'plan', steps_total: 10, tokens_per_step: 1, epochs: 1, train_tokens: 1, eval_tokens: 0 }) + step(3, 2) + ev({ type: 'eval', step: 3, loss: 2.2 }) + ev({ type: 'done', status: 'completed', step: 3, adapter: '/r/adapter' });
  d = digestEvents(parse(resumed));
  assert.deepEqual([d.status, d.step, d.finalLoss, d.lastEvalLoss, d.adapter], ['completed', 3, 2, 2.2, '/r/adapter']);
  assert.equal(d.durationS, 4 + 6, 'durations of both sessions add up');
  d = digestEvents(parse(ev({ type: 'error', code: 'x', message: 'bad r', hint: 'smaller' }) + ev({ type: 'done', status: 'failed', step: 0 })));
  assert.deepEqual([d.status, d.error], ['failed', { message: 'bad r', hint: 'smaller' }]);
});

test('runs: list shows created, interrupted, completed and live runs, newest first', async () => {
  const root = tmp();
  const mk = (name: string, sec: number, events: string | null) => {
    const { dir } = createRunDir(root, name, new Date(Date.UTC(2026, 0, 1, 0, 0, sec)));
    writeRunJson(dir, { v: 1, model: '/m', meta: { name, created_at: `t${sec}` } });
    if (events !== null) fs.writeFileSync(path.join(dir, 'events.jsonl'), events);
    return dir;
  };
  mk('created', 1, null);
  mk('crashed', 2, step(1, 3));
  const done = mk('done', 3, step(1, 3) + step(2, 1.5) + ev({ type: 'done', status: 'completed', step: 2, adapter: '/x/adapter' }));
  const live = mk('live', 4, step(1, 3));
  fs.mkdirSync(path.join(root, 'not-a-run'));
  // a live "runtime": a child process whose command line names itself lora-runtime
  const child = spawn('sleep', ['30'], { argv0: 'lora-runtime' });
  try {
    // The child carries its own argv only once it has exec'd `sleep`; on a loaded machine
    // /proc can still show the parent's command line for a moment after spawn().
    await new Promise((r) => child.once('spawn', r));
    const argv0 = () => { try { return fs.readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')[0]; } catch { return ''; } };
    for (let i = 0; i < 200 && argv0() !== 'lora-runtime'; i++) await new Promise((r) => setTimeout(r, 25));
    fs.writeFileSync(path.join(live, 'runtime.pid'), JSON.stringify({ pid: child.pid, command: '/opt/lora-runtime', started_at: 'x' }));
    const list = listRuns(root);
    assert.deepEqual(list.map((r) => [r.name, r.status]), [['live', 'running'], ['done', 'completed'], ['crashed', 'interrupted'], ['created', 'created']]);
    assert.equal(list[0].pid, child.pid);
    const d = list[1];
    assert.deepEqual([d.step, d.finalLoss, d.durationS, d.adapter, d.model, d.startedAt], [2, 1.5, 4, '/x/adapter', '/m', 't3']);
  } finally {
    child.kill('SIGKILL');
  }
  await new Promise((r) => child.once('exit', r));
  assert.equal(summarizeRun(live).status, 'interrupted', 'a dead pid is not a running run');
  assert.equal(summarizeRun(done).status, 'completed');
  assert.deepEqual(listRuns(path.join(root, 'missing')), []);
});

test('runs: latest complete checkpoint', () => {
  const dir = tmp();
  assert.equal(latestCheckpoint(dir), null);
  for (const s of [2, 10, 4]) {
    fs.mkdirSync(path.join(dir, 'checkpoints', `step-${s}`), { recursive: true });
    fs.writeFileSync(path.join(dir, 'checkpoints', `step-${s}`, 'adapter_model.safetensors'), 'x');
  }
  fs.mkdirSync(path.join(dir, 'checkpoints', 'step-12.tmp'));
  fs.mkdirSync(path.join(dir, 'checkpoints', 'step-11'));
  assert.equal(latestCheckpoint(dir)!.step, 10);
});

test('progress: ETA from the pace of the current session, also after a resume; formatting', () => {
  const p = new ProgressTracker();
  const stepEv = (step: number, elapsed: number, loss: number) => JSON.parse(step_(step, elapsed, loss)) as RuntimeEvent;
  const step_ = (n: number, el: number, loss: number) => JSON.stringify({ v: 1, type: 'step', step: n, epoch: 0, loss, lr: 1e-3, grad_norm: 1, tokens_per_s: 500, elapsed_s: el, mem: { used: 1, peak: 2, device_used: 3, device_total: 4 } });
  p.update({ v: 1, type: 'plan', steps_total: 100, tokens_per_step: 1, epochs: 1, train_tokens: 1, eval_tokens: 0 });
  p.update(stepEv(1, 2, 4));
  p.update(stepEv(10, 20, 2));
  assert.equal(p.state.etaS, 90 * 2);
  assert.ok(Math.abs(p.state.smoothedLoss! - (0.9 * 4 + 0.1 * 2)) < 1e-12);
  // resumed at step 50: elapsed restarts at the new session
  p.update({ v: 1, type: 'plan', steps_total: 100, tokens_per_step: 1, epochs: 1, train_tokens: 1, eval_tokens: 0 });
  p.update(stepEv(51, 1, 1.5));
  p.update(stepEv(60, 5, 1.4));
  assert.equal(p.state.etaS, (40 * 5) / 10);
  p.update({ v: 1, type: 'eval', step: 60, loss: 1.45 });
  assert.equal(formatProgress(p.state), 'step 60/100 · loss 1.4000 · eval 1.4500 · 500 tok/s · ETA 20s');
  assert.match(formatProgress(p.state, 10), /^\[######\.\.\.\.\]  60% · step 60\/100/);
  p.update({ v: 1, type: 'done', status: 'completed', step: 100, adapter: '/a' });
  assert.deepEqual([p.state.status, p.state.etaS, p.state.adapter], ['completed', 0, '/a']);
  assert.deepEqual([formatDuration(59.6), formatDuration(61), formatDuration(3 * 3600 + 5 * 60), formatDuration(null)], ['1m00s', '1m01s', '3h05m', '--']);
});
