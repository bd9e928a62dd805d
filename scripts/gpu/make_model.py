#!/usr/bin/env python3
"""Random-initialised Hugging Face models for the GPU session's checks and benchmark.

  python3 make_model.py --preset llama-8b --out CACHE/llama-8b-bf16 --dtype bfloat16 --device cuda

Presets (PRESETS below): tiny, tiny-llama3 and tiny-gpt2 for reference checks against
transformers; odd (sizes that are not multiples of any tile, a partial quantization block)
for CUDA-vs-CPU checks; llama-1b and llama-8b with Llama-3.2-1B's and Llama-3.1-8B's shapes
for the benchmark. Weights are drawn as transformers initialises them (normal, std
initializer_range = 0.02; norms 1), with a fixed seed, and saved with save_pretrained as
safetensors in the dtype asked for. Big models are built on the GPU in bf16 (seconds instead
of minutes on the CPU).

An existing folder whose lstk-model.json names the same preset, dtype and seed is reused, so a
cache directory survives across benchmark runs on one machine.

config.json gets the legacy keys `rope_theta` and `rope_scaling` written beside whatever the
installed transformers writes (transformers 5 writes `rope_parameters` instead): the runtime
reads the legacy keys, and transformers reads both. After saving, the config is read back
with transformers and its rope settings are compared with the preset's, so a disagreement
between the two readers is an error here rather than a silent difference later.
"""
import argparse
import gc
import json
import os
import shutil
import sys
import time

LLAMA3_1B_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
LLAMA3_8B_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}

# arch, sizes, rope. head_dim = hidden / heads throughout.
PRESETS = {
    "tiny": dict(arch="llama", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256,
                 tie=False, rope_theta=10000.0, rope_scaling=None, max_pos=2048),
    # Tied embeddings and llama3 rope scaling, with head_dim 16 so that the rotary frequencies
    # fall in all three llama3 regimes (kept, smoothed, divided by the factor).
    "tiny-llama3": dict(arch="llama", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256,
                        tie=True, rope_theta=500000.0, rope_scaling=LLAMA3_1B_ROPE, max_pos=2048),
    "tiny-gpt2": dict(arch="gpt2", hidden=64, layers=2, heads=4, vocab=256, max_pos=128),
    # head_dim 24, MLP 203 (odd), 203 * 96 elements: the last quantization block is partial;
    # 305 blocks of 64: double quantization has a full and a partial group of 256.
    "odd": dict(arch="llama", hidden=96, layers=2, heads=4, kv_heads=2, intermediate=203, vocab=256,
                tie=False, rope_theta=10000.0, rope_scaling=None, max_pos=2048),
    "llama-1b": dict(arch="llama", hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256,
                     tie=True, rope_theta=500000.0, rope_scaling=LLAMA3_1B_ROPE, max_pos=131072),
    "llama-8b": dict(arch="llama", hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256,
                     tie=False, rope_theta=500000.0, rope_scaling=LLAMA3_8B_ROPE, max_pos=131072),
}

DTYPES = ("float32", "bfloat16", "float16")
MARKER = "lstk-model.json"


def matmul_params(preset):
    """Parameters that take part in a matrix product per token: every decoder linear weight and
    the LM head (counted once when tied to the embedding). The N of the benchmark's MFU."""
    p = PRESETS[preset]
    d, L, V = p["hidden"], p["layers"], p["vocab"]
    if p["arch"] == "gpt2":
        per_layer = d * 3 * d + d * d + 2 * d * 4 * d
    else:
        hd = d // p["heads"]
        per_layer = d * (p["heads"] * hd) * 2 + d * (p["kv_heads"] * hd) * 2 + 3 * d * p["intermediate"]
    return L * per_layer + V * d


