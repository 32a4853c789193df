"""A finished run directory, read back: its tables, and everything derived from them regenerated.

After the engine, a run's numbers live in its tables — ``effects.parquet``, ``scores.parquet`` and
``fits.json`` (what experiments fitted on all pairs: low rank's variance explained, the LASSO) — and
its ``manifest.json`` (configuration, model shapes and fingerprints). The summary, the figures, the
findings-vs-paper verdicts and the report are pure functions of those: ``summary.json`` and
``report.html`` are caches, and :meth:`RunDir.regenerate` rebuilds them byte for byte.

    run = ap.load_run("runs/default")
    run.effects                      # the tidy effects table (see effects.py)
    run.tokens                       # per completion token (token_map; empty when no per-token experiment ran)
    run.tokens(pair_id, "token_map", hook="resid_post", layer=3)   # one condition, coloured on its tokens
    run.summary["gain_mean"]
    run.report("runs/default/report-again.html")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from alignment_probe.errors import ConfigError
from alignment_probe.files import write_bytes_atomic
from alignment_probe.hub import resolve_snapshot
from alignment_probe.manifest import write_json_atomic
from alignment_probe.tokenview import TokenTable, token_table

if TYPE_CHECKING:  # the suite loads torch: imported when a summary is recomputed, not to read a run
    from alignment_probe.experiments.suite import SuiteConfig


def suite_config(manifest: Mapping[str, Any]) -> SuiteConfig:
    """The run's SuiteConfig, from its manifest (JSON lists back to tuples)."""
    from alignment_probe.experiments.suite import SuiteConfig

    raw: dict[str, Any] = dict((manifest.get("config") or {}).get("suite") or {})
    known = set(SuiteConfig.known())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    return SuiteConfig(**fields)


