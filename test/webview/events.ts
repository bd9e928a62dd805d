// A run's event stream as the runtime writes it to events.jsonl (DESIGN.md "Events"):
// hello, model, plan, then step lines with occasional eval and checkpoint lines, and done.
// Generated deterministically so the charts' input is the same in every test run.

export interface RecordedRun { lines: Record<string, unknown>[] }

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function recordedRun(opts: { steps: number; stepsTotal?: number; evalEvery?: number; seed?: number; status?: 'completed' | 'stopped' | 'failed' | null }): RecordedRun {
  const rand = rng(opts.seed ?? 7);
  const total = opts.stepsTotal ?? opts.steps;
  const warmup = Math.max(1, Math.floor(total * 0.05));
  const peakLr = 2e-4;
  const lines: Record<string, unknown>[] = [
    { v: 1, event: 'hello', runtime: '0.1.0', protocol: 1, device: { kind: 'cuda', name: 'NVIDIA GeForce RTX 4090', memory_total: 25757220864 } },
    { v: 1, event: 'model', arch: 'llama', params_total: 1235814400, params_trainable: 11272192, quant: 'nf4', bytes_base: 1010000000, bytes_lora: 45088768,
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] },
    { v: 1, event: 'plan', steps_total: total, tokens_per_step: 16384, epochs: 1, train_tokens: total * 16384, eval_tokens: 40960 },
  ];
  const deviceTotal = 25757220864;
  let peak = 0;
  for (let step = 1; step <= opts.steps; step++) {
    const progress = step / total;
    const lr = step <= warmup ? (peakLr * step) / warmup : peakLr * 0.5 * (1 + Math.cos(Math.PI * (step - warmup) / Math.max(1, total - warmup)));
    const loss = 0.9 + 1.6 * Math.exp(-4 * progress) + (rand() - 0.5) * 0.25;
    const used = 6.1e9 + (rand() - 0.5) * 4e8 + (step < 5 ? step * 2e8 : 1e9);
    peak = Math.max(peak, used + 3e8);
    lines.push({ v: 1, event: 'step', step, epoch: progress, loss, lr, grad_norm: 0.4 + rand() * 0.3,
                 tokens_per_s: 5200 + (rand() - 0.5) * 600, elapsed_s: step * 3.1,
                 mem: { used, peak, device_used: used + 8e8, device_total: deviceTotal } });
    if (opts.evalEvery && step % opts.evalEvery === 0) {
      lines.push({ v: 1, event: 'eval', step, loss: 1.0 + 1.4 * Math.exp(-3.5 * progress) });
    }
  }
  if (opts.status) {
    lines.push({ v: 1, event: 'done', status: opts.status, step: opts.steps, ...(opts.status === 'completed' ? { adapter: '/runs/run-1/adapter' } : {}) });
  }
  return { lines };
}
