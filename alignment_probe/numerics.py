"""NaN/inf checks for forward passes: cheap on the normal path, precise when something is wrong.

The check costs nothing extra: every forward ends in per-sequence sums of completion log-probs,
and a NaN or inf anywhere upstream of a scored token (an activation, a logit) reaches that sum —
attention spreads a non-finite value to every later position, RMS/LayerNorm turn inf into NaN,
and log-probs are never +inf. So engines check the sums they already have; only when one is not
finite do we rerun that one sequence with a full cache to name the first hook point that broke.

Errors are :class:`~alignment_probe.errors.NumericalError` (exit code 3) and name the pair
(``pair_id``, the 0-based line in the data), the sequence, the model and the layer — for a
patched run, the patched condition.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch

from alignment_probe.backends import backend_of
from alignment_probe.errors import NumericalError

FIX = (
    "Check that the checkpoint produces sensible text in transformers, use --dtype float32 if you used "
    "bfloat16 (a value over ~3e38 overflows either way, but bfloat16 loses precision first), or remove that "
    "line from the data to continue without it."
)


@torch.inference_mode()
def first_nonfinite_hook(model: Any, tokens: Sequence[int]) -> str | None:
    """The first hook point (in forward order) whose activation holds a NaN or inf on ``tokens``,
    or ``"logits"``; None if the whole forward is finite."""
    names: list[str] = []
    cache: dict[str, bool] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        if hook.name not in cache:
            names.append(hook.name)
            cache[hook.name] = bool(torch.isfinite(act).all())

    wanted = (
        "hook_embed",
        "hook_pos_embed",
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_resid_post",
    )
    logits, _ = backend_of(model).run(torch.tensor([list(tokens)]), hooks=[(lambda n: n.endswith(wanted), keep)])
    for name in names:
        if not cache[name]:
            return name
    return None if bool(torch.isfinite(logits).all()) else "logits"


def _where(hook: str | None) -> str:
    if hook is None:
        return "but a rerun of that sequence alone is finite (a batching problem: please report it)"
    if hook.startswith("blocks."):
        layer = hook.split(".")[1]
        return f"first at {hook} (layer {layer})"
    return f"first at {hook}"


def check_clean(pair: Any, clean: Mapping[str, Mapping[tuple[int, str], float]], tokenized: Iterable[Any]) -> None:
    """Raise if any clean (unpatched) log-prob is NaN/inf; ``clean`` is model -> (pair_id, side) -> logp."""
    for model_name, values in clean.items():
        for (pair_id, side), value in values.items():
            if math.isfinite(value):
                continue
            t = next(t for t in tokenized if t.pair_id == pair_id)
            seq = t.sequence(side)
            hook = first_nonfinite_hook(pair.models()[model_name], seq.prompt_ids + seq.completion_ids)
            raise NumericalError(
                f"The {model_name} model produced NaN/inf on pair_id {pair_id} (line {pair_id + 1} of the data), "
                f"{side} sequence, without any patch: {_where(hook)}; log p({side}) = {value}. {FIX}"
            )


def check_scores(pair: Any, scores: Any, tokenized: Sequence[Any]) -> None:
    """Raise if a scores table (see scoring.py) holds a non-finite log-prob."""
    clean: dict[str, dict[tuple[int, str], float]] = {}
    for model_name in ("base", "tuned"):
        for side in ("chosen", "rejected"):
            col = scores[f"{model_name}_logp_{side}"].to_numpy()
            for pair_id, value in zip(scores["pair_id"].to_numpy(), col):
                if not math.isfinite(float(value)):
                    clean.setdefault(model_name, {})[(int(pair_id), side)] = float(value)
    check_clean(pair, clean, tokenized)


def describe_spec(spec: Any) -> str:
    k = spec.key
    param = "" if isinstance(k.param, float) and math.isnan(k.param) else f", param {k.param:g}"
    return (
        f"{k.experiment} ({k.source} → {k.target}, hook {k.hook} of layer {k.layer}, scope {k.scope}, "
        f"sides {k.sides}{param}, split {k.split})"
    )


def check_patched(patched: Mapping[tuple[int, int, str], float], specs: Sequence[Any]) -> None:
    """Raise if a patched log-prob is NaN/inf; ``patched`` is (spec index, pair_id, side) -> logp.
    Call after the clean runs passed :func:`check_clean`, so the patch is what broke."""
    for (index, pair_id, side), value in patched.items():
        if math.isfinite(value):
            continue
        spec = specs[index]
        raise NumericalError(
            f"Patching {describe_spec(spec)} produced NaN/inf on pair_id {pair_id} (line {pair_id + 1} of the "
            f"data), {side} sequence, in layer {spec.key.layer} or after it; the unpatched runs of this pair are "
            f"finite, so the patched activation is at fault (the source model's activation at blocks."
            f"{spec.key.layer}.hook_{spec.key.hook}, or an extreme α/scale). Check that activation, or leave this "
            "experiment out with --experiments."
        )