def hf_config(preset):
    from transformers import GPT2Config, LlamaConfig

    p = PRESETS[preset]
    if p["arch"] == "gpt2":
        return GPT2Config(n_embd=p["hidden"], n_layer=p["layers"], n_head=p["heads"], n_inner=None,
                          vocab_size=p["vocab"], n_positions=p["max_pos"], activation_function="gelu_new",
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                          initializer_range=0.02, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    return LlamaConfig(hidden_size=p["hidden"], intermediate_size=p["intermediate"], num_hidden_layers=p["layers"],
                       num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                       head_dim=p["hidden"] // p["heads"], vocab_size=p["vocab"],
                       max_position_embeddings=p["max_pos"], rms_norm_eps=1e-5, rope_theta=p["rope_theta"],
                       rope_scaling=dict(p["rope_scaling"]) if p["rope_scaling"] else None,
                       tie_word_embeddings=p["tie"], attention_bias=False, mlp_bias=False,
                       initializer_range=0.02, hidden_act="silu", bos_token_id=0, eos_token_id=1,
                       attention_dropout=0.0)


def effective_rope(config):
    """(theta, scaling dict or None) as the installed transformers resolved them: transformers 5
    keeps both in config.rope_parameters, 4.x in rope_theta and rope_scaling."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        return float(rp["rope_theta"]), scaling
    scaling = getattr(config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(config.rope_theta), scaling


def check_rope(preset, config, where):
    p = PRESETS[preset]
    if p["arch"] != "llama":
        return
    theta, scaling = effective_rope(config)
    want = p["rope_scaling"]
    ok = abs(theta - p["rope_theta"]) <= 1e-6 * p["rope_theta"]
    if want is None:
        ok = ok and scaling is None
    else:
        ok = ok and scaling is not None and scaling.get("rope_type", scaling.get("type")) == want["rope_type"]
        for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            ok = ok and scaling is not None and float(scaling.get(k, -1)) == float(want[k])
    if not ok:
        raise RuntimeError("%s: transformers resolved rope theta %r scaling %r, the preset %s asks for theta %r "
                           "scaling %r" % (where, theta, scaling, preset, p["rope_theta"], want))


def patch_config(out, preset, dtype):
    """Adds the keys the runtime reads (legacy rope keys, torch_dtype) to config.json."""
    p = PRESETS[preset]
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    if p["arch"] == "llama":
        cfg["rope_theta"] = p["rope_theta"]
        cfg["rope_scaling"] = dict(p["rope_scaling"]) if p["rope_scaling"] else None
        cfg["head_dim"] = p["hidden"] // p["heads"]
    cfg["torch_dtype"] = dtype
    with open(path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def marker_matches(out, preset, dtype, seed):
    try:
        with open(os.path.join(out, MARKER)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return m.get("preset") == preset and m.get("dtype") == dtype and m.get("seed") == seed and \
        m.get("spec") == PRESETS[preset]


def make_model(preset, out, dtype="float32", seed=0, device=None, force=False, log=print):
    """Builds (or reuses) the model folder `out`; returns its path."""
    if preset not in PRESETS:
        raise ValueError("unknown preset %r (have %s)" % (preset, ", ".join(PRESETS)))
    if dtype not in DTYPES:
        raise ValueError("dtype must be one of %s" % ", ".join(DTYPES))
    out = os.path.abspath(out)
    if not force and marker_matches(out, preset, dtype, seed):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    config = hf_config(preset)
    check_rope(preset, config, "config built for " + preset)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
    previous = torch.get_default_dtype()
    # Built directly in the target dtype on the target device: an 8B model in fp32 on the CPU
    # would take minutes to initialise and 32 GB of memory.
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(torch_dtype)
    model.eval()
    tmp = out + ".tmp-%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="5GB")
    del model
    gc.collect()  # the module tree has reference cycles; free its GPU memory before the caller's runs
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    patch_config(tmp, preset, dtype)
    check_rope(preset, AutoConfig.from_pretrained(tmp), "config.json read back")
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump({"preset": preset, "dtype": dtype, "seed": seed, "spec": PRESETS[preset],
                   "matmul_params": matmul_params(preset)}, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log("make_model: %s (%s, seed %d) -> %s in %.1f s on %s" % (preset, dtype, seed, out, time.time() - t0, device))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Random-initialised HF models (see the module docstring).")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="rebuild even when the folder matches")
    a = p.parse_args(argv)
    print(make_model(a.preset, a.out, a.dtype, a.seed, a.device, a.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
