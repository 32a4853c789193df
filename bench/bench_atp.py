"""Attribution patching (E10) against the exact sweep of the same conditions, side by side in one run.

    python bench/bench_atp.py --model bundled --n-pairs 16
    python bench/bench_atp.py --model llama-1b-shape --n-pairs 1 --max-length 256

Conditions: tuned → base, ``Replace`` at all positions, at resid_pre, resid_post, attn_out and mlp_out of
every layer. The exact sweep runs on the fast engine, the estimate on the attribution engine, on the same
loaded twins and pairs. Printed: wall time of each, the cost ratio (exact / AtP), and accuracy per hook and
pooled: Spearman ρ of the per-layer means, top-k recall (k = 3 and 10 % of the conditions), max |error|.
Models and pairs come from bench_engine.py (``llama-1b-shape``: Llama-3.2-1B's configuration, random weights,
a twin perturbed in blocks 6–7).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--out", default=None, help="write the JSON record here (default: bench/results/<auto>.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from alignment_probe.engine import make_engine
    from alignment_probe.engine.attribution import AttributionEngine
    from alignment_probe.experiments.atp import validation
    from alignment_probe.experiments.patching import layer_sweep

    pair, tokenized = load(args)
    specs = layer_sweep("patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers),
                        hooks=HOOKS4)

    def timed(engine):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        frame = engine.run(pair, tokenized, specs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return frame, time.perf_counter() - t0

    atp, t_atp = timed(AttributionEngine(batch_size=args.batch_size))
    exact, t_exact = timed(make_engine("fast", batch_size=args.batch_size))
    per_hook, pooled_e, pooled_a = {}, [], []
    for hook in HOOKS4:
        e = exact[exact.hook == hook].groupby("layer").effect.mean()
        a = atp[atp.hook == hook].groupby("layer").effect.mean()
        per_hook[hook] = validation(e.to_numpy(), a.to_numpy()) | {
            "exact_mean": [round(float(x), 6) for x in e], "atp_mean": [round(float(x), 6) for x in a]}
        pooled_e += e.tolist()
        pooled_a += a.tolist()
    tokens = sum(len(t.prompt_ids) * 2 + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    record = {
        "model": args.model, "n_pairs": len(tokenized), "tokens_per_pair": tokens / len(tokenized),
        "conditions": len(specs), "n_layers": pair.n_layers, "device": args.device, "dtype": args.dtype,
        "threads": args.threads, "wall_s_atp": t_atp, "wall_s_exact": t_exact, "cost_ratio_exact_over_atp":
        t_exact / t_atp, "pooled": validation(pooled_e, pooled_a), "by_hook": per_hook,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch": torch.__version__, "platform": platform.platform(), "date": date.today().isoformat(),
    }
    print(f"{args.model}: {len(specs)} conditions × {len(tokenized)} pairs ({record['tokens_per_pair']:.0f} tokens/pair)")
    print(f"  exact (fast engine) {t_exact:.1f} s   AtP {t_atp:.1f} s   cost ratio exact/AtP {t_exact / t_atp:.1f}×")
    for hook, v in [*per_hook.items(), ("pooled", record["pooled"])]:
        print(f"  {hook:>10}: ρ {v['spearman']:+.3f}  top-3 recall {v['topk_recall']['3']:.2f}  "
              f"top-10% (k={v['topk_k']['10%']}) recall {v['topk_recall']['10%']:.2f}  max|err| {v['max_abs_error']:.3f}"
              f"  n {v['n_conditions']}")
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results"
                                           / f"atp-{args.device}-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
