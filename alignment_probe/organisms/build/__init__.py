"""Build the project's model organisms from a seed: corpus → tokenizer → base → tuned → twins → metrics.

    python -m alignment_probe.organisms.build --out data --seed 0            # the shipped organisms
    python -m alignment_probe.organisms.build --out /tmp/x --size small      # seconds, for tests
    python -m alignment_probe.organisms.build --out data --only head_layer4_h1   # retrain one named twin

Layout written under ``out``::

    organisms/base/          HF checkpoint (config.json, model.safetensors, tokenizer files)
    organisms/tuned/         base after DPO on the train pairs, all parameters trainable
    organisms/twins/         planted twins: mlp_layer{L}.safetensors (changed tensors) + .json recipe;
                             named twins {name}.safetensors + .json (one query head, one KV head, two MLPs)
    organisms/metrics.json   measured held-out loss and gains with bootstrap CIs
    pairs/heldout.jsonl      held-out preference pairs (prompt, chosen, rejected, + metadata)
    pairs/train.jsonl        train pairs (only when small enough to ship)
    README.md                what all this is, with the measured numbers
    .gitignore               ignores organisms/.cache (materialised twins)

Everything is seeded; on a given machine (same torch version and thread count) the same seed gives
bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignment_probe.organisms.build.config import SIZES, BuildConfig
from alignment_probe.organisms.build.measure import bootstrap_ci
from alignment_probe.organisms.build.named import build_named_twins
from alignment_probe.organisms.build.pipeline import build_organisms

__all__ = ["SIZES", "BuildConfig", "bootstrap_ci", "build_named_twins", "build_organisms", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alignment_probe.organisms.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help="retrain only these named twins (e.g. head_layer4_h1,kv_layer3_g0,mlp_layers2_5) on "
        "the existing build in --out, leaving every other file as it is",
    )
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        metrics = build_named_twins(args.out, names, seed=args.seed, size=args.size, progress=not args.quiet)
        print(
            json.dumps(
                {f"twin_{n}": {k: metrics[f"twin_{n}"][k] for k in ("mean_gain", "gain_ci95")} for n in names}, indent=2
            )
        )
        return 0
    metrics = build_organisms(args.out, seed=args.seed, size=args.size, progress=not args.quiet)
    print(json.dumps({k: metrics[k] for k in ("heldout_loss", "timings_s")}, indent=2))
    return 0
