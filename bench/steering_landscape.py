"""E11 steering (revised 2026-12-07) at every layer and scale: the landscape behind the (ℓ, a) selection
(docs/method.md, E11).

    python bench/steering_landscape.py                      # the bundled organisms, 80 pairs, seed 0, a = 0.5, 1, 2, 4
    python bench/steering_landscape.py --out bench/results/steering-landscape-bundled.json

For every layer ℓ the per-class tuning shifts v_ℓ,c (c ∈ LP, F, R) and the baselines are fitted on the fit half
exactly as ``steer`` fits them at its one layer (``steering.class_shifts`` + ``steering.directions``), and the
held-out conditions of ``steer`` (``steering.CURVES`` at every scale, the class parts) run on the held-out half,
so a row equals what ``alignment-probe run --experiments patch_tuned_to_base,steer --steer-layer ℓ --steer-c a``
reports there (without the null). Beside them, per layer: the fit half's v_ℓ,c rows (what ``steer_scan`` chooses
(ℓ, a) from) and two diagnostics on the held-out half:

* ``replace``: the full tuned → base patch at ℓ at every position (E1's condition): how much a layer's whole
  shift carries;
* ``class_mean``: an oracle that adds each sequence's *own* mean shift per position class at its predicting
  positions (it reads the tuned model on that very sequence, so no per-class constant vector can do better):
  how much per-class constant vectors at ℓ can carry at all.

And, with no steering at all: the base model's Δlogp with its logits divided by a temperature T (1.05, 1.1),
as a fraction of the gain — what a perturbation that only flattens the next-token distributions "recovers".

Every number is a recovered fraction (mean effect / mean gain over the half's pairs, paired bootstrap 95% CI,
``stats.ratio_ci``; per-token: the same with per-token Δlogp). Nothing here is chosen on the held-out half: it
is the full table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

import alignment_probe as ap
from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine import make_engine
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import steering
from alignment_probe.experiments.lowrank import ratio_of_means
from alignment_probe.interventions import Replace, SequenceContext, predicting_classes


@dataclass(frozen=True, eq=False)
class ClassMeanShift:
    """Oracle: add this sequence's own mean shift (source − target) per position class at its predicting positions."""

    first_k: int = steering.FIRST_K
    same_on_both_prompts = False  # the LP value is each run's own (equal in exact arithmetic only)

    def __call__(self, ctx: SequenceContext) -> torch.Tensor:
        cls = predicting_classes(ctx.prompt_len, ctx.length, self.first_k, ctx.target.shape[0])
        shift = (ctx.source - ctx.target).float()
        out = ctx.target.clone()
        for c in range(3):
            at = cls == c
            if at.any():
                out[at] = ctx.target[at] + shift[at].mean(0).to(ctx.target.dtype)
        return out


def fraction(num: np.ndarray, den: np.ndarray, seed: int, n_boot: int) -> list[float]:
    return [round(x, 4) for x in ratio_of_means(num, den, seed=seed, n_boot=n_boot)]


@torch.inference_mode()
def temperature_fraction(twins, pairs, held, gain, temperatures, seed, n_boot) -> dict[str, list[float]]:
    out = {}
    by_t = {t: [] for t in (1.0, *temperatures)}
    for p in pairs:
        if p.pair_id not in held:
            continue
        for t in by_t:
            delta = 0.0
            for side, sign in (("chosen", 1.0), ("rejected", -1.0)):
                seq, toks = p.sequence(side), ap.sequence_tokens(p, side)
                logp = (twins.base(toks)[0] / t).log_softmax(-1)
                target = toks[0, seq.completion_start : seq.length]
                delta += sign * float(logp[seq.completion_start - 1 : seq.length - 1].gather(-1, target[:, None]).sum())
            by_t[t].append(delta)
    clean = np.array(by_t[1.0])
    for t in temperatures:
        out[f"T={t}"] = fraction(np.array(by_t[t]) - clean, gain, seed, n_boot)
    return out