def run_info(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's ``run`` entry: seed, engine and the two checkpoints' fingerprints."""
    config, models = manifest.get("config") or {}, manifest.get("models") or {}
    return {
        "seed": config.get("seed"),
        "engine": config.get("engine"),
        "base_fingerprint": (models.get("base") or {}).get("fingerprint"),
        "tuned_fingerprint": (models.get("tuned") or {}).get("fingerprint"),
    }


def summarize_run(
    effects: pd.DataFrame,
    scores: pd.DataFrame,
    fits: Mapping[str, Any],
    manifest: Mapping[str, Any],
    tokens: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """summary.json of a run, from its tables and manifest alone."""
    from alignment_probe.experiments.suite import summarize_tables

    models = manifest.get("models") or {}
    summary = summarize_tables(
        effects,
        scores,
        fits,
        suite_config(manifest),
        n_layers=int(models["n_layers"]),
        d_model=int(models["d_model"]),
        tokens=tokens,
    )
    summary["run"] = run_info(manifest)
    return summary


@dataclass
class RunDir:
    """One run directory's tables and caches (see the module docstring)."""

    path: Path
    manifest: dict[str, Any]
    effects: pd.DataFrame
    scores: pd.DataFrame
    fits: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json as stored
    # token_effects.parquet (per-token experiments); callable: ``run.tokens(pair_id, "token_map", layer=3)`` shows one
    # condition's per-token effects on the tokens themselves (tokenview.py)
    tokens: TokenTable = field(default_factory=lambda: token_table(None))

    def summarize(self) -> dict[str, Any]:
        """The summary recomputed from the tables (equals :attr:`summary` for an untouched run)."""
        return summarize_run(self.effects, self.scores, self.fits, self.manifest, tokens=self.tokens)

    def report_html(self, summary: Mapping[str, Any] | None = None) -> str:
        from alignment_probe.report.html import render_report

        loader = getattr(self.tokens, "_tokenizer_loader", None)
        return render_report(
            summary if summary is not None else self.summarize(),
            self.manifest,
            scores=self.scores,
            effects=self.effects,
            tokens=self.tokens,
            tokenizer=loader() if loader is not None and len(self.tokens) else None,
        )

    def report(self, path: str | Path | None = None) -> Path:
        """Write the report regenerated from the tables (default: the run's own ``report.html``)."""
        target = Path(path) if path is not None else self.path / "report.html"
        return write_bytes_atomic(target, self.report_html().encode("utf-8"))

    def regenerate(self) -> dict[str, Any]:
        """Rewrite summary.json and report.html from the tables; returns the summary."""
        summary = self.summarize()
        write_json_atomic(self.path / "summary.json", summary)
        self.summary = summary
        self.report()
        return summary

    def curves(self, **where: Any) -> pd.DataFrame:
        """Per-condition, per-layer means with CIs of this run's effects (``ap.curves``), optionally sliced
        by column values, e.g. ``run.curves(experiment="patch_tuned_to_base", hook=["resid_post", "mlp_out"])``."""
        from alignment_probe.report.curves import curves, select

        cfg = suite_config(self.manifest)
        return curves(select(self.effects, **where), seed=cfg.seed, n_boot=cfg.n_boot)


def _fits_from_parts(path: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Runs written before fits.json existed keep the same records among their parts."""
    from alignment_probe.experiments.suite import plan_steps

    fits = {}
    steps = plan_steps(suite_config(manifest))
    for step in steps:
        exp = step.experiment
        same_stage = [s for s in steps if s.stage == step.stage and s.experiment.fit is not None]
        name = (
            exp.key
            if exp.compute is not None
            else f"stage{step.stage}-fit" + ("" if len(same_stage) == 1 else f"-{exp.key}")
            if exp.fit
            else None
        )
        part = path / "parts" / f"{name}.json"
        if name and part.is_file():
            fits[exp.key] = json.loads(part.read_text())
    return fits


def load_run(path: str | Path) -> RunDir:
    """Read a run directory written by ``alignment-probe run`` (or ``ap.run``)."""
    path = Path(path)
    missing = [name for name in ("manifest.json", "effects.parquet", "scores.parquet") if not (path / name).is_file()]
    if missing:
        hint = (
            " The run has not finished: rerun the same command to resume it."
            if (path / "manifest.json").is_file()
            else " Is this the --out folder of `alignment-probe run`?"
        )
        raise ConfigError(f"{path} is not a finished run directory: {', '.join(missing)} missing.{hint}")
    manifest = json.loads((path / "manifest.json").read_text())
    fits = (
        json.loads((path / "fits.json").read_text())
        if (path / "fits.json").is_file()
        else _fits_from_parts(path, manifest)
    )
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    tokens = pd.read_parquet(path / "token_effects.parquet") if (path / "token_effects.parquet").is_file() else None
    return RunDir(
        path=path,
        manifest=manifest,
        effects=pd.read_parquet(path / "effects.parquet"),
        scores=pd.read_parquet(path / "scores.parquet"),
        fits=fits,
        summary=summary,
        tokens=token_table(tokens, _tokenizer_loader(manifest)),
    )


def _tokenizer_loader(manifest: Mapping[str, Any]) -> Any:
    """Loads (once, on first use) the base model's tokenizer named in the manifest, to show tokens as text; None
    when it cannot be found here (then tokens show as ids)."""
    source = ((manifest.get("models") or {}).get("base") or {}).get("source")
    kept: list[Any] = []

    def load() -> Any:
        if not kept:
            kept.append(_try_tokenizer(source))
        return kept[0]

    return load


def _try_tokenizer(source: Any) -> Any:
    if not source:
        return None
    try:
        from alignment_probe.pair import load_tokenizer

        folder = Path(str(source)).expanduser()
        if not folder.is_dir():
            folder = Path(resolve_snapshot(str(source))[1])
        return load_tokenizer(folder, str(source))
    except Exception:  # noqa: BLE001 - a view falls back to token ids; nothing computed depends on it
        return None
