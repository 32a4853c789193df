"""The experiment registry: every experiment says once what it is, and everything else derives from it.

An experiment module ends with one :func:`register` call. The registration says

* which **names** it answers to (``patch_tuned_to_base``, ``identity`` …), with a label, a colour
  and a one-line description each, and the method id (E1–E11; docs/method.md and
  ../shared/docs/localization.md define them);
* how it builds its **patch conditions** (``specs``) from the configuration and from the *declared*
  upstream results it ``needs`` (low rank is fitted at E1's peak layer, so it needs E1's summary);
* optionally a **fit** on all pairs before patching (low rank's subspaces) or a **whole-data
  computation** with no patching at all (the LASSO); what they record is kept as a run's ``fits``;
* how it **summarises** its rows of the effects table (a pure function of the tables), and
* its **figures** (drawn from the summary, i.e. from the tables) with their report headings, and
* its **options** (:class:`Option`: name, type, default, help): fields of the suite's configuration, flags of
  ``alignment-probe run`` and keywords of ``ap.run_suite`` / ``ap.sweep``, with no edit elsewhere.

The suite (a small dependency graph over registered experiments), ``EXPERIMENT_NAMES``, the figure
labels and colours, the report's headings and the findings driver's labels all read this registry,
so a new experiment is one module plus its tests. Modules in ``alignment_probe/experiments/`` are
discovered automatically (see :func:`load_all`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import alignment_probe.experiments as package  # the package itself (empty): where load_all finds the modules
from alignment_probe.errors import ConfigError
from alignment_probe.vocab import parse_layers

if TYPE_CHECKING:  # the registry itself stays import-light: the CLI reads it before any model loads
    import pandas as pd

    from alignment_probe.engine.spec import PatchSpec


@dataclass(frozen=True)
class Name:
    """One selectable experiment name: a value of the effects table's ``experiment`` column."""

    name: str
    label: str
    color: str
    description: str
    method: str | None = None  # overrides the experiment's method id (the reverse direction is E3)
    per_layer: bool = True  # emits one row per (pair, layer) at the default hook and scope


@dataclass
class Plan:
    """What an experiment may read to decide its conditions: the configuration, the model's shape, the
    pairs, the upstream summaries it declared, and (for fits) the loaded twins and tokenised pairs."""

    cfg: Any  # SuiteConfig
    n_layers: int
    d_model: int
    selected: tuple[str, ...]  # this experiment's names that were asked for
    pair_ids: tuple[int, ...] = ()
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scores: Any = None  # the per-pair scores table (pandas), for whole-data computations
    twins: Any = None
    tokenized: Sequence[Any] = ()
    fitted: Any = None  # what ``fit`` returned (its conditions and record), for ``specs``
    # other pair sets than the run's (tag → tokenised pairs, e.g. ``{"transfer": …}``): a later stage's
    # condition whose ``key.split`` is a tag runs on that set's pairs (parts ``stage<n>-<tag>-…``), not the run's
    extra_pairs: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    # for fits and whole-data computations: the clean activations the experiment declared (``clean_hooks``), read
    # from the engine's one clean pass of every pair — a callable returning model → hook name → (pair_id, side) →
    # [length, …] — or None, and the experiment runs the models itself
    clean: Callable[[], Mapping[str, Mapping[str, Mapping[Any, Any]]]] | None = None


@dataclass(frozen=True)
class Fitted:
    """A fit on all pairs: the conditions it defines and a JSON-able record (kept in ``fits``)."""

    specs: list["PatchSpec"]
    record: dict[str, Any]


@dataclass
class Tables:
    """Everything a summary may read: the run's tables and fit records, never a model."""

    effects: "pd.DataFrame"
    scores: "pd.DataFrame"
    fits: Mapping[str, Any]
    cfg: Any  # SuiteConfig
    n_layers: int
    d_model: int
    selected: tuple[str, ...] = ()
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tokens: "pd.DataFrame | None" = None  # the long per-token table (effects.py), for per-token experiments


@dataclass(frozen=True)
class Figure:
    """A figure drawn from a run's summary. ``draw`` is ``"module:function"`` (imported only when drawn,
    so the registry costs nothing at start-up); ``needs`` are the names it draws (any one suffices;
    empty: drawn from the per-pair scores)."""

    name: str
    draw: str
    heading: str
    caption: str
    needs: tuple[str, ...] = ()
    order: int = 100

    def function(self) -> Callable[..., Any]:
        module, _, attr = self.draw.partition(":")
        return getattr(importlib.import_module(module), attr)


OPTION_KINDS = ("int", "float", "str", "bool", "ints", "floats", "layers", "layer")


