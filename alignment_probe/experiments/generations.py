"""E12 in the run: what the models say, on a few prompts of the run's data (the report's "What the models say").

A whole-data step (no patching rows): the first ``N_PROMPTS`` pairs by id are decoded greedily for
``SuiteConfig.generation_tokens`` tokens (``MAX_NEW_TOKENS``; 16 in the tour) from the base, the tuned model, the
base with the tuned model's ``resid_post`` patched in at mid-depth (lockstep decoding) and the base with the tuned
model's mid-depth block transplanted. The conditions are fixed in advance, never chosen from the data. The general
tool is ``alignment-probe generate`` / ``ap.generate`` (:mod:`alignment_probe.generation`).
"""

from __future__ import annotations

from typing import Any

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.registry import Experiment, Name, Option, Plan, Tables, register
from alignment_probe.generation import generate

NAME = "generations"
N_PROMPTS = 3
MAX_NEW_TOKENS = 24


def conditions(n_layers: int) -> list[str]:
    mid = n_layers // 2
    return ["base", "tuned", f"patch:resid_post@{mid}", f"window@{mid}"]


def _compute(plan: Plan) -> dict[str, Any]:
    prompts = sorted(plan.tokenized, key=lambda t: t.pair_id)[:N_PROMPTS]
    tokens = plan.cfg.generation_tokens
    rows = generate(plan.twins, prompts, conditions(plan.n_layers), max_new_tokens=tokens, seed=plan.cfg.seed)
    return {"conditions": conditions(plan.n_layers), "max_new_tokens": tokens, "greedy": True, "rows": rows}


def summarize_generations(tables: Tables) -> dict[str, dict[str, Any]]:
    return {NAME: dict(tables.fits[NAME])}


def _check_tokens(n: Any, cfg: Any, n_layers: int | None) -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"generation_tokens must be a whole number ≥ 1 (tokens decoded per prompt), got {n!r}.")


register(
    Experiment(
        key=NAME,
        options=(
            Option(
                "generation_tokens",
                "int",
                MAX_NEW_TOKENS,
                "E12 in the run: tokens decoded per prompt and condition",
                check=_check_tokens,
            ),
        ),
        method="E12",
        order=95,
        names=(
            Name(
                NAME,
                "generations",
                "#7f7f7f",
                "A few prompts decoded (greedy) by base, tuned, base with tuned's mid-depth resid_post patched in "
                "(lockstep) and base with tuned's mid-depth block transplanted.",
                per_layer=False,
            ),
        ),
        compute=_compute,
        summarize=summarize_generations,
    )
)
