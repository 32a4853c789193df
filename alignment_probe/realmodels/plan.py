"""The SmolLM2 protocol's plan: which runs, what each one patches, the models and pairs they run on.

:mod:`~alignment_probe.realmodels.findings` drives it; :mod:`~alignment_probe.realmodels.protocol` runs one
planned run (:func:`~alignment_probe.realmodels.protocol.run_one`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.manifest import write_json_atomic
from alignment_probe.realmodels.dpo_lora import DEFAULT_DATA, heldout_pairs, materialise_tuned
from alignment_probe.realmodels.smollm2 import convert_smollm2

REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "smollm2"
HELPFUL_DATA = DEFAULT_DATA.parents[1] / "helpful-base" / "test.jsonl.gz"
DPO_ADAPTER = "dpo-lora-s0"
PLANTED_ADAPTER = "dpo-planted-L15"
PLANTED_LAYER = 15
RUNS = (
    "harmless",
    "harmless-peak",
    "controls",
    "planted",
    "helpful",
    "windows",
    "cross",
    "planted-windows",
    "heads",
    "atp",
    "planted-atp",
    "steer",
    "atp-check",
)

# What each run patches. "cpu" is what one 2-core CPU session can afford (docs/findings-smollm2.md
# has the times); "full" is the paper's whole protocol, for a GPU.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {
        "n_pairs": 80,
        "layers": "0,6,12,15,18,24,29",
        "planted_layers": "0,6,12,14,15,16,18,24,29",
        "harmless": (
            "patch_tuned_to_base",
            "patch_base_to_tuned",
            "identity",
            "source_chosen_only",
            "source_rejected_only",
            "lasso",
        ),
        "helpful": ("patch_tuned_to_base", "identity", "source_chosen_only", "source_rejected_only"),
        "planted": ("patch_tuned_to_base", "identity"),
        "alphas": (0.0, 0.5, 1.0, 1.5),
        "lowrank_ks": (1, 4, 16, 64),
        "peak_span": 0,
        # the localization instruments (E8, E9): one-block windows at every layer cost about one E1 sweep
        "window_layers": "0:30",
        "window_widths": (1,),
        "planted_window_widths": (1, 2),
        "cross": ("cross_2x2", "shift"),
        "atp_confirm_k": 10,
    },
    "full": {
        "n_pairs": 400,
        "layers": "0:30",
        "planted_layers": "0:30",
        "harmless": (
            "patch_tuned_to_base",
            "patch_base_to_tuned",
            "identity",
            "random_noise",
            "random_direction",
            "source_chosen_only",
            "source_rejected_only",
            "vector_chosen",
            "vector_rejected",
            "vector_contrast",
            "lasso",
        ),
        "helpful": (
            "patch_tuned_to_base",
            "patch_base_to_tuned",
            "identity",
            "source_chosen_only",
            "source_rejected_only",
            "lasso",
        ),
        "planted": ("patch_tuned_to_base", "patch_base_to_tuned", "identity"),
        "alphas": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
        "lowrank_ks": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "peak_span": 2,
        "window_layers": "0:30",
        "window_widths": (1, 2, 4),
        "planted_window_widths": (1, 2, 4),
        "cross": ("cross_2x2", "shift"),
        "atp_confirm_k": 30,
    },
}


def neighbours(peak: int, swept: Sequence[int], span: int) -> tuple[int, ...]:
    """The peak and the swept layers ``span`` positions either side of it in the sweep."""
    swept = sorted(swept)
    i = swept.index(peak)
    return tuple(swept[max(0, i - span) : i + span + 1])


def picked_blocks(windows: dict[str, Any], top: int = 2) -> tuple[int, ...]:
    """Where to look closer (heads, per-token maps): for the one-block transplant and the one-block revert, the
    ``top`` blocks with the largest mean gain carried *on the explore pairs* (the width-1 ``selection``'s explore
    ranking; statistics.md: the heads run then reports its head effects on the confirm pairs, which chose
    nothing). A summary made before the explore ranking existed: its held-out chosen block only."""
    picked: set[int] = set()
    for key in ("window_transplant", "window_revert"):
        entry = windows["experiments"].get(key) or {}
        selection = ((entry.get("by_width") or {}).get("1") or {}).get("selection") or {}
        if selection.get("top"):
            picked |= {int(c["cell"]) for c in selection["top"][:top]}
        elif entry.get("heldout"):
            picked.add(int(entry["heldout"]["chosen_layer"]))
    return tuple(sorted(picked))


def explore_peak(e1: dict[str, Any]) -> int:
    """E1's peak chosen on the explore pairs (``selection.chosen``), the layer handed to low rank and α; its
    all-pairs peak only when the run had too few pairs to split."""
    selection = e1.get("selection")
    return int(selection["chosen"]) if selection else int(e1["peak_layer"])


def models(
    cache_dir: Path | None = None, adapters: Path = REPO_DATA, twins: Sequence[str] = ("dpo", "planted")
) -> dict[str, Path]:
    """Checkpoint directories of the base and the ``twins`` asked for (converted / merged once, then cached)."""
    base = convert_smollm2(cache_dir)
    names = {"dpo": DPO_ADAPTER, "planted": PLANTED_ADAPTER}
    return {"base": base} | {t: materialise_tuned(adapters / names[t], cache_dir, base_dir=base) for t in twins}


def write_heldout_ids(path: Path, data: Path = DEFAULT_DATA) -> Path:
    """The harmless-base pairs the adapters were not trained on, as a JSON list of pair ids."""
    ids = [p.pair_id for p in heldout_pairs(data)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, ids)
    return path


def plan(
    paths: dict[str, Path],
    ids_file: Path,
    *,
    protocol: dict[str, Any],
    n_pairs: int,
    max_length: int,
    layers: Sequence[int],
    planted_layers: Sequence[int],
    window_layers: Sequence[int],
    seed: int,
    n_boot: int,
    peak_span: int,
    e1: dict[str, Any] | None = None,
    windows: dict[str, Any] | None = None,
    harmless_data: Path = DEFAULT_DATA,
    helpful_data: Path = HELPFUL_DATA,
) -> dict[str, dict[str, Any]]:
    """Keyword arguments of each run's :class:`~alignment_probe.run.RunRequest`. ``harmless-peak`` and
    ``controls`` patch at the peak and onset layers of ``harmless/``'s E1, so they are planned only once
    its summary ``e1`` is known; ``heads`` looks at the blocks ``windows/`` picked (its summary ``windows``)."""
    common = {"n_pairs": n_pairs, "max_length": max_length}
    harmless = {"data": str(harmless_data), "pair_ids": str(ids_file), **common}
    # extra_hooks stated everywhere: the suite's default (the components) is not what these runs measure
    out_plan: dict[str, dict[str, Any]] = {
        "harmless": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=protocol["harmless"], layers=tuple(layers), extra_hooks=(), seed=seed, n_boot=n_boot
            ),
        },
        "planted": {
            "base": paths["base"],
            "tuned": paths.get("planted"),
            **harmless,
            "suite": SuiteConfig(
                experiments=protocol["planted"],
                extra_hooks=("mlp_out",),
                layers=tuple(planted_layers),
                seed=seed,
                n_boot=n_boot,
            ),
        },
        "helpful": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            "data": str(helpful_data),
            **common,
            "suite": SuiteConfig(
                experiments=protocol["helpful"], layers=tuple(layers), extra_hooks=(), seed=seed, n_boot=n_boot
            ),
        },
        # E8 weight transplants at every layer, and the 2×2 design and the distribution shift at the swept layers
        "windows": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("window_transplant", "window_revert"),
                extra_hooks=(),
                layers=tuple(window_layers),
                window_widths=tuple(protocol["window_widths"]),
                seed=seed,
                n_boot=n_boot,
            ),
        },
        "cross": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=protocol["cross"], extra_hooks=(), layers=tuple(layers), seed=seed, n_boot=n_boot
            ),
        },
        # E10 at full resolution: every layer's 4 hooks and every head by attribution patching, its top conditions
        # confirmed by exact patching; the planted twin as the known answer (its layer-15 MLP first, zeros below)
        "atp": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("atp", "atp_heads", "atp_confirm"),
                extra_hooks=(),
                layers=tuple(window_layers),
                atp_confirm_k=protocol["atp_confirm_k"],
                seed=seed,
                n_boot=n_boot,
            ),
        },
        "planted-atp": {
            "base": paths["base"],
            "tuned": paths.get("planted"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("atp", "atp_heads", "atp_confirm"),
                extra_hooks=(),
                layers=tuple(window_layers),
                atp_confirm_k=protocol["atp_confirm_k"],
                seed=seed,
                n_boot=n_boot,
            ),
        },
        # AtP beside exact patching of the same conditions (E1 at four hooks, the swept layers): its validation
        "atp-check": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("atp", "patch_tuned_to_base"),
                layers=tuple(layers),
                extra_hooks=("resid_pre", "attn_out", "mlp_out"),
                seed=seed,
                n_boot=n_boot,
            ),
        },
        # E11 at the layer a steering scan picks on the fit half (the swept layers), helpful-base as transfer data
        "steer": {
            "base": paths["base"],
            "tuned": paths.get("dpo"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("steer",),
                extra_hooks=(),
                layers=tuple(layers),
                transfer_data=str(helpful_data),
                seed=seed,
                n_boot=n_boot,
            ),
        },
        # the planted twin's known answer for the transplants: every window over block 15 carries the gain
        "planted-windows": {
            "base": paths["base"],
            "tuned": paths.get("planted"),
            **harmless,
            "suite": SuiteConfig(
                experiments=("window_transplant", "window_revert"),
                extra_hooks=(),
                layers=tuple(window_layers),
                window_widths=tuple(protocol["planted_window_widths"]),
                seed=seed,
                n_boot=n_boot,
            ),
        },
    }
    if windows is not None:  # E7 heads and E9 per-token maps at the blocks the transplants pick
        # (with AtP's head map at the same layers: its validation against the exact head patches)
        out_plan["heads"] = {
            **out_plan["windows"],
            "suite": SuiteConfig(
                experiments=("head_patch", "kv_head_patch", "token_map", "atp_heads"),
                extra_hooks=(),
                layers=picked_blocks(windows),
                seed=seed,
                n_boot=n_boot,
            ),
        }
    if e1 is not None:
        peak, onset = explore_peak(e1), e1["onset_layer"]
        # α at the peak (chosen on the explore pairs: its held-out numbers are then the confirm pairs'), its swept
        # neighbours and the onset; low rank (many patches per layer) at the peak and the onset: with a curve
        # that rises to the last layer the peak is the unembedding's input, and the onset is where the effect
        # first takes hold.
        peak_layers = tuple(sorted({*neighbours(peak, layers, peak_span), onset}))
        out_plan["harmless-peak"] = {
            **out_plan["harmless"],
            "suite": SuiteConfig(
                experiments=("alpha", "lowrank_difference", "lowrank_reconstruct"),
                layers=tuple(peak_layers),
                extra_hooks=(),
                alpha_layers=tuple(peak_layers),
                alphas=protocol["alphas"],
                lowrank_layers=tuple(sorted({peak, onset})),
                lowrank_ks=protocol["lowrank_ks"],
                seed=seed,
                n_boot=n_boot,
            ),
        }
        # Random controls at the same two layers (the cpu protocol's sweep leaves them out).
        out_plan["controls"] = {
            **out_plan["harmless"],
            "suite": SuiteConfig(
                experiments=("identity", "random_noise", "random_direction"),
                layers=tuple(sorted({onset, peak})),
                extra_hooks=(),
                seed=seed,
                n_boot=n_boot,
            ),
        }
    return out_plan