@dataclass(frozen=True)
class Option:
    """One option an experiment declares: a field of the suite's configuration (``cfg.<name>``), a flag of
    ``alignment-probe run`` (``--<name>`` with dashes, or ``flag``) and a keyword of ``ap.run_suite`` / ``ap.sweep``.

    ``kind``: ``int``, ``float``, ``str``, ``bool``, ``layer`` (one layer number), or a comma-separated list of
    ``ints``, ``floats`` or ``layers`` (``4,8`` or ``0:30:3``; checked against the model's depth). Lists are merged
    (each value once, first place kept). ``check(value, cfg, n_layers)`` refuses a bad value with a ConfigError
    (``n_layers`` None: before a model loads). ``fill(whole_suite)``: the value where None is given. ``implies``:
    experiments the command line adds to ``--experiments`` when the flag is given. ``needs_experiment``: given
    while none of its experiment's names runs, it is refused (it would be silently unused)."""

    name: str
    kind: str
    default: Any
    help: str
    flag: str | None = None  # default: --<name> with dashes
    metavar: str | None = None
    check: Callable[[Any, Any, int | None], None] | None = None
    fill: Callable[[bool], Any] | None = None
    implies: tuple[str, ...] = ()
    needs_experiment: bool = False

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS:
            raise ValueError(f"option {self.name!r}: kind {self.kind!r} is not one of {', '.join(OPTION_KINDS)}")
        if not self.name.isidentifier():
            raise ValueError(f"option {self.name!r}: its name must be a Python identifier (a keyword of ap.)")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return self.kind in ("ints", "floats", "layers")

    def parse(self, text: str) -> Any:
        """The value of the flag's text (the command line); a ConfigError naming the flag if it does not parse."""
        if self.kind == "layers":
            return parse_layers(text, self.cli_flag)
        cast: Callable[[str], Any] = {"int": int, "layer": int, "ints": int, "float": float, "floats": float}.get(
            self.kind, str
        )
        try:
            if self.is_list:
                return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
            return cast(text)
        except ValueError:
            example = "e.g. 4,8,12" if self.is_list else "e.g. 4"
            raise ConfigError(
                f"{self.cli_flag} {text!r}: expected {'a comma-separated list of ' if self.is_list else 'a '}"
                f"{cast.__name__}{'s' if self.is_list else ''}, {example}."
            ) from None


@dataclass(frozen=True)
class Experiment:
    """One registered experiment (usually one module): see the module docstring."""

    key: str  # its id, e.g. "lowrank"; also the name of its fit record and whole-data part
    method: str  # "E1" … "E11"
    names: tuple[Name, ...]
    summarize: Callable[[Tables], dict[str, dict[str, Any]]]
    specs: Callable[[Plan], list["PatchSpec"]] | None = None
    fit: Callable[[Plan], Fitted] | None = None
    compute: Callable[[Plan], dict[str, Any]] | None = None  # whole-data, no patching (after every stage)
    # the clean activations its ``fit``/``compute`` reads (model → hook names), taken from the engine's clean pass
    # when it can keep them (``Plan.clean``) instead of a forward of its own
    clean_hooks: Callable[[Plan], Mapping[str, set[str]]] | None = None
    needs: tuple[str, ...] = ()  # names whose summaries ``specs``/``fit`` read (their rows are computed first)
    emits: tuple[str, ...] = ()  # extra ``experiment`` values in its rows (e.g. ``lowrank_full``)
    figures: tuple[Figure, ...] = ()
    # "module:function"s (summary, effects[, scores=]) -> experiments.verdicts.Finding | None: rows this experiment adds
    # to the report's findings-vs-paper table and the summary's ``verdicts``, for the claims it answers (a function
    # with a ``scores`` parameter also gets the per-pair scores table)
    verdicts: tuple[str, ...] = ()
    order: int = 100  # its place in listings (EXPERIMENT_NAMES, the report, the summary)
    batch_order: int | None = None  # its conditions' place in a shared engine call (default: ``order``);
    # kept as in the first release, so batches, and with them float rounding, stay as they were
    # in the default suite (``SuiteConfig()``, ``--experiments all``, ``EXPERIMENT_NAMES``); False: opt-in,
    # run only when named (e.g. ``--experiments patch_tuned_to_base,steer``)
    default: bool = True
    # how its conditions are computed: "exact" (the run's engine) or an estimator the suite runs them with
    # instead, in parts of their own (``stage<n>-<estimator>-…``; "atp": engine/attribution.py, E10)
    estimator: str = "exact"
    # True: the engine also returns its conditions' per-token log-probs (the long table of effects.py, E9); the
    # conditions' per-pair rows are derived from it, and its summary reads ``Tables.tokens``
    per_token: bool = False
    options: tuple[Option, ...] = ()  # its own knobs (see Option)
    # refuses a configuration its conditions cannot be built for: (cfg, n_layers) -> None or a ConfigError
    check: Callable[[Any, int], None] | None = None

    @property
    def spec_order(self) -> int:
        return self.order if self.batch_order is None else self.batch_order

    def method_of(self, name: str) -> str:
        return next((n.method for n in self.names if n.name == name and n.method), self.method)


_REGISTRY: dict[str, Experiment] = {}
_BY_NAME: dict[str, Experiment] = {}
_EXTRA_FIGURES: dict[str, Figure] = {}
_loaded = False


