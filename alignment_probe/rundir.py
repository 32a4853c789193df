"""A run directory: everything one ``alignment-probe run`` produced, and what is needed to repeat it; written and
resumed here, and read back here, its tables in and everything derived from them regenerated.

::

    <out>/
      manifest.json   config, seed, versions, command line, model sources and fingerprints, the data
                      file's sha256, skips and truncation, pair ids, status and timestamps
      parts/          results as they complete (one file per stage and group of pairs); a restart
                      with the same command loads them and computes only what is missing
      scores.parquet  one row per pair: both models' log-probs, Δlogp, gain (see scoring.py)
      effects.parquet the tidy effects table of every experiment (see effects.py)
      token_effects.parquet  per completion token, for the per-token experiments (token_map; effects.py)
      lasso.parquet   per-layer LASSO coefficients, selection frequencies, probe R² (if run)
      fits.json       what experiments fitted on all pairs (low rank's variance explained, the LASSO)
      summary.json    headline numbers and per-experiment results (see the README for the format)
      report.html     a self-contained report with every figure and the comparison with the paper

Every file is written atomically (a flushed temporary file, then a rename), so a run killed at any
moment leaves complete files only. **Resuming**: ``manifest.json`` is written before any compute; a
later run into the same directory with the same configuration, data file and checkpoints continues
from the parts (the final tables are assembled from the parts in a fixed order, so they are
byte-identical to an uninterrupted run's). A different configuration — or a changed data file or
checkpoint — is refused unless ``--force``, which discards the old results and starts over.

**Reading back.** After the engine, a run's numbers live in its tables and its manifest (read by
:class:`~alignment_probe.runfiles.RunFiles`, the one reader). The summary, the figures, the findings-vs-paper
verdicts and the report are pure functions of those: ``summary.json`` and ``report.html`` are caches, and
:meth:`RunDir.regenerate` rebuilds them byte for byte.

    run = ap.load_run("runs/default")
    run.effects                      # the tidy effects table (see effects.py)
    run.tokens                       # per completion token (token_map; empty when no per-token experiment ran)
    run.tokens(pair_id, "token_map", hook="resid_post", layer=3)   # one condition, coloured on its tokens
    run.summary["gain_mean"]
    run.report("runs/default/report-again.html")
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from alignment_probe.errors import ConfigError
from alignment_probe.files import write_bytes_atomic
from alignment_probe.hub import resolve_snapshot
from alignment_probe.manifest import write_json_atomic
from alignment_probe.runfiles import RunFiles
from alignment_probe.tables import write_table
from alignment_probe.tokenview import TokenTable, token_table

if TYPE_CHECKING:  # the suite loads torch: imported when a run writes or a summary is recomputed, not to read a run
    from alignment_probe.experiments.suite import SuiteConfig, SuiteResult
    from alignment_probe.request import RunRequest


# --- writing and resuming (alignment_probe.run) ------------------------------------------------------------------
OUTPUTS = (
    "scores.parquet",
    "effects.parquet",
    "token_effects.parquet",
    "lasso.parquet",
    "fits.json",
    "summary.json",
    "report.html",
)


# Options that change no number: a run directory may be reused across them.
_NEUTRAL = ("engine", "batch_size", "device")


def _old_manifest(out: Path) -> dict[str, Any] | None:
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConfigError(
            f"{path} is not valid JSON, so the run in {out} cannot be resumed; pass --force to start "
            "over there, or use a new --out directory."
        ) from None


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """The suite's options at the top level (they are options too), so a message names the option."""
    out = {k: v for k, v in config.items() if k != "suite"}
    out.update(config.get("suite") or {})
    return out


