#!/usr/bin/env python3
"""The GPU benchmark: lora-runtime's CUDA path against PEFT + transformers on the same GPU, in
the same call, with the same settings, on Llama-3.2-1B and Llama-3.1-8B shapes.

  python3 scripts/gpu/bench_gpu.py [--shapes 1b,8b] [--steps 8] [--warmup 3] [--skip-peft]
                                   [--skip-ours] [--skip-cuda-bench] [--skip-memory]
                                   [--micro-batch 4] [--seq-len 2048] [--budget 540]
                                   [--cache DIR] [--runtime PATH] [--peak-tflops X]

Per shape (random-initialised HF models from make_model.py, bf16, kept in --cache):
  ours nf4   lora-runtime train, quant nf4 + double quant, compute.device cuda:0, bf16
  ours bf16  the same with quant none (bf16 weights)
  PEFT       transformers (bf16, attn_implementation="sdpa", gradient checkpointing) +
             PEFT LoRA + torch.optim.AdamW on the LoRA parameters, in a child process
all with LoRA r=16, alpha=16, dropout 0 on q,k,v,o,gate,up,down; seq_len 2048; micro-batch 4
(8192 tokens a step), grad_accum 1; gradient checkpointing on; AdamW lr 1e-4, clipping 1.0; a
packed shard of random tokens, one document per row so every row is full. The first --warmup
steps are left out of the timings. Ours: the median `tokens_per_s` of its `step` events and
the largest `mem.peak`; PEFT: a timed loop (synchronised) and torch.cuda.max_memory_allocated.
For 8b, a separate run with micro-batch 1 measures the nf4 peak at 1 x 2048 tokens.
cuda-bench (native-runtime/bench/cuda) adds dequantization bandwidth and GEMM TFLOP/s.

MFU = tokens/s * (4N + 6 L T d) / peak dense bf16 FLOP/s, with N the parameters used in matrix
products per token (decoder linear weights and the LM head), L layers, T = seq_len, d = hidden:
4N is the frozen base's forward (2N) and input-gradient backward (2N; no weight gradients), and
6 L T d the causal attention's score and value products, forward and backward. Recomputation
under gradient checkpointing and the LoRA products (<1%) are not counted.

Results are printed as they come and written to bench/results/gpu-<date>-<gpu>.txt (and
copied to $OUT when that is set, so the device tool brings them back). --budget (seconds)
stops starting new runs when the time is nearly up, so one call fits the 10-minute limit: run
the shapes in separate calls (--shapes 1b, then --shapes 8b).
"""
import argparse
import datetime
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import lstk  # noqa: E402
import make_model  # noqa: E402

SHAPES = {"1b": "llama-1b", "8b": "llama-8b"}
RANK = 16
ALPHA = 16
LR = 1e-4
GIB = float(1 << 30)

# Dense bf16 tensor-core peaks (vendor datasheets, without sparsity), by GPU name.
PEAKS = [("H200", 989.4), ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("A100", 312.0)]

TARGETS_TEXT = [
    "ours bf16 >= 2x PEFT tokens/s (each shape)",
    "ours nf4 step time <= 1.10x ours bf16 (each shape)",
    "8b nf4 peak VRAM <= 9 GiB at 1 x 2048 tokens",
    "MFU >= 40% on 8b (ours bf16)",
    "nf4 dequantization >= 2.5 TB/s (cuda-bench, with double quant)",
]


def log(msg):
    print(msg, flush=True)


def peak_tflops(name, override):
    if override:
        return override
    upper = name.upper()
    for key, value in PEAKS:
        if all(part in upper for part in key.split()):
            return value
    return None


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


