"""What one ``alignment-probe run`` is asked to do: models, data, sampling, the suite's configuration and the engine.

The command line, ``ap.run_suite`` and the findings driver each build a :class:`RunRequest`;
:func:`alignment_probe.run.execute` carries it out. :meth:`RunRequest.config` is what the manifest records (and a
resumed run must match); :meth:`RunRequest.to_json` / :meth:`RunRequest.from_json` carry a request to the ranks
:func:`alignment_probe.launch.spawn_request` starts, as plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite import DEFAULT_PAIRS_PER_PART, SuiteConfig
from alignment_probe.prepare import InputSpec


def suite_from_dict(raw: Mapping[str, Any]) -> SuiteConfig:
    """A :class:`SuiteConfig` from its ``to_dict()`` read back from JSON (lists back to tuples; a field this
    version does not know, from a newer or older run, is left out and takes its default)."""
    known = set(SuiteConfig.known())
    options: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    return SuiteConfig(**options)


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
    pairs_per_part: int = DEFAULT_PAIRS_PER_PART
    pair_ids: str | None = None  # a file of pair ids to draw from (e.g. a held-out half); None: every pair
    argv: Sequence[str] | None = field(default=None, repr=False)  # the command line, for the manifest
    chat_template: str = "none"  # --chat-template: none (raw text), auto or a template file (chat.py)
    backend: str = "auto"  # --backend: auto, hooked or bridge (backends/); the manifest's models record which ran
    device_map: Any = None  # --device-map (bridge only): auto, balanced or a module → device dict

    def config(self) -> dict[str, Any]:
        return {
            "seed": self.suite.seed,
            "base": self.base,
            "tuned": self.tuned,
            "data": self.data,
            "data_dir": self.data_dir,
            "split": self.split,
            "n_pairs": self.n_pairs,
            "max_length": self.max_length,
            "device": self.device,
            "dtype": self.dtype,
            "engine": self.engine,
            "batch_size": self.batch_size,
            "pairs_per_part": self.pairs_per_part,
            "pair_ids": self.pair_ids,
            "suite": self.suite.to_dict(),
            # recorded only when used, so run directories written before the option resume unchanged
            **({"chat_template": self.chat_template} if self.chat_template != "none" else {}),
            **({"device_map": self.device_map} if self.device_map is not None else {}),
        }

    def validate(self) -> None:
        """Option checks that need nothing loaded."""
        self.suite.validate()
        for name, value in (
            ("--batch-size", self.batch_size),
            ("--pairs-per-part", self.pairs_per_part),
            ("--n-boot", self.suite.n_boot),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}.")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; pass a folder for the run directory.")

    def inputs(self) -> InputSpec:
        """The options that choose the run's pairs, for the input pipeline (prepare.py)."""
        return InputSpec(
            data=self.data,
            data_dir=self.data_dir,
            split=self.split,
            pair_ids=self.pair_ids,
            n_pairs=self.n_pairs,
            max_length=self.max_length,
            seed=self.suite.seed,
            chat_template=self.chat_template,
        )

    def transfer_inputs(self) -> InputSpec:
        """E11's transfer pairs (``suite.transfer_data``): drawn and tokenised as the run's own pairs are."""
        if self.suite.transfer_data is None:
            raise ConfigError("this run has no transfer data (suite.transfer_data is None).")
        return InputSpec(
            data=self.suite.transfer_data,
            split=self.split,
            n_pairs=self.n_pairs,
            max_length=self.max_length,
            seed=self.suite.seed,
            chat_template=self.chat_template,
        )

    def to_json(self) -> str:
        """The whole request as JSON: :meth:`config`, the run directory, ``force``, the command line and the backend
        (not in the config: a run resumes on either backend)."""
        extra = {"out": str(self.out), "force": self.force, "argv": self.argv, "backend": self.backend}
        return json.dumps({**self.config(), **extra})

    @classmethod
    def from_json(cls, text: str) -> "RunRequest":
        """The request :meth:`to_json` wrote (its config equal to the original's)."""
        raw = json.loads(text)
        suite = suite_from_dict(raw.pop("suite"))
        raw.pop("seed")  # the suite's own seed (config() shows it at the top as well)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"a run request names options this version does not have: {', '.join(unknown)}.")
        return cls(**{**raw, "out": Path(raw["out"]), "suite": suite})