def check_run_dir(req: RunRequest) -> dict[str, Any] | None:
    """Refuse to mix results of different configurations in one directory (unless --force).

    Returns the existing manifest when the run can be resumed, else None (a new run).
    """
    old_manifest = _old_manifest(req.out)
    if old_manifest is None:
        return None
    from alignment_probe.experiments.suite import SuiteConfig

    # a suite option the old manifest lacks is newer than its run, which ran as the option's default does
    defaults = json.loads(json.dumps(SuiteConfig(experiments=req.suite.experiments).to_dict()))
    old = _flat(old_manifest.get("config", {}))
    old.update({k: v for k, v in defaults.items() if k not in old})
    new = _flat(json.loads(json.dumps(req.config())))
    changed = sorted(k for k in set(old) | set(new) if k not in _NEUTRAL and old.get(k) != new.get(k))
    if changed:
        if req.force:
            return None
        # a run of the other preset (or made before presets, as full) resumes with its --suite
        hint = f" (it is a --suite {old['preset']} run)" if "preset" in changed else ""
        raise ConfigError(
            f"{req.out} already holds a run with a different configuration ({', '.join(changed)} "
            f"changed){hint}. Use a new --out directory, rerun with the original options to resume it, "
            "or pass --force to discard its results and start over."
        )
    return old_manifest


def check_same_inputs(req: RunRequest, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Same configuration: are the data file, the checkpoints and the pairs also the same? True to
    resume; False to start over (--force); otherwise refuse."""
    changed = []
    if old.get("data", {}).get("sha256") != new["data"].get("sha256"):
        changed.append(f"the data file {req.data} (sha256)")
    if (old.get("transfer_data") or {}).get("sha256") != (new.get("transfer_data") or {}).get("sha256"):
        changed.append(f"the transfer data {req.suite.transfer_data} (sha256)")
    for role in ("base", "tuned"):
        if old.get("models", {}).get(role, {}).get("fingerprint") != new["models"][role]["fingerprint"]:
            changed.append(f"the {role} checkpoint {getattr(req, role)} (weights fingerprint)")
    if not changed and old.get("data", {}).get("pair_ids") != new["data"]["pair_ids"]:
        changed.append("the sampled pairs")
    if not changed:
        return True
    if req.force:
        return False
    raise ConfigError(
        f"{req.out} holds a run of the same configuration, but {' and '.join(changed)} changed since it "
        "started, so its results cannot be continued. Use a new --out directory, or pass --force to "
        "discard them and start over."
    )


def discard_results(out: Path) -> None:
    """--force: remove what an earlier run left (parts and outputs); nothing else in the folder."""
    shutil.rmtree(out / "parts", ignore_errors=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)


def write_run(req: RunRequest, result: SuiteResult, manifest: dict[str, Any]) -> None:
    write_table(result.scores, req.out / "scores.parquet")
    write_table(result.effects, req.out / "effects.parquet")
    if len(result.tokens):
        write_table(result.tokens, req.out / "token_effects.parquet")
    write_json_atomic(req.out / "fits.json", result.fits)  # what experiments fitted: the summary reads it
    if result.lasso is not None:
        from alignment_probe.experiments.lasso import lasso_table

        write_table(lasso_table(result.lasso), req.out / "lasso.parquet")
    write_json_atomic(req.out / "summary.json", result.summary)
    # the report as the run directory reads back (its per-token section decodes tokens with the manifest's
    # tokenizer), so ap.load_run(dir).regenerate() rewrites the same bytes
    write_bytes_atomic(req.out / "report.html", load_run(req.out).report_html(result.summary).encode("utf-8"))


# --- reading back ------------------------------------------------------------------------------------------------
def suite_config(manifest: Mapping[str, Any]) -> SuiteConfig:
    """The run's SuiteConfig, from its manifest (JSON lists back to tuples)."""
    from alignment_probe.request import suite_from_dict

    return suite_from_dict((manifest.get("config") or {}).get("suite") or {})


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
    """Read a run directory written by ``alignment-probe run`` (or ``ap.run_suite``)."""
    files = RunFiles(path)
    missing = files.missing("manifest", "effects", "scores")
    if missing:
        hint = (
            " The run has not finished: rerun the same command to resume it."
            if files.manifest is not None
            else " Is this the --out folder of `alignment-probe run`?"
        )
        raise ConfigError(f"{files.path} is not a finished run directory: {', '.join(missing)} missing.{hint}")
    manifest, effects, scores = files.manifest, files.effects, files.scores
    assert manifest is not None and effects is not None and scores is not None  # none missing, checked above
    return RunDir(
        path=files.path,
        manifest=manifest,
        effects=effects,
        scores=scores,
        fits=files.fits if files.fits is not None else _fits_from_parts(files.path, manifest),
        summary=files.summary or {},
        tokens=token_table(files.tokens, _tokenizer_loader(manifest)),
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
