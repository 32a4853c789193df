"""Load a Llama-3.2-1B-shaped pair by its official hub names, offline, and report time and peak memory.

Not a test (2 × 2.5 GB on disk): random weights with Llama-3.2-1B's exact configuration are planted
in a temporary Hugging Face cache under ``meta-llama/Llama-3.2-1B`` and ``-Instruct`` (the tuned twin
differs in the middle block's MLP), and each measurement runs in a fresh process with
``HF_HUB_OFFLINE=1``, so the peak resident memory (``ru_maxrss``) is that load's alone:

* ``one``: a single model (``load_hub_model``);
* ``pair``: both twins (``load_twins``; one model at a time, each Hugging Face copy released first).

    python bench/bench_load_llama1b.py --dtype float32 --dtype bfloat16 --out bench/results/cpu-load-llama1b.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES = ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct")
# Llama-3.2-1B's config.json (transformers 5 spelling).
CONFIG = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)


def plant(cache: Path) -> None:
    """Random bfloat16 weights (as the hub ships them) of the exact shape, under both official names."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.helpers.checkpoints import train_tokenizer

    cfg = LlamaConfig(**CONFIG, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(cfg).named_parameters()}
    gen = torch.Generator().manual_seed(0)
    weights = {
        n: (torch.ones(s) if "norm" in n else 0.02 * torch.randn(s, generator=gen)).to(torch.bfloat16)
        for n, s in shapes.items()
        if n != "lm_head.weight"
    }  # tied to the embedding
    tok = train_tokenizer([f"\n\nHuman: question {i}?\n\nAssistant: answer {i}." for i in range(300)], 400)
    for i, name in enumerate(NAMES):
        if i:  # the tuned twin: the middle block's MLP moves
            for n in list(weights):
                if n.startswith("model.layers.8.mlp."):
                    weights[n] = (weights[n].float() + 0.01 * torch.randn(weights[n].shape, generator=gen)).to(
                        torch.bfloat16
                    )
        repo = cache / f"models--{name.replace('/', '--')}"
        commit = hashlib.sha1(name.encode()).hexdigest()
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        save_file(weights, str(snap / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(snap)
        tok.save_pretrained(snap)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)


def measure(kind: str, dtype: str) -> dict:
    """In this (fresh) process: load, time it, report the peak resident set."""
    import resource

    import torch

    from alignment_probe.pair import load_hub_model, load_twins

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    t0 = time.perf_counter()
    if kind == "one":
        loaded = load_hub_model(NAMES[0], dtype=dtype)
        n_params = sum(p.numel() for p in loaded.model.parameters())
    else:
        twins = load_twins(*NAMES, dtype=dtype)
        n_params = sum(p.numel() for p in twins.base.parameters())
        assert twins.base_fingerprint != twins.tuned_fingerprint
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "kind": kind,
        "dtype": dtype,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "params_per_converted_model": n_params,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", action="append", choices=("float32", "bfloat16"))
    p.add_argument("--kinds", default="one,pair")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._measure:
        print(json.dumps(measure(*a._measure)))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-llama1b-cache-") as cache:
        t0 = time.perf_counter()
        plant(Path(cache))
        print(f"planted 2 x Llama-3.2-1B-shaped checkpoints in {time.perf_counter() - t0:.0f} s", flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, TQDM_DISABLE="1", PYTHONPATH=str(REPO))
        for dtype in a.dtype or ["float32"]:
            for kind in a.kinds.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, "--_measure", kind, dtype],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return out.returncode
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(row)
                print(json.dumps(row), flush=True)
    if a.out:
        import platform
        from importlib.metadata import version

        import torch
        import transformer_lens  # noqa: F401

        a.out.write_text(
            json.dumps(
                {
                    "what": "bench/bench_load_llama1b.py",
                    "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "transformer_lens": version("transformer-lens"),
                    "transformers": version("transformers"),
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