class Report:
    """Everything measured, rewritten to the results file after each measurement."""

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self.lines = []
        self.raw = []

    def add(self, line, raw=None):
        log(line)
        self.lines.append(line)
        if raw is not None:
            self.raw.append(raw)
        self.write()

    def write(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            f.write("\n".join(self.header) + "\n\n")
            f.write("\n".join(self.lines) + "\n\n")
            f.write("raw results (one JSON object a line):\n")
            for r in self.raw:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        os.replace(self.path + ".tmp", self.path)
        out = os.environ.get("OUT")
        if out and os.path.isdir(out):
            shutil.copy(self.path, os.path.join(out, os.path.basename(self.path)))


def find_build():
    return os.environ.get("LORA_GPU_BUILD", os.path.join(ROOT, "native-runtime", "build-gpu"))


def ensure_binaries(runtime_arg, need_bench):
    build = find_build()
    runtime = runtime_arg or os.path.join(build, "lora-runtime")
    if not os.path.exists(runtime):
        log("bench_gpu: %s is missing; building (scripts/gpu/run_checks.sh --build-only) ..." % runtime)
        subprocess.run(["bash", os.path.join(HERE, "run_checks.sh"), "--build-only"], check=False)
    if not os.path.exists(runtime):
        raise SystemExit("bench_gpu: no lora-runtime at %s" % runtime)
    bench = os.path.join(os.path.dirname(runtime), "cuda-bench")
    if need_bench and not os.path.exists(bench):
        subprocess.run(["cmake", "--build", os.path.dirname(runtime), "--target", "cuda-bench", "-j",
                        str(os.cpu_count() or 4)], check=False, stdout=subprocess.DEVNULL)
    return runtime, bench if os.path.exists(bench) else None


def shard_for(cache, vocab, seq_len, rows, seed=1):
    """One document of seq_len random tokens per row: every packed row is full, so the runtime
    and PEFT process the same tokens per step with no padding and plain causal attention."""
    path = os.path.join(cache, "shards", "random-v%d-s%d-r%d.bin" % (vocab, seq_len, rows))
    if not os.path.exists(path):
        lstk.write_shard(path, lstk.random_docs(rows, seq_len, vocab, seed), vocab)
    return path


def run_ours(runtime, cache, tag, model, shard, quant, micro_batch, seq_len, steps, warmup, timeout, offload=False):
    run_dir = os.path.join(cache, "runs", tag)
    shutil.rmtree(run_dir, ignore_errors=True)
    lstk.write_run(run_dir, model, train_shard=shard,
                   lora={"r": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": list(lstk.LLAMA_TARGETS)},
                   quant={"type": quant, "double_quant": quant != "none", "block_size": 64},
                   train={"seq_len": seq_len, "micro_batch": micro_batch, "grad_accum": 1,
                          "max_steps": warmup + steps, "lr": LR, "schedule": "constant", "warmup_steps": 0,
                          "weight_decay": 0.0, "max_grad_norm": 1.0, "grad_checkpointing": True, "seed": 42,
                          "eval_every": 0, "save_every": 0},
                   compute={"device": "cuda:0", "dtype": "bf16", "offload_activations": offload})

    def progress(ev):
        if ev.get("type") == "step":
            mem = ev.get("mem") or {}
            log("    step %s: loss %s, %.0f tokens/s, peak %.2f GiB" % (
                ev.get("step"), ev.get("loss"), ev.get("tokens_per_s") or 0, (mem.get("peak") or 0) / GIB))
        elif ev.get("type") == "error":
            log("    error: %s" % ev.get("message"))

    t0 = time.time()
    code, events = lstk.train(runtime, run_dir, timeout=timeout, log=progress)
    wall = time.time() - t0
    if code != 0:
        return {"ok": False, "error": "exit %s: %s" % (code, lstk.error_text(events)), "wall_s": wall}
    hello = next((e for e in events if e.get("type") == "hello"), {})
    kind = (hello.get("device") or {}).get("kind")
    if kind != "cuda":
        return {"ok": False, "error": "the run's hello event says device kind %r, not cuda" % kind, "wall_s": wall}
    steps_ev = [e for e in events if e.get("type") == "step"]
    timed = steps_ev[warmup:] if len(steps_ev) > warmup else steps_ev[-1:]
    tps = statistics.median(e["tokens_per_s"] for e in timed)
    tokens = statistics.median(e.get("tokens", micro_batch * seq_len) for e in timed)
    peak = max((e.get("mem") or {}).get("peak") or 0 for e in steps_ev)
    model_ev = next((e for e in events if e.get("type") == "model"), {})
    return {"ok": True, "tokens_per_s": tps, "step_s": tokens / tps, "peak_bytes": peak,
            "steps_timed": len(timed), "bytes_base": model_ev.get("bytes_base"), "wall_s": wall,
            "device": (hello.get("device") or {}).get("name"), "loss_last": steps_ev[-1].get("loss")}


def peft_worker(spec):
    """Runs in a child process: PEFT + transformers training, timed; prints one JSON line."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec["seed"])
    torch.cuda.reset_peak_memory_stats()
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype": torch.bfloat16} if major >= 5 else {"torch_dtype": torch.bfloat16}
    try:
        # Straight onto the GPU (accelerate's loader): an 8B model through host memory takes longer.
        model = AutoModelForCausalLM.from_pretrained(spec["model"], attn_implementation="sdpa", device_map={"": 0},
                                                     **kw)
    except (ImportError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(spec["model"], attn_implementation="sdpa", **kw).to("cuda")
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(lstk.LLAMA_TARGETS),
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    mb, seq, vocab = spec["micro_batch"], spec["seq_len"], spec["vocab"]
    gen = torch.Generator(device="cuda").manual_seed(spec["seed"])

    def step():
        ids = torch.randint(0, vocab, (mb, seq), device="cuda", generator=gen)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(spec["warmup"]):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = None
    for _ in range(spec["steps"]):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = spec["steps"] * mb * seq
    print(json.dumps({"ok": True, "tokens_per_s": tokens / seconds, "step_s": seconds / spec["steps"],
                      "peak_bytes": torch.cuda.max_memory_allocated(), "loss_last": float(loss),
                      "lora_param_dtype": str(params[0].dtype), "trainable": sum(p.numel() for p in params)}),
          flush=True)


def run_peft(model, vocab, micro_batch, seq_len, steps, warmup, timeout):
    spec = {"model": model, "vocab": vocab, "micro_batch": micro_batch, "seq_len": seq_len, "steps": steps,
            "warmup": warmup, "seed": 0}
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--peft-worker", json.dumps(spec)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out after %.0f s" % timeout, "wall_s": time.time() - t0}
    lines = [l for l in r.stdout.strip().split("\n") if l.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"ok": False, "error": "exit %d: %s" % (r.returncode, r.stderr[-1500:]), "wall_s": time.time() - t0}
    out = json.loads(lines[-1])
    out["wall_s"] = time.time() - t0
    return out


def run_cuda_bench(bench, tokens, timeout):
    try:
        r = subprocess.run([bench, "--tokens", str(tokens)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return [json.loads(l) for l in out.split("\n") if l.startswith("{")] + [
            {"bench": "error", "message": "timed out after %.0f s" % timeout}]
    rows = []
    for line in r.stdout.split("\n"):
        if line.startswith("{"):
            rows.append(json.loads(line))
    if r.returncode != 0:
        rows.append({"bench": "error", "message": "exit %d: %s" % (r.returncode, r.stderr[-1500:])})
    return rows


def mfu(tps, preset, seq_len, peak):
    if not peak or not tps:
        return None
    p = make_model.PRESETS[preset]
    flops_per_token = 4 * make_model.matmul_params(preset) + 6 * p["layers"] * seq_len * p["hidden"]
    return tps * flops_per_token / (peak * 1e12)


def fmt(x, spec="%.0f", none="-"):
    return none if x is None else spec % x


def main(argv=None):
    p = argparse.ArgumentParser(description="lora-runtime vs PEFT on the GPU (see the module docstring).")
    p.add_argument("--shapes", default="1b,8b", help="comma-separated: 1b, 8b")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timings")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--skip-peft", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-cuda-bench", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="skip the 8b nf4 run at 1 x seq_len")
    p.add_argument("--skip-offload", action="store_true",
                   help="skip the nf4 run with compute.offload_activations (its VRAM saving and time cost)")
    p.add_argument("--budget", type=float, default=540, help="seconds; no new run starts after this")
    p.add_argument("--cache", default=os.environ.get("LORA_GPU_CACHE", "/tmp/lora-gpu-cache"),
                   help="models, shards and run folders (reused across runs)")
    p.add_argument("--runtime", help="lora-runtime binary (default: native-runtime/build-gpu/lora-runtime)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU, when its name is not known")
    p.add_argument("--peft-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.peft_worker:
        peft_worker(json.loads(a.peft_worker))
        return 0

    t_start = time.time()
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            p.error("unknown shape %r (have %s)" % (s, ", ".join(SHAPES)))
    import torch
    import transformers

    if not torch.cuda.is_available():
        log("bench_gpu: no CUDA GPU visible to PyTorch; nothing to measure")
        return 1
    import peft

    gpu = torch.cuda.get_device_name(0)
    peak = peak_tflops(gpu, a.peak_tflops)
    runtime, bench = ensure_binaries(a.runtime, not a.skip_cuda_bench)
    version = subprocess.run([runtime, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True).stdout.strip()
    except OSError:
        smi = ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = os.path.join(ROOT, "bench", "results", "gpu-%s-%s.txt" % (date, slug(gpu)))
    tokens_per_step = a.micro_batch * a.seq_len
    header = [
        "LoRA Studio GPU benchmark, %s UTC" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "GPU: %s (%s); peak dense bf16 %s TFLOP/s" % (gpu, smi or "nvidia-smi unavailable",
                                                    fmt(peak, "%.1f", "unknown (pass --peak-tflops)")),
        "lora-runtime: %s (%s); torch %s, transformers %s, peft %s" % (version, runtime, torch.__version__,
                                                                    transformers.__version__, peft.__version__),
        "settings: LoRA r=%d alpha=%d dropout 0 on q,k,v,o,gate,up,down; seq_len %d, micro-batch %d (%d tokens/step), "
        "grad_accum 1, gradient checkpointing, AdamW lr %g, clip 1.0; %d warm-up + %d timed steps; random-token "
        "packed shard, one document per row" % (RANK, ALPHA, a.seq_len, a.micro_batch, tokens_per_step, LR, a.warmup,
                                               a.steps),
        "MFU = tokens/s * (4N + 6 L T d) / peak (N: decoder linear weights + LM head)",
    ]
    report = Report(path, header)
    for h in header:
        log(h)
    os.makedirs(a.cache, exist_ok=True)

    def remaining():
        return a.budget - (time.time() - t_start)

    def out_of_time(what):
        if remaining() < 30:
            report.add("SKIPPED %s: the --budget of %.0f s is spent" % (what, a.budget))
            return True
        return False

    results = {}
    dequant_tbps = None
    if not a.skip_cuda_bench:
        if bench is None:
            report.add("cuda-bench: not built (cmake --build BUILD --target cuda-bench failed); skipped")
        elif not out_of_time("cuda-bench"):
            log("== cuda-bench ==")
            for row in run_cuda_bench(bench, tokens_per_step, max(60, remaining())):
                if row.get("bench") == "dequant":
                    report.add("dequant %-5s%s %dx%d: %.3f ms, %.2f TB/s" % (
                        row["type"], " +dq" if row["double_quant"] else "    ", row["rows"], row["cols"], row["ms"],
                        row["tb_per_s"]), row)
                    if row["type"] == "nf4" and row["double_quant"]:
                        dequant_tbps = row["tb_per_s"]
                elif row.get("bench") == "gemm":
                    report.add("gemm %-22s %-8s M=%-6d N=%-6d K=%-6d %s%s -> %s: %.3f ms, %.1f TFLOP/s" % (
                        row["what"], row["backend"], row["M"], row["N"], row["K"], "T" if row["trans_a"] else "N",
                        "T" if row["trans_b"] else "N", row["c"], row["ms"], row["tflops"]), row)
                else:
                    report.add("cuda-bench: %s" % json.dumps(row), row)

    for shape in shapes:
        preset = SHAPES[shape]
        spec = make_model.PRESETS[preset]
        if out_of_time("%s (model)" % shape):
            break
        log("== %s (%s): hidden %d, %d layers, %d/%d heads, MLP %d, vocab %d ==" % (
            shape, preset, spec["hidden"], spec["layers"], spec["heads"], spec["kv_heads"], spec["intermediate"],
            spec["vocab"]))
        model = make_model.make_model(preset, os.path.join(a.cache, "models", "%s-bf16" % preset), dtype="bfloat16",
                                      seed=0, device="cuda", log=log)
        gc.collect()
        torch.cuda.empty_cache()
        rows = (a.warmup + a.steps) * a.micro_batch
        shard = shard_for(a.cache, spec["vocab"], a.seq_len, rows)
        res = results.setdefault(shape, {})
        runs = []
        if not a.skip_ours:
            runs += [("ours nf4", "nf4"), ("ours bf16", "none")]
        if not a.skip_peft:
            runs.append(("PEFT", None))
        if not a.skip_ours and not a.skip_offload:
            runs.append(("ours nf4 off", "nf4-offload"))
        for name, quant in runs:
            if out_of_time("%s %s" % (shape, name)):
                break
            log("-- %s %s --" % (shape, name))
            if quant is None:
                r = run_peft(model, spec["vocab"], a.micro_batch, a.seq_len, a.steps, a.warmup, remaining())
            else:
                offload = quant.endswith("-offload")
                r = run_ours(runtime, a.cache, "%s-%s" % (shape, quant), model, shard, quant.replace("-offload", ""),
                             a.micro_batch, a.seq_len, a.steps, a.warmup, remaining(), offload=offload)
            r.update({"shape": shape, "run": name})
            res[name] = r
            if r.get("ok"):
                m = mfu(r["tokens_per_s"], preset, a.seq_len, peak)
                r["mfu"] = m
                report.add("%s %-9s: %8.0f tokens/s, step %.3f s, peak %.2f GiB, MFU %s (wall %.0f s)" % (
                    shape, name, r["tokens_per_s"], r["step_s"], r["peak_bytes"] / GIB,
                    fmt(m * 100 if m is not None else None, "%.1f%%"), r["wall_s"]), r)
            else:
                report.add("%s %-9s: FAILED: %s" % (shape, name, r.get("error")), r)
        if shape == "8b" and not a.skip_memory and not a.skip_ours and not out_of_time("8b nf4 memory run"):
            log("-- 8b ours nf4 at micro-batch 1 (memory) --")
            shard1 = shard_for(a.cache, spec["vocab"], a.seq_len, 4)
            r = run_ours(runtime, a.cache, "8b-nf4-mb1", model, shard1, "nf4", 1, a.seq_len, 2, 1, remaining())
            r.update({"shape": shape, "run": "ours nf4 mb1"})
            res["ours nf4 mb1"] = r
            if r.get("ok"):
                r["mfu"] = mfu(r["tokens_per_s"], preset, a.seq_len, peak)
                report.add("8b nf4 1x%d: peak %.2f GiB, %.0f tokens/s" % (a.seq_len, r["peak_bytes"] / GIB,
                                                                         r["tokens_per_s"]), r)
            else:
                report.add("8b nf4 1x%d: FAILED: %s" % (a.seq_len, r.get("error")), r)

    # Summary table and targets.
    report.add("")
    report.add("%-5s %-10s %12s %10s %10s %8s" % ("shape", "run", "tokens/s", "step s", "peak GiB", "MFU"))
    for shape, res in results.items():
        for name in ("ours nf4", "ours nf4 off", "ours bf16", "PEFT", "ours nf4 mb1"):
            r = res.get(name)
            if not r:
                continue
            if r.get("ok"):
                report.add("%-5s %-10s %12.0f %10.3f %10.2f %8s" % (
                    shape, name, r["tokens_per_s"], r["step_s"], r["peak_bytes"] / GIB,
                    fmt(r.get("mfu") * 100 if r.get("mfu") is not None else None, "%.1f%%")))
            else:
                report.add("%-5s %-10s %s" % (shape, name, "failed"))

    def verdict(ok):
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    def tps(shape, name):
        r = results.get(shape, {}).get(name)
        return r["tokens_per_s"] if r and r.get("ok") else None

    report.add("")
    report.add("targets:")
    for shape in results:
        ours, peft_tps, nf4 = tps(shape, "ours bf16"), tps(shape, "PEFT"), tps(shape, "ours nf4")
        ratio = ours / peft_tps if ours and peft_tps else None
        report.add("  %s %s: ours bf16 / PEFT = %s (target >= 2)" % (
            verdict(None if ratio is None else ratio >= 2.0), shape, fmt(ratio, "%.2fx")))
        slow = ours / nf4 if ours and nf4 else None
        report.add("  %s %s: ours nf4 / ours bf16 step time = %s (target <= 1.10)" % (
            verdict(None if slow is None else slow <= 1.10), shape, fmt(slow, "%.3fx")))
        base, off = results.get(shape, {}).get("ours nf4"), results.get(shape, {}).get("ours nf4 off")
        if base and off and base.get("ok") and off.get("ok"):
            # Offload is optional (no target): report what it buys and what it costs.
            report.add("  info %s: offloading checkpointed activations saves %.2f GiB of peak VRAM (%.2f -> %.2f) "
                       "for %+.1f%% step time" % (
                           shape, (base["peak_bytes"] - off["peak_bytes"]) / GIB, base["peak_bytes"] / GIB,
                           off["peak_bytes"] / GIB, (off["step_s"] / base["step_s"] - 1) * 100))
    mem = results.get("8b", {}).get("ours nf4 mb1")
    mem_gib = mem["peak_bytes"] / GIB if mem and mem.get("ok") else None
    report.add("  %s 8b nf4 peak VRAM at 1 x %d = %s GiB (target <= 9)" % (
        verdict(None if mem_gib is None else mem_gib <= 9.0), a.seq_len, fmt(mem_gib, "%.2f")))
    m8 = results.get("8b", {}).get("ours bf16", {}).get("mfu")
    m8nf4 = results.get("8b", {}).get("ours nf4", {}).get("mfu")
    report.add("  %s 8b MFU ours bf16 = %s, nf4 = %s (target >= 40%%)" % (
        verdict(None if m8 is None else m8 >= 0.40), fmt(m8 * 100 if m8 is not None else None, "%.1f%%"),
        fmt(m8nf4 * 100 if m8nf4 is not None else None, "%.1f%%")))
    report.add("  %s nf4 + double quant dequantization = %s TB/s (target >= 2.5)" % (
        verdict(None if dequant_tbps is None else dequant_tbps >= 2.5), fmt(dequant_tbps, "%.2f")))
    report.add("")
    report.add("results: %s (%.0f s)" % (os.path.relpath(path, ROOT), time.time() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