def main(argv: list[str] | None = None) -> int:
    ap_ = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap_.add_argument("--n-pairs", type=int, default=80)
    ap_.add_argument("--seed", type=int, default=0)
    ap_.add_argument("--cs", default="0.5,1,2,4", help="the scales a (1 is always added)")
    ap_.add_argument("--n-boot", type=int, default=1000)
    ap_.add_argument("--threads", type=int, default=1)
    ap_.add_argument("--out", default=None, help="write the table as JSON here (and a .txt beside it)")
    args = ap_.parse_args(argv)
    torch.set_num_threads(args.threads)
    cs = sorted({float(c) for c in args.cs.split(",")} | {1.0})
    start = time.time()
    twins = ap.load_twins()
    pairs = list(ap.load_pairs(n=args.n_pairs, seed=args.seed, tokenizer=twins.tokenizer, max_length=512))
    scores = ap.score(twins, pairs).set_index("pair_id")
    fit, held = stats.explore_confirm([p.pair_id for p in pairs], seed=args.seed)
    fit_pairs = [p for p in pairs if p.pair_id in set(fit)]
    specs: list[PatchSpec] = []
    for layer in range(twins.n_layers):
        shift = steering.class_shifts(twins, fit_pairs, layers=[layer], keep=layer)[layer]
        vectors, _ = steering.directions(shift, k=steering.DEFAULT_K, centre=True, seed=args.seed, layer=layer)
        specs += steering.curve_specs(
            vectors, steering.CURVES, layer=layer, hook="resid_post", scales=cs, pair_ids=held, split="heldout"
        )
        for i, cls in enumerate(steering.CLASS_ONLY):
            only = torch.zeros_like(vectors[steering.MAIN])
            only[i] = vectors[steering.MAIN][i]
            specs += [
                steering.class_spec(
                    steering.CLASS_ONLY[cls],
                    a * only,
                    layer=layer,
                    hook="resid_post",
                    param=a,
                    split="heldout",
                    pair_ids=held,
                )
                for a in cs
            ]
        specs += [
            steering.class_spec(
                steering.SCAN,
                a * vectors[steering.MAIN],
                layer=layer,
                hook="resid_post",
                param=a,
                split="fit",
                pair_ids=fit,
            )
            for a in cs
        ]
        specs.append(
            steering.class_spec(
                steering.SCAN_RANDOM,
                1.0 * vectors[steering.RANDOM],
                layer=layer,
                hook="resid_post",
                param=1.0,
                split="fit",
                pair_ids=fit,
            )
        )
        for name, iv, scope in (("replace", Replace(), "all"), ("class_mean", ClassMeanShift(), "predicting")):
            specs.append(
                PatchSpec(
                    RowKey(name, "base", "tuned", "resid_post", scope, "both", layer, math.nan, "heldout"),
                    iv,
                    frozenset(held),
                )
            )
    effects = make_engine("fast").run(twins, pairs, specs)
    gain = {"fit": scores.gain.reindex(fit).to_numpy(), "heldout": scores.gain.reindex(held).to_numpy()}
    gain_pt = scores.gain_per_token.reindex(held).to_numpy()
    table = []
    for layer in range(twins.n_layers):
        at = effects[effects.layer == layer]
        row: dict = {"layer": layer}
        for (name, split), rows in at.groupby(["experiment", "split"]):
            for c, r in rows.groupby(rows.param.fillna(1.0)):
                r = r.set_index("pair_id").reindex(fit if split == "fit" else held)
                sign = -1.0 if name in (steering.REVERSE, steering.REVERSE_RANDOM) else 1.0
                key = f"{name}@{split}" + ("" if c == 1.0 else f"@a={c:g}")
                row[key] = fraction(sign * r.effect.to_numpy(), gain[split], args.seed, args.n_boot)
                if split == "heldout" and c == 1.0 and sign > 0:
                    n = scores.reindex(r.index)
                    per_token = (r.patched_logp_chosen - r.clean_logp_chosen) / n.n_chosen_tokens - (
                        r.patched_logp_rejected - r.clean_logp_rejected
                    ) / n.n_rejected_tokens
                    row[f"{name}@per_token"] = fraction(per_token.to_numpy(), gain_pt, args.seed, args.n_boot)
        table.append(row)
    result = {
        "model": "bundled organisms",
        "n_pairs": len(pairs),
        "seed": args.seed,
        "cs": cs,
        "n_boot": args.n_boot,
        "fit_pairs": len(fit),
        "heldout_pairs": len(held),
        "heldout_gain": float(gain["heldout"].mean()),
        "fit_gain": float(gain["fit"].mean()),
        "temperature": temperature_fraction(
            twins, pairs, set(held), gain["heldout"], (1.05, 1.1), args.seed, args.n_boot
        ),
        "layers": table,
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    names = [
        "steer_scan@fit",
        "steer_scan_random@fit",
        "steer@heldout",
        "steer_random@heldout",
        "steer_pooled@heldout",
        "steer_contrast@heldout",
        "steer_lowrank@heldout",
        "steer_last_prompt@heldout",
        "steer_first@heldout",
        "steer_rest@heldout",
        "steer_reverse@heldout",
        "steer_reverse_random@heldout",
    ]
    cols = [
        f"{n}{'' if a == 1.0 else f'@a={a:g}'}"
        for n in names
        for a in cs
        if not (n.startswith("steer_scan_random") and a != 1.0)
    ]
    cols += ["steer@per_token", "steer_random@per_token", "replace@heldout", "class_mean@heldout"]

    def fmt(x: tuple[float, float, float] | None) -> str:
        return f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]" if x else "—"

    lines = [
        f"recovered fraction (reverse: lost fraction) at a = 1 unless marked, bundled organisms, {len(pairs)} "
        f"pairs, seed {args.seed}; fit half {len(fit)}, held-out half {len(held)}; {result['seconds']} s",
        "",
    ]
    for row in table:
        lines.append(f"layer {row['layer']}")
        lines += [f"  {c:40s} {fmt(row.get(c))}" for c in cols]
    lines.append("")
    lines += [f"base logits / {k}: {fmt(v)} of the held-out gain" for k, v in result["temperature"].items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        Path(args.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