def register(experiment: Experiment) -> Experiment:
    """Add an experiment (called once at the end of its module). Names must be unique."""
    for n in experiment.names:
        other = _BY_NAME.get(n.name)
        if other is not None and other.key != experiment.key:
            raise ValueError(f"experiment name {n.name!r} is registered twice ({other.key} and {experiment.key})")
    for option in experiment.options:
        owner = _option_owner(option.name)
        if owner is not None and owner.key != experiment.key:
            raise ValueError(f"option {option.name!r} is declared twice ({owner.key} and {experiment.key})")
    old = _REGISTRY.get(experiment.key)
    if old is not None:  # a re-import (e.g. importlib.reload in a notebook) replaces the entry
        for n in old.names:
            _BY_NAME.pop(n.name, None)
    _REGISTRY[experiment.key] = experiment
    for n in experiment.names:
        _BY_NAME[n.name] = experiment
    return experiment


def _option_owner(name: str) -> Experiment | None:
    return next((e for e in _REGISTRY.values() for o in e.options if o.name == name), None)


def options() -> dict[str, Option]:
    """Every option the registered experiments declare, by name, in listing order."""
    return {o.name: o for e in experiments() for o in e.options}


def option_owner(name: str) -> Experiment:
    """The experiment that declares option ``name``."""
    load_all()
    owner = _option_owner(name)
    if owner is None:
        raise KeyError(f"no experiment declares the option {name!r}")
    return owner


def register_figure(figure: Figure) -> Figure:
    """A figure that belongs to no one experiment (e.g. the per-pair gain histogram)."""
    _EXTRA_FIGURES[figure.name] = figure
    return figure


def load_all() -> None:
    """Import every module of ``alignment_probe.experiments`` once, so each registers itself."""
    global _loaded
    if _loaded:
        return
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name not in ("registry", "suite"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _loaded = True


def experiments() -> list[Experiment]:
    """Registered experiments, in listing order (the order of their ``order`` and then key)."""
    load_all()
    return sorted(_REGISTRY.values(), key=lambda e: (e.order, e.key))


def experiment_names(*, opt_in: bool = False) -> tuple[str, ...]:
    """The default suite's names, in listing order (``EXPERIMENT_NAMES``, ``--experiments all``); with
    ``opt_in=True`` every selectable name, the opt-in experiments' (``Experiment.default=False``) too."""
    return tuple(n.name for e in experiments() if e.default or opt_in for n in e.names)


def get(name: str) -> Experiment:
    """The experiment that answers to ``name`` (a selectable name or an experiment key)."""
    load_all()
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise KeyError(f"unknown experiment {name!r}; choose from {', '.join(experiment_names(opt_in=True))}")


def name_info(name: str) -> Name | None:
    load_all()
    exp = _BY_NAME.get(name)
    return next((n for n in exp.names if n.name == name), None) if exp else None


def label(name: str) -> str:
    info = name_info(name)
    return info.label if info else name


def color(name: str, default: str | None = None) -> str | None:
    info = name_info(name)
    return info.color if info else default


def method_id(name: str) -> str | None:
    load_all()
    exp = _BY_NAME.get(name)
    return exp.method_of(name) if exp else None


def per_layer_names() -> tuple[str, ...]:
    """Names that emit per-layer rows with the exact engines (what ``ap.sweep`` accepts)."""
    return tuple(
        n.name
        for e in experiments()
        if e.specs is not None and e.fit is None and not e.needs and e.estimator == "exact"
        for n in e.names
        if n.per_layer
    )


def sweep_names() -> tuple[str, ...]:
    """Names whose conditions emit per-layer rows, whatever runs before them (a fit on all pairs, an upstream
    summary they need): what ``ap.sweep`` accepts."""
    return tuple(
        n.name
        for e in experiments()
        if (e.specs is not None or e.fit is not None) and e.compute is None
        for n in e.names
        if n.per_layer
    )


def figures() -> list[Figure]:
    """Every registered figure, in report order."""
    figs = [f for e in experiments() for f in e.figures] + list(_EXTRA_FIGURES.values())
    return sorted(figs, key=lambda f: f.order)


def table(*, opt_in: bool = False) -> list[dict[str, str]]:
    """The registry as rows: name, method id, experiment key, label and one-line description (the default
    suite's names; ``opt_in=True``: the opt-in experiments' too)."""
    return [
        {
            "name": n.name,
            "method": e.method_of(n.name),
            "experiment": e.key,
            "label": n.label,
            "description": n.description,
        }
        for e in experiments()
        if e.default or opt_in
        for n in e.names
    ]


if TYPE_CHECKING:
    EXPERIMENT_NAMES: tuple[str, ...]  # provided by __getattr__ below


def __getattr__(name: str) -> Any:
    # EXPERIMENT_NAMES: read when asked, so importing the registry imports no experiment
    if name == "EXPERIMENT_NAMES":
        return experiment_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
