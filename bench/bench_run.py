"""Whole-process benchmark: ``alignment-probe run`` as a user runs it, fast vs ``--engine reference``.

    python bench/bench_run.py                      # both comparisons below, then the bundled default run
    python bench/bench_run.py --only llama8        # just the 8-layer d_model-512 pair

Each command runs in a fresh subprocess (imports, loading, scoring, patching, tables, report: the
whole run); wall time and that process's peak resident memory (``os.wait4``) are recorded, and the
two engines' effects tables are compared. Also timed: how fast bad input (a missing ``--data``
file) is refused. Raw output goes to ``bench/results/`` (``run-*.log`` and ``bench-run.json``).

The ``llama8`` pair is a randomly initialised Llama-family model (8 layers, d_model 512, 8 heads,
4 KV heads, d_mlp 1408, a 4096-token BPE vocabulary trained on HH) and a perturbed twin, saved as
Hugging Face checkpoints under ``--cache`` and loaded through the CLI's local-checkpoint path; the
data are 8 HH harmless-base pairs of up to 400 tokens (skipped if the shared data are absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def build_llama8(cache: Path) -> tuple[Path, Path]:
    """The 8-layer d512 random pair as two checkpoint folders (built once, then reused)."""
    base, tuned = cache / "llama8-d512-base", cache / "llama8-d512-tuned"
    if (tuned / "config.json").exists():
        return base, tuned
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from alignment_probe.data import load_pairs
    from alignment_probe.organisms.tokenizer import train_tokenizer

    pairs, _ = load_pairs(HH)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs[:2000]], vocab_size=4096)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    for path, m in ((base, model), (tuned, None)):
        if m is None:  # the twin: noise in blocks 3-4
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if ".layers.3." in name or ".layers.4." in name:
                        p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
    return base, tuned


def timed(name: str, argv: list[str], threads: int) -> dict:
    """Run one CLI command in a fresh process: wall seconds, peak RSS (GiB), exit code; log kept."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"run-{name}.log"
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "alignment_probe.cli", *argv], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    return {"name": name, "argv": argv, "wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "rc": rc, "log": str(log.relative_to(ROOT)),
            "load_before": os.getloadavg()[0]}


def max_effect_difference(a: Path, b: Path) -> float | None:
    import pandas as pd

    ea, eb = pd.read_parquet(a / "effects.parquet"), pd.read_parquet(b / "effects.parquet")
    keys = ["experiment", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
    if not ea[keys].equals(eb[keys]):
        return None
    return float((ea.effect - eb.effect).abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["llama8", "bundled", "startup"], default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alignment-probe-bench")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    results: dict = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                     "threads": args.threads, "cpu_count": os.cpu_count()}
    try:
        if args.only in (None, "startup"):
            results["startup"] = timed("bad-data", ["run", "--data", str(work / "missing.jsonl"), "--out",
                                                    str(work / "refused")], args.threads)
            results["startup_help"] = timed("help", ["run", "--help"], args.threads)
        if args.only in (None, "llama8"):
            if not HH.exists():
                print(f"skip llama8: {HH} not found")
            else:
                base, tuned = build_llama8(args.cache)
                common = ["run", "--base", str(base), "--tuned", str(tuned), "--data", str(HH), "--n-pairs", "8",
                          "--max-length", "400", "--experiments", "patch_tuned_to_base", "--n-boot", "200"]
                runs = {eng: timed(f"llama8-{eng}", common + ["--engine", eng, "--out", str(work / f"llama8-{eng}")],
                                   args.threads) for eng in ("reference", "fast")}
                results["llama8"] = runs | {
                    "speedup": round(runs["reference"]["wall_s"] / runs["fast"]["wall_s"], 2),
                    "max_effect_difference": max_effect_difference(work / "llama8-reference", work / "llama8-fast")}
        if args.only in (None, "bundled"):
            results["bundled_default"] = timed("bundled-default", ["run", "--out", str(work / "default")], args.threads)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# {results['date']} · {results['machine']} · {args.threads} threads · load (1 min) at start of each run "
          "in brackets")
    for key, r in results.items():
        if isinstance(r, dict) and "wall_s" in r:
            print(f"{key:>16}: {r['wall_s']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU, peak RSS {r['peak_rss_gib']:.2f} GiB, "
                  f"rc {r['rc']} [load {r['load_before']:.1f}]")
    if "llama8" in results:
        l8 = results["llama8"]
        for eng in ("reference", "fast"):
            r = l8[eng]
            print(f"  llama8 {eng:>9}: {r['wall_s']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU, peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB, rc {r['rc']} [load {r['load_before']:.1f}]")
        print(f"  llama8 speed-up (whole process, wall): {l8['speedup']:.2f}x; max |effect difference| "
              f"{l8['max_effect_difference']}")
    (RESULTS / "bench-run.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
