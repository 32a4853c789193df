"""The findings driver: the protocol's runs in order, then findings.json, findings-tables.md and the figures.

``python -m alignment_probe.realmodels.findings`` (the package docstring says what it runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from alignment_probe.errors import EXIT_BAD_INPUT, AlignmentProbeError
from alignment_probe.manifest import write_json_atomic
from alignment_probe.realmodels.dpo_lora import DEFAULT_DATA
from alignment_probe.realmodels.findings.collect import collect, extra_hook_results, read_json
from alignment_probe.realmodels.findings.tables import render_tables
from alignment_probe.realmodels.plan import (
    PLANTED_LAYER,
    PROTOCOLS,
    REPO_DATA,
    RUNS,
    models,
    plan,
    write_heldout_ids,
)
from alignment_probe.realmodels.protocol import run_one
from alignment_probe.report import figures as F
from alignment_probe.report.html import load_run as read_run_files
from alignment_probe.vocab import parse_layers


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figures(out: Path, run_dirs: dict[str, Path], log: Callable[[str], None] = print) -> list[Path]:
    """Per-run report figures worth putting in the document, as .html (always) and .png (when kaleido
    finds a browser)."""
    wanted = {
        "harmless": ("layer_curve", "directionality", "source_variants", "lasso_coefficients"),
        "controls": ("controls",),
        "harmless-peak": ("alpha_dose_response", "lowrank"),
        "planted": ("layer_curve",),
        "helpful": ("layer_curve", "directionality", "source_variants"),
        "windows": ("windows",),
        "cross": ("cross_2x2", "shift"),
        "planted-windows": ("windows",),
        "heads": ("heads", "token_map", "atp_heads_vs_exact"),
        "atp": ("atp_map", "atp_vs_exact"),
        "planted-atp": ("atp_map",),
        "atp-check": ("atp_vs_exact",),
        "steer": ("steer", "steer_layers"),
    }
    png = F.static_export_available()
    if not png:
        log("note: kaleido found no Chrome/Chromium, so figures are written as .html only")
    written: list[Path] = []
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for run, names in wanted.items():
        if run not in run_dirs or not (run_dirs[run] / "summary.json").exists():
            continue
        summary, _, scores, _ = read_run_files(run_dirs[run])
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
                written.append(
                    F.save_static(
                        fig, stem.with_suffix(".png"), scale=1.5, width=900, height=max(480, fig.layout.height or 0)
                    )
                )
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def run_protocol(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m alignment_probe.realmodels.findings",
        description="The SmolLM2 real-model protocol: one command from the committed adapters to every number in "
        "docs/findings-smollm2.md.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/smollm2"))
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="cpu",
        help="cpu: what a 2-core CPU affords (default); full: the paper's whole protocol, for a GPU",
    )
    p.add_argument("--n-pairs", type=int, default=None, help="pairs per run (default: the protocol's; paper: 80)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (the adapters were trained at 128)")
    p.add_argument("--layers", default=None, help="layers swept by harmless/ and helpful/ (default: the protocol's)")
    p.add_argument("--planted-layers", default=None, help="layers swept by planted/ (default: the protocol's)")
    p.add_argument(
        "--window-layers",
        default=None,
        help="first blocks of the windows of windows/ and planted-windows/ (default: the protocol's)",
    )
    p.add_argument(
        "--peak-span",
        type=int,
        default=None,
        help="α at the peak and this many swept layers either side (default: the protocol's)",
    )
    p.add_argument("--runs", default=",".join(RUNS), help=f"which runs (default all: {','.join(RUNS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per run, launched with torchrun (--threads each, default 1; one GPU each with "
        "--device cuda); same numbers as one process",
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--adapters", type=Path, default=REPO_DATA, help="folder holding the committed adapters")
    p.add_argument(
        "--hh-dir",
        type=Path,
        default=DEFAULT_DATA.parents[1],
        help="HH-RLHF folder with harmless-base/ and helpful-base/ test.jsonl.gz (default: "
        "$ALIGNMENT_PROBE_HH_DIR, else ../shared/data/hh-rlhf)",
    )
    a = p.parse_args(argv)
    harmless_data = a.hh_dir / "harmless-base" / "test.jsonl.gz"
    helpful_data = a.hh_dir / "helpful-base" / "test.jsonl.gz"
    for f in (harmless_data, *([helpful_data] if {"helpful", "steer"} & set(a.runs.split(",")) else [])):
        if not f.is_file():
            p.error(
                f"{f} not found: pass --hh-dir (or set ALIGNMENT_PROBE_HH_DIR) to the folder holding "
                "harmless-base/ and helpful-base/ test.jsonl.gz of the datasets dataset Anthropic/hh-rlhf"
            )
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    log = print
    protocol = PROTOCOLS[a.protocol]
    layers = parse_layers(a.layers or protocol["layers"], "--layers") or ()
    planted_layers = parse_layers(a.planted_layers or protocol["planted_layers"], "--planted-layers") or ()
    window_layers = parse_layers(a.window_layers or protocol["window_layers"], "--window-layers") or ()
    peak_span = protocol["peak_span"] if a.peak_span is None else a.peak_span
    wanted = [r for r in a.runs.split(",") if r]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    paths = models(
        a.cache_dir, a.adapters, twins=sorted({"planted" if r.startswith("planted") else "dpo" for r in wanted})
    )
    ids_file = write_heldout_ids(out / "heldout_pair_ids.json", harmless_data)
    settings = dict(
        protocol=protocol,
        n_pairs=a.n_pairs or protocol["n_pairs"],
        max_length=a.max_length,
        layers=layers,
        planted_layers=planted_layers,
        window_layers=window_layers,
        seed=a.seed,
        n_boot=a.n_boot,
        peak_span=peak_span,
    )
    data = dict(harmless_data=harmless_data, helpful_data=helpful_data)
    summaries: dict[str, dict[str, Any]] = {}

    def run(name: str, runs: dict[str, dict[str, Any]]) -> None:
        summaries[name] = run_one(
            name, runs[name], out, device=a.device, batch_size=a.batch_size, log=log, nproc=a.nproc, threads=a.threads
        )

    for name in (
        "harmless",
        "planted",
        "helpful",
        "windows",
        "cross",
        "planted-windows",
        "atp",
        "planted-atp",
        "steer",
        "atp-check",
    ):
        if name in wanted:
            run(name, plan(paths, ids_file, **settings, **data))
    if "heads" in wanted:
        windows = summaries.get("windows") or read_json(out / "windows" / "summary.json")
        if not windows:
            p.error("heads needs the windows run first (it looks at the blocks the transplants pick)")
        run("heads", plan(paths, ids_file, windows=windows, **settings, **data))
    later = [name for name in ("harmless-peak", "controls") if name in wanted]
    if later:
        harmless = summaries.get("harmless") or read_json(out / "harmless" / "summary.json")
        if not harmless:
            p.error(f"{', '.join(later)} need(s) the harmless run first (it patches at its peak and onset layers)")
        runs = plan(paths, ids_file, e1=harmless["experiments"]["patch_tuned_to_base"], **settings, **data)
        for name in later:
            run(name, runs)
    for name in RUNS:  # findings.json covers every finished run in --out, not only the ones run now
        if name not in summaries and (out / name / "summary.json").exists():
            summaries[name] = read_json(out / name / "summary.json")
    n_layers = next(iter(summaries.values()))["n_layers"] if summaries else 30
    extra = {}
    if "planted" in summaries:
        extra["planted"] = {"by_hook": extra_hook_results(out / "planted", ("mlp_out",), seed=a.seed, n_boot=a.n_boot)}
    found = collect(summaries, n_layers=n_layers, planted_layer=PLANTED_LAYER, extra=extra)
    found["settings"] = {
        **settings,
        "protocol": a.protocol,
        "layers": list(layers),
        "planted_layers": list(planted_layers),
        "window_layers": list(window_layers),
        "device": a.device,
        "threads": torch.get_num_threads(),
        "models": {k: str(v) for k, v in paths.items()},
        "timing": {r: read_json(out / r / "wall_seconds.json") for r in summaries},
    }
    write_json_atomic(out / "findings.json", found)
    (out / "findings-tables.md").write_text(render_tables(found))
    written = figures(out, {r: out / r for r in RUNS}, log=log)
    log(
        f"wrote {out / 'findings.json'}, {out / 'findings-tables.md'} and {len(written)} figure file(s) in "
        f"{out / 'figures'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``run_protocol`` with the CLI's exit codes: bad input (a run directory made with other options, a missing
    adapter or data file) prints one paragraph and exits 2 instead of a traceback."""
    import sys

    try:
        return run_protocol(argv)
    except (AlignmentProbeError, FileNotFoundError) as err:
        print(f"alignment_probe.realmodels.findings: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
