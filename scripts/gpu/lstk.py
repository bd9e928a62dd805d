#!/usr/bin/env python3
"""Token shards and run folders for lora-runtime, from Python with the standard library only.

The GPU session's scripts (check_reference.py, bench_gpu.py) run where there is no Node.js,
so they cannot use src/core's ShardWriter. This module writes the same bytes:

  Token shard (*.bin, little-endian; DESIGN.md "Token shard", native-runtime/src/formats/shard.cpp):
    magic b"LSTK", u32 version (1), u32 vocab size, u64 document count, u64 token count,
    u64 offsets[documents + 1], u32 tokens[token count], u8 loss_mask[token count].
  loss_mask[i] = 1 makes token i a target (predicted from the tokens before it in its
  document); the first token of a document is never a target whatever its mask says.

  Run folder (docs/run-json.md): RUN_DIR/run.json, RUN_DIR/data/train.bin, and after
  `lora-runtime train --run RUN_DIR`: events.jsonl, adapter/.

Command line (used by test/native/gpuReference.test.ts):
  python3 lstk.py shard --out FILE --vocab V (--docs-json FILE | --docs N --len L [--seed S])
  python3 lstk.py read FILE          prints {"vocab", "documents", "tokens", "targets"}
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import threading
from array import array

MAGIC = b"LSTK"
VERSION = 1
HEADER = struct.Struct("<4sIIQQ")  # magic, version, vocab, documents, tokens

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def _typed(code, values):
    """An array of fixed-width little-endian integers (array uses the machine's order)."""
    a = array(code, values)
    if a.itemsize != {"I": 4, "Q": 8, "B": 1}[code]:
        raise RuntimeError("array(%r) has itemsize %d on this platform" % (code, a.itemsize))
    if sys.byteorder != "little":
        a.byteswap()
    return a


def default_mask(doc):
    """Every token but the first is a target (the usual causal-LM loss)."""
    return [0] + [1] * (len(doc) - 1) if doc else []


def write_shard(path, docs, vocab, masks=None):
    """Writes `docs` (lists of token ids) as one shard; masks[d] is document d's loss mask
    (default: every token but the first). Written to a temporary name, then renamed."""
    if vocab <= 0 or vocab > 0xFFFFFFFF:
        raise ValueError("vocab must be a positive 32-bit integer, got %r" % (vocab,))
    offsets = [0]
    tokens = []
    mask = []
    for d, doc in enumerate(docs):
        m = default_mask(doc) if masks is None else list(masks[d])
        if len(m) != len(doc):
            raise ValueError("document %d: %d tokens but %d mask values" % (d, len(doc), len(m)))
        for i, t in enumerate(doc):
            if not (0 <= t < vocab):
                raise ValueError("document %d, token %d: id %r outside [0, %d)" % (d, i, t, vocab))
        for i, v in enumerate(m):
            if v not in (0, 1):
                raise ValueError("document %d, token %d: mask %r is not 0 or 1" % (d, i, v))
        tokens.extend(doc)
        mask.extend(m)
        offsets.append(len(tokens))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, vocab, len(docs), len(tokens)))
        f.write(_typed("Q", offsets).tobytes())
        f.write(_typed("I", tokens).tobytes())
        f.write(_typed("B", mask).tobytes())
    os.replace(tmp, path)
    return {"documents": len(docs), "tokens": len(tokens), "targets": count_targets(offsets, mask)}


def count_targets(offsets, mask):
    n = 0
    for d in range(len(offsets) - 1):
        n += sum(mask[offsets[d] + 1:offsets[d + 1]])
    return n


def read_shard(path):
    """Reads a shard back: {"vocab", "offsets", "tokens", "mask"}; raises ValueError when the
    file does not follow the format."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size:
        raise ValueError("%s: %d bytes, shorter than the header" % (path, len(data)))
    magic, version, vocab, documents, ntokens = HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError("%s: magic %r version %d, expected %r version %d" % (path, magic, version, MAGIC, VERSION))
    expected = HEADER.size + 8 * (documents + 1) + 5 * ntokens
    if len(data) != expected:
        raise ValueError("%s: %d bytes, the header announces %d" % (path, len(data), expected))
    pos = HEADER.size
    offsets = array("Q", data[pos:pos + 8 * (documents + 1)])
    pos += 8 * (documents + 1)
    tokens = array("I", data[pos:pos + 4 * ntokens])
    pos += 4 * ntokens
    mask = array("B", data[pos:pos + ntokens])
    if sys.byteorder != "little":
        offsets.byteswap()
        tokens.byteswap()
    if offsets[0] != 0 or offsets[-1] != ntokens or any(offsets[i] > offsets[i + 1] for i in range(documents)):
        raise ValueError("%s: offsets are not 0 .. token count in order" % path)
    return {"vocab": vocab, "offsets": list(offsets), "tokens": list(tokens), "mask": list(mask)}


def random_docs(count, length, vocab, seed, lo=0, min_length=None):
    """`count` documents of random ids in [lo, vocab). Each is `length` tokens long, or of a
    random length in [min_length, length] when min_length is given."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        n = length if min_length is None else rng.randint(min_length, length)
        docs.append([rng.randrange(lo, vocab) for _ in range(n)])
    return docs


