"""A run directory: everything one ``alignment-probe run`` produced, and what is needed to repeat it.

::

    <out>/
      manifest.json   config, seed, versions, model sources and fingerprints, data source and skips
      scores.parquet  one row per pair: both models' log-probs, Δlogp, gain (see scoring.py)
      effects.parquet the tidy effects table of every experiment (see effects.py)
      lasso.parquet   per-layer LASSO coefficients, selection frequencies, probe R² (if run)
      summary.json    headline numbers and per-experiment results (see the README for the format)
      report.html     a self-contained report with every figure and the comparison with the paper
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from alignment_probe.data import load_pairs
from alignment_probe.engine import make_engine
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite import SuiteConfig, SuiteResult, run_suite
from alignment_probe.manifest import build_manifest, write_json_atomic
from alignment_probe.pair import load_pair
from alignment_probe.tables import write_table
from alignment_probe.tokens import sample_and_tokenize, truncation_stats


@dataclass
class RunRequest:
    """What the user asked for: models, data, sampling, the suite's config and the engine."""

    base: str
    tuned: str
    data: str
    out: Path
    suite: SuiteConfig
    n_pairs: int | None = 80
    max_length: int = 512
    data_dir: str | None = None
    split: str = "test"
    device: str | None = "cpu"
    dtype: str = "float32"
    engine: str = "fast"
    batch_size: int = 32
    force: bool = False

    def config(self) -> dict[str, Any]:
        return {"seed": self.suite.seed, "base": self.base, "tuned": self.tuned, "data": self.data, "data_dir": self.data_dir,
                "split": self.split, "n_pairs": self.n_pairs, "max_length": self.max_length, "device": self.device,
                "dtype": self.dtype, "engine": self.engine, "batch_size": self.batch_size,
                "suite": self.suite.to_dict()}


# Options that change no number: a run directory may be reused across them.
_NEUTRAL = ("engine", "batch_size", "device")


def check_run_dir(req: RunRequest) -> None:
    """Refuse to mix results of different configurations in one directory (unless --force)."""
    manifest = req.out / "manifest.json"
    if not manifest.exists() or req.force:
        return
    old = json.loads(manifest.read_text()).get("config", {})
    new = json.loads(json.dumps(req.config()))
    changed = sorted(k for k in set(old) | set(new) if k not in _NEUTRAL and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{req.out} already holds a run with a different configuration ({', '.join(changed)} "
                          "changed). Use a new --out directory, or pass --force to overwrite it.")


def write_run(req: RunRequest, result: SuiteResult, manifest: dict[str, Any]) -> None:
    write_table(result.scores, req.out / "scores.parquet")
    write_table(result.effects, req.out / "effects.parquet")
    if result.lasso is not None:
        from alignment_probe.experiments.lasso import lasso_table

        write_table(lasso_table(result.lasso), req.out / "lasso.parquet")
    write_json_atomic(req.out / "summary.json", result.summary)
    from alignment_probe.report.html import write_report

    write_report(req.out / "report.html", result.summary, manifest, scores=result.scores, effects=result.effects)


def execute(req: RunRequest, *, progress: bool = True, log: Callable[[str], None] = print) -> SuiteResult:
    """Validate everything cheap first, then load, run and write the run directory."""
    req.suite.validate()
    req.out.mkdir(parents=True, exist_ok=True)
    check_run_dir(req)
    pairs, report = load_pairs(req.data, data_dir=req.data_dir, split=req.split)
    if req.n_pairs is not None and req.n_pairs > len(pairs):
        from alignment_probe.errors import DataError

        raise DataError(f"--n-pairs {req.n_pairs} is larger than the {len(pairs)} usable pairs in {req.data} "
                        f"({report.summary()}); pass --n-pairs {len(pairs)} or fewer.")
    pair = load_pair(req.base, req.tuned, device=req.device, dtype=req.dtype)
    req.suite.validate(pair.n_layers)
    tokenized = sample_and_tokenize(pairs, pair.tokenizer, n_pairs=req.n_pairs, seed=req.suite.seed,
                                    max_length=req.max_length, report=report)
    log(f"data: {report.summary()}; using {len(tokenized)} pairs")
    manifest = build_manifest("run", req.config(), models=pair.describe(),
                              data={"source": req.data, "skips": report.to_dict(), **truncation_stats(tokenized),
                                    "pair_ids": [t.pair_id for t in tokenized]})
    write_json_atomic(req.out / "manifest.json", manifest)
    engine = make_engine(req.engine, batch_size=req.batch_size) if req.engine == "fast" else make_engine(req.engine)
    result = run_suite(pair, tokenized, engine, req.suite, progress=progress, log=log)
    result.summary["run"] = {"seed": req.suite.seed, "engine": req.engine,
                             "base_fingerprint": pair.base_fingerprint, "tuned_fingerprint": pair.tuned_fingerprint}
    write_run(req, result, manifest)
    return result
