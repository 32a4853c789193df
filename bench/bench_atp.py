"""Attribution patching (E10) against the exact sweep of the same conditions, side by side in one run.

    python bench/bench_atp.py --model bundled --n-pairs 16
    python bench/bench_atp.py --model llama-1b-shape --n-pairs 1 --max-length 256

Conditions: tuned → base, ``Replace`` at all positions, at resid_pre, resid_post, attn_out and mlp_out of
every layer. The exact sweep runs on the fast engine, the estimate on the attribution engine, on the same
loaded twins and pairs. Printed: wall time of each, the cost ratio (exact / AtP), and accuracy per hook and
pooled: Spearman ρ of the per-layer means, top-k recall (k = 3 and 10 % of the conditions), max |error|.

Heads (``--heads``, on by default; ``--head-layers`` limits them): E7's conditions — one query head's z, one
key/value head's v and k, ``ReplaceHead`` at all positions — exactly (fast engine, the conditions of
``head_patch``/``kv_head_patch`` without the whole-layer attn_out) and by AtP (``atp_heads``: z, v plain AtP, k
AtP* with the QK fix and again as plain AtP). Printed the same way per head hook, per (layer, head) means,
and the cost of AtP for layers and heads together in one pass (its marginal cost over the layers alone).
Models and pairs come from bench_engine.py (``llama-1b-shape``: Llama-3.2-1B's configuration, random weights,
a twin perturbed in blocks 6–7).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import load

HOOKS4 = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["bundled", "llama-1b-shape"], default="bundled")
    p.add_argument("--n-pairs", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="run each side this many times, keep the least wall time")
    p.add_argument(
        "--heads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the per-head map: AtP (atp_heads) vs exact head patching of the same conditions",
    )
    p.add_argument("--head-layers", default=None, help="layers of the head map, e.g. 6,7 (default: every layer)")
    p.add_argument("--out", default=None, help="write the JSON record here (default: bench/results/<auto>.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    from alignment_probe.engine import make_engine
    from alignment_probe.engine.attribution import AttributionEngine
    from alignment_probe.experiments.atp import validation
    from alignment_probe.experiments.patching import layer_sweep

    pair, tokenized = load(args)
    specs = layer_sweep("patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers), hooks=HOOKS4)

    def timed(engine_factory, specs=specs):
        """(rows, the least wall time of --repeats runs): the least is the one the machine's other load
        disturbed least (a shared machine's load only ever adds time). The process's CPU seconds (all its
        threads) are kept too: on a loaded machine they measure the work, where wall time measures the queue."""
        times, cpu = [], []
        for _ in range(args.repeats):
            engine = engine_factory()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            frame = engine.run(pair, tokenized, specs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        all_times.append(times)
        all_cpu.append(cpu)
        return frame, min(times)

    all_times: list[list[float]] = []
    all_cpu: list[list[float]] = []
    atp, t_atp = timed(lambda: AttributionEngine(batch_size=args.batch_size))
    exact, t_exact = timed(lambda: make_engine("fast", batch_size=args.batch_size))
    per_hook, pooled_e, pooled_a = {}, [], []
    for hook in HOOKS4:
        e = exact[exact.hook == hook].groupby("layer").effect.mean()
        a = atp[atp.hook == hook].groupby("layer").effect.mean()
        per_hook[hook] = validation(e.to_numpy(), a.to_numpy()) | {
            "exact_mean": [round(float(x), 6) for x in e],
            "atp_mean": [round(float(x), 6) for x in a],
        }
        pooled_e += e.tolist()
        pooled_a += a.tolist()
    heads = bench_heads(args, pair, timed) if args.heads else None
    tokens = sum(len(t.prompt_ids) * 2 + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    record = {
        "model": args.model,
        "n_pairs": len(tokenized),
        "tokens_per_pair": tokens / len(tokenized),
        "conditions": len(specs),
        "n_layers": pair.n_layers,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "wall_s_atp": t_atp,
        "wall_s_exact": t_exact,
        "cost_ratio_exact_over_atp": t_exact / t_atp,
        "pooled": validation(pooled_e, pooled_a),
        "by_hook": per_hook,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": date.today().isoformat(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "repeats": args.repeats,
        "wall_s_all_runs": all_times,  # per timed step (AtP layers, exact layers[, AtP heads, exact heads, AtP both])
        "cpu_s_all_runs": all_cpu,  # the same steps' process CPU seconds
        "cpu_s_min": [min(c) for c in all_cpu],
    }
    if heads is not None:
        record["heads"] = heads
    print(
        f"{args.model}: {len(specs)} conditions × {len(tokenized)} pairs ({record['tokens_per_pair']:.0f} tokens/pair)"
    )
    print(f"  exact (fast engine) {t_exact:.1f} s   AtP {t_atp:.1f} s   cost ratio exact/AtP {t_exact / t_atp:.1f}×")
    for hook, v in [*per_hook.items(), ("pooled", record["pooled"])]:
        print(
            f"  {hook:>10}: ρ {v['spearman']:+.3f}  top-3 recall {v['topk_recall']['3']:.2f}  "
            f"top-10% (k={v['topk_k']['10%']}) recall {v['topk_recall']['10%']:.2f}  max|err| {v['max_abs_error']:.3f}"
            f"  n {v['n_conditions']}"
        )
    if heads is not None:
        print_heads(heads, t_atp)
    names = ["AtP layers", "exact layers", "AtP heads", "exact heads", "AtP layers + heads"]
    cpu = record["cpu_s_min"]
    print("  CPU seconds (least of the repeats): " + ", ".join(f"{n} {c:.1f}" for n, c in zip(names, cpu)))
    print(
        f"  CPU cost ratio exact/AtP: layers {cpu[1] / cpu[0]:.1f}×"
        + (
            f", heads {cpu[3] / cpu[2]:.1f}×, heads' marginal AtP cost in one pass {cpu[4] - cpu[0]:.1f} s"
            if len(cpu) == 5
            else ""
        )
    )
    print(f"  load average (1, 5, 15 min) at start {load_start}, at end {record['loadavg_end']}")
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).resolve().parent / "results" / f"atp-{args.device}-{args.model}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"  wrote {out}")


def bench_heads(args, pair, timed) -> dict:
    """The per-head map: exact head patching and AtP of the same conditions, and AtP of layers + heads in one pass."""
    from alignment_probe.engine import make_engine
    from alignment_probe.engine.attribution import AttributionEngine
    from alignment_probe.experiments.atp import atp_head_specs, n_heads_of, validation
    from alignment_probe.experiments.patching import layer_sweep

    layers = [int(x) for x in args.head_layers.split(",")] if args.head_layers else list(range(pair.n_layers))
    cfg = pair.base.cfg
    specs = atp_head_specs(layers, n_heads_of(cfg, "z"), n_heads_of(cfg, "k"))
    exact_specs = [s for s in specs if s.key.estimator == "exact"]
    layer_specs = layer_sweep(
        "patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers), hooks=HOOKS4
    )
    atp, t_atp = timed(lambda: AttributionEngine(batch_size=args.batch_size), specs)
    exact, t_exact = timed(lambda: make_engine("fast", batch_size=args.batch_size), exact_specs)
    _, t_both = timed(lambda: AttributionEngine(batch_size=args.batch_size), layer_specs + specs)
    ex_means = exact.groupby(["hook", "layer", "param"]).effect.mean()
    at_means = atp.groupby(["hook", "estimator", "layer", "param"]).effect.mean()
    per_hook, pooled_e, pooled_a = {}, [], []
    for hook, estimator in (("z", "atp"), ("v", "atp"), ("k", "atp*"), ("k", "atp")):
        e = ex_means.loc[hook]
        a = at_means.loc[(hook, estimator)].reindex(e.index)
        per_hook[f"{hook} ({estimator})"] = validation(e.to_numpy(), a.to_numpy()) | {
            "cells": [[int(la), int(h)] for la, h in e.index],
            "exact_mean": [round(float(x), 6) for x in e],
            "atp_mean": [round(float(x), 6) for x in a],
        }
        if estimator != "atp" or hook != "k":  # pooled: each condition once, k by AtP*
            pooled_e += e.tolist()
            pooled_a += a.tolist()
    return {
        "layers": layers,
        "conditions_exact": len(exact_specs),
        "rows_atp": len(specs),
        "wall_s_atp": t_atp,
        "wall_s_exact": t_exact,
        "cost_ratio_exact_over_atp": t_exact / t_atp,
        "wall_s_atp_layers_and_heads": t_both,
        "by_hook": per_hook,
        "pooled": validation(pooled_e, pooled_a),
    }


def print_heads(heads: dict, t_atp_layers: float) -> None:
    print(f"  heads: {heads['conditions_exact']} conditions (layers {heads['layers']})")
    print(
        f"  exact (fast engine) {heads['wall_s_exact']:.1f} s   AtP {heads['wall_s_atp']:.1f} s   cost ratio "
        f"exact/AtP {heads['cost_ratio_exact_over_atp']:.1f}×   AtP layers + heads in one pass "
        f"{heads['wall_s_atp_layers_and_heads']:.1f} s (layers alone {t_atp_layers:.1f} s)"
    )
    for hook, v in [*heads["by_hook"].items(), ("pooled", heads["pooled"])]:
        print(
            f"  {hook:>10}: ρ {v['spearman']:+.3f}  top-3 recall {v['topk_recall']['3']:.2f}  "
            f"top-10% (k={v['topk_k']['10%']}) recall {v['topk_recall']['10%']:.2f}  max|err| {v['max_abs_error']:.3f}"
            f"  n {v['n_conditions']}"
        )


if __name__ == "__main__":
    main()