def write_run(run_dir, model, train_docs=None, vocab=None, train_shard=None, lora=None, quant=None, train=None,
              compute=None, eval_shard=None):
    """Creates RUN_DIR with run.json and data/train.bin (written from train_docs, or copied
    from train_shard). The dict arguments override the defaults below field by field."""
    os.makedirs(os.path.join(run_dir, "data"), exist_ok=True)
    train_bin = os.path.join(run_dir, "data", "train.bin")
    if train_docs is not None:
        write_shard(train_bin, train_docs, vocab)
    elif train_shard is not None:
        with open(train_shard, "rb") as src, open(train_bin + ".tmp", "wb") as dst:
            while True:
                chunk = src.read(1 << 24)
                if not chunk:
                    break
                dst.write(chunk)
        os.replace(train_bin + ".tmp", train_bin)
    else:
        raise ValueError("write_run needs train_docs or train_shard")
    run = {
        "v": 1,
        "model": os.path.abspath(model),
        "data": {"train": "data/train.bin", "eval": os.path.abspath(eval_shard) if eval_shard else None},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "rslora": False, "targets": list(LLAMA_TARGETS),
                 "init_adapter": None},
        "quant": {"type": "none", "double_quant": False, "block_size": 64},
        "train": {"seq_len": 64, "micro_batch": 2, "grad_accum": 1, "epochs": 1, "max_steps": 10,
                  "optimizer": "adamw", "lr": 1e-3, "schedule": "constant", "warmup_steps": 0,
                  "weight_decay": 0.0, "max_grad_norm": 1.0, "grad_checkpointing": True, "seed": 42,
                  "eval_every": 0, "save_every": 0},
        "compute": {"device": "cpu", "dtype": "fp32", "threads": 0},
    }
    for section, over in (("lora", lora), ("quant", quant), ("train", train), ("compute", compute)):
        if over:
            run[section].update(over)
    path = os.path.join(run_dir, "run.json")
    with open(path + ".tmp", "w") as f:
        json.dump(run, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return run


def read_events(run_dir):
    """The run's events (events.jsonl), one dict per line; a torn last line is ignored."""
    events = []
    path = os.path.join(run_dir, "events.jsonl")
    if not os.path.exists(path):
        return events
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def train(runtime, run_dir, timeout=None, log=None):
    """Runs `lora-runtime train --run RUN_DIR`; returns (exit code, events). Events are read
    from events.jsonl (stdout is the same stream). `log`, when given, is called with every
    step, log and error event as it arrives. A run still going after `timeout` seconds is
    killed (exit code -9)."""
    proc = subprocess.Popen([runtime, "train", "--run", run_dir], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []

    def read_stdout():
        for line in proc.stdout:
            if log is None:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") in ("step", "error", "log"):
                log(ev)

    def read_stderr():
        for line in proc.stderr:
            stderr.append(line)

    # Both pipes are drained on threads, so a full pipe never blocks the runtime and the
    # timeout below holds even while it keeps its stdout open.
    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    for t in readers:
        t.join(timeout=5)
    events = read_events(run_dir)
    if code != 0 and not any(e.get("type") == "error" for e in events):
        why = "timed out after %s s" % timeout if code == -9 else "exit %s" % code
        events.append({"type": "error", "code": "exit", "message": "%s: %s" % (why, "".join(stderr)[-2000:])})
    return code, events


def error_text(events):
    """The error events of a run, as one line each."""
    out = []
    for e in events:
        if e.get("type") == "error":
            out.append("%s: %s%s" % (e.get("code"), e.get("message"), (" (hint: %s)" % e["hint"]) if e.get("hint") else ""))
    return "; ".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="write a token shard")
    s.add_argument("--out", required=True)
    s.add_argument("--vocab", type=int, required=True)
    s.add_argument("--docs-json", help="a JSON file: a list of documents (lists of token ids), or "
                   "{\"docs\": [...], \"masks\": [...]}")
    s.add_argument("--docs", type=int, help="random documents: how many")
    s.add_argument("--len", type=int, default=64, help="random documents: tokens each")
    s.add_argument("--min-len", type=int, help="random documents: shortest length (default: all --len)")
    s.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("read", help="print a shard's counts")
    r.add_argument("file")
    a = p.parse_args(argv)
    if a.cmd == "shard":
        masks = None
        if a.docs_json:
            with open(a.docs_json) as f:
                spec = json.load(f)
            docs = spec["docs"] if isinstance(spec, dict) else spec
            masks = spec.get("masks") if isinstance(spec, dict) else None
        elif a.docs:
            docs = random_docs(a.docs, a.len, a.vocab, a.seed, min_length=a.min_len)
        else:
            p.error("shard needs --docs-json or --docs")
        print(json.dumps(write_shard(a.out, docs, a.vocab, masks)))
    else:
        sh = read_shard(a.file)
        print(json.dumps({"vocab": sh["vocab"], "documents": len(sh["offsets"]) - 1, "tokens": len(sh["tokens"]),
                          "targets": count_targets(sh["offsets"], sh["mask"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
