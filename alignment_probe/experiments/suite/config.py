"""The suite's configuration: the options every run has (:class:`SuiteConfig`'s own fields) and the ones each
experiment declares (``Experiment.options``, registry.py), merged, checked and recorded in one place; and the presets
that fill in what a run leaves out (:func:`preset_config`)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from alignment_probe import vocab
from alignment_probe.engine.spec import HOOKS
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import registry
from alignment_probe.experiments.presets import DEFAULT_PRESET, PRESETS
from alignment_probe.experiments.registry import Option


def _all_names() -> tuple[str, ...]:
    """The default suite: every registered name except the opt-in experiments' (``Experiment.default``)."""
    return registry.experiment_names()


ALL = "all"  # --experiments all: the default suite


def _unique(values: Any) -> tuple:
    """``values`` as a tuple, each value once, at its first place."""
    return tuple(dict.fromkeys(values))


def _canonical_scope(scope: Any) -> Any:
    """``first_completion:04`` → ``first_completion:4``; other scopes (and unknown ones, for validate) unchanged."""
    try:
        name, k = vocab.parse_scope(scope)
    except ConfigError:
        return scope
    return scope if k is None else f"{name}:{k}"


def _as_int(value: Any) -> Any:
    """numpy integers as ints (the manifest is JSON); anything else as it is, for validate to refuse."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


@dataclass
class _Fields:
    """The options every run has; the experiments' own live in ``options`` (read as ``cfg.<name>`` too)."""

    experiments: tuple[str, ...] = field(default_factory=_all_names)
    hook: str = "resid_post"  # the default hook every experiment reports on
    scope: str = "all"  # the default position scope
    # E1 tuned→base also at these hook points: by default the block's attention and MLP outputs, so the components
    # (E7) share one figure with the residual stream
    extra_hooks: tuple[str, ...] = ("attn_out", "mlp_out")
    extra_scopes: tuple[str, ...] = ()  # ... and these position scopes
    layers: tuple[int, ...] | None = None  # layers the per-layer experiments sweep; None: every layer
    seed: int = 0
    n_boot: int = 2000
    # The preset that filled in the options not given (``--suite``, PRESETS); "full" for a configuration built
    # field by field, as for every run directory made before presets existed (the manifest records it)
    preset: str = "full"
    # A coarse grid: these experiments sweep every ``coarse_step``-th swept layer, counted back from the last one
    # (8 layers, step 2: 1, 3, 5, 7; :meth:`SuiteConfig.layers_for`); () : every experiment at every swept layer
    coarse: tuple[str, ...] = ()
    coarse_step: int = 2
    reverse_extras: bool = True  # E3's reverse direction also at the extra hooks and scopes (False: the main ones)
    options: dict[str, Any] = field(default_factory=dict)  # the experiments' declared options, name → value


_OWN = tuple(f.name for f in fields(_Fields) if f.name != "options")


class SuiteConfig(_Fields):
    """Every knob of the suite: its own fields (above) and every option an experiment declares
    (``Experiment.options``), given by name like a field (``SuiteConfig(steer_k=4)``) and read as one
    (``cfg.steer_k``). Defaults follow docs/method.md; the manifest records all of them (:meth:`to_dict`)."""

    def __init__(self, **given: Any) -> None:
        declared = registry.options()
        options = dict(given.pop("options", None) or {})
        unknown = [k for k in given if k not in _OWN and k not in declared]
        if unknown:
            raise ConfigError(
                f"unknown suite option(s) {', '.join(unknown)}; the suite's options are "
                f"{', '.join([*_OWN, *declared])} (experiments declare theirs: ap.list_experiments())."
            )
        options.update({k: given.pop(k) for k in list(given) if k in declared})
        for name, option in declared.items():
            options.setdefault(name, option.default)
        super().__init__(**given, options=options)
        self._settle()

    @staticmethod
    def known() -> tuple[str, ...]:
        """Every option's name: the suite's own, then the experiments' (registry order)."""
        return (*_OWN, *registry.options())

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails: a declared option
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} has no option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        options = self.__dict__.get("options")
        if options is not None and name in options and name not in _OWN:
            options[name] = value
        else:
            object.__setattr__(self, name, value)

    def _settle(self) -> None:
        """Normalised, and the options given as None that their experiment fills in (``Option.fill``)."""
        given = self.experiments.split(",") if isinstance(self.experiments, str) else self.experiments
        whole_suite = ALL in (str(e).strip() for e in given)
        self.normalise()
        whole_suite = whole_suite or set(self.experiments) == set(_all_names())
        for name, option in registry.options().items():
            if option.fill is not None and self.options.get(name) is None:
                self.options[name] = option.fill(whole_suite)

    # The list-valued options of the suite's own, merged by normalise(): names (a str is a comma-separated list)
    NAME_LISTS = ("experiments", "extra_hooks", "extra_scopes", "coarse")

    def normalise(self) -> None:
        """The one place options become a configuration (the CLI, ``ap.run_suite``, ``ap.sweep`` and a run
        directory's manifest all construct one): a repeated entry is merged, not an error — lists become
        tuples with each value once, at its first place (``--layers 1,1,2`` is 1,2; ``--experiments
        identity,identity`` is identity), and the extra hooks (scopes) drop the main ``hook`` (``scope``),
        which every experiment patches anyway (``--hook mlp_out`` with the default ``--extra-hooks
        attn_out,mlp_out`` patches mlp_out once). Conditions are keyed by hook, scope and layer, so a repeat
        would run the same condition twice and give two rows of one key. ``all`` among the experiments is the
        default suite (``all,steer``: the suite and steering). Scopes are spelt canonically
        (``first_completion:04`` → ``first_completion:4``). The experiments' list options (``Option.kind``
        ``ints``, ``floats``, ``layers``) are merged alike. Idempotent; unknown names are left for validate()."""
        self.scope = _canonical_scope(self.scope)
        for name in self.NAME_LISTS:
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if name == "extra_scopes":
                value = [_canonical_scope(s) for s in value]
            if name == "experiments":  # "all" is the default suite, also beside opt-in names ("all,steer")
                value = [n for e in value for n in (_all_names() if e == ALL else (e,))]
            setattr(self, name, _unique(value))
        self.extra_hooks = tuple(h for h in self.extra_hooks if h != self.hook)
        self.extra_scopes = tuple(s for s in self.extra_scopes if s != self.scope)
        if self.layers is not None:
            self.layers = _unique(_as_int(v) for v in ((self.layers,) if _is_number(self.layers) else self.layers))
        for name, option in registry.options().items():
            value = self.options.get(name)
            if value is None:
                continue
            if option.is_list:
                value = _unique(_as_int(v) for v in ((value,) if _is_number(value) else value))
            elif option.kind in ("int", "layer"):
                value = _as_int(value)
            self.options[name] = value

    def validate(self, n_layers: int | None = None) -> None:
        """Check names and ranges; ``n_layers=None`` checks what is known before a model loads."""
        names = registry.experiment_names(opt_in=True)
        if not self.experiments:
            raise ConfigError(
                "--experiments is empty; name at least one experiment, e.g. --experiments "
                f"patch_tuned_to_base, or all for the default suite (names: {', '.join(names)})."
            )
        unknown = [e for e in self.experiments if e not in names]
        if unknown:
            raise ConfigError(
                f"--experiments: unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names)}."
            )
        for option, hooks in (("--hook", (self.hook,)), ("--extra-hooks", self.extra_hooks)):
            for h in hooks:
                if h not in HOOKS:
                    raise ConfigError(f"{option}: unknown hook point {h!r}; choose from {', '.join(HOOKS)}.")
        for option, scopes in (("--scope", (self.scope,)), ("--extra-scopes", self.extra_scopes)):
            for s in scopes:
                try:
                    vocab.check_scope(s)  # the plain names, or first_completion:K
                except ConfigError as exc:
                    raise ConfigError(f"{option}: {exc}.") from None
        _check_layers("--layers", self.layers, n_layers, "sweep every layer")
        for name, declared in registry.options().items():
            self._check_option(declared, self.options.get(name), n_layers)
        if n_layers is not None and not set(self.experiments) >= set(_all_names()):
            # a named experiment whose conditions all fall outside the swept layers is refused (in the whole default
            # suite it just reports nothing there: ``--experiments all --layers 0`` has no 2×2 split)
            for exp in {registry.get(e).key: registry.get(e) for e in self.experiments}.values():
                if exp.check is not None:
                    exp.check(self, n_layers)
        if self.preset not in PRESETS:
            raise ConfigError(f"--suite {self.preset!r}: unknown preset; choose from {', '.join(PRESETS)}.")
        unknown = [e for e in self.coarse if e not in names]
        if unknown:
            raise ConfigError(f"coarse: unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names)}.")
        if not isinstance(self.coarse_step, int) or isinstance(self.coarse_step, bool) or self.coarse_step < 1:
            raise ConfigError(
                f"coarse_step must be a whole number ≥ 1 (every k-th swept layer), got {self.coarse_step!r}."
            )

    def _check_option(self, option: Option, value: Any, n_layers: int | None) -> None:
        """An experiment's option: its kind's rules (layers in range, a list not empty), then its own ``check``."""
        if option.kind in ("layers", "layer") and value is not None:
            _check_layers(option.cli_flag, (value,) if option.kind == "layer" else value, n_layers, option.help)
        if option.check is not None:
            option.check(value, self, n_layers)
        if option.needs_experiment and value != option.default:
            owner = registry.option_owner(option.name)
            own = [n.name for n in owner.names]
            if not set(own) & set(self.experiments):
                raise ConfigError(
                    f"{option.cli_flag} is read by the {owner.key} experiment only; add {own[-1]} to --experiments "
                    f"(e.g. --experiments patch_tuned_to_base,{own[-1]})."
                )

    def swept_layers(self, n_layers: int) -> list[int]:
        """The layers every per-layer experiment visits, ascending."""
        return sorted(set(self.layers)) if self.layers is not None else list(range(n_layers))

    def layers_for(self, name: str, n_layers: int) -> list[int]:
        """The layers experiment ``name`` sweeps, ascending: the swept layers, or on the coarse grid (``coarse``)
        every ``coarse_step``-th of them counted back from the last, so the deepest swept layer is always in."""
        swept = self.swept_layers(n_layers)
        return sorted(swept[::-1][:: self.coarse_step]) if name in self.coarse else swept

    def to_dict(self) -> dict[str, Any]:
        """Every option by name, flat (the manifest's ``suite``): the suite's own, then the experiments'."""
        return {**{k: getattr(self, k) for k in _OWN}, **dict(self.options)}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number)


def _check_layers(flag: str, layers: Any, n_layers: int | None, unset: str) -> None:
    """Whole numbers in the model's range, and not an empty list (None: the option's default, ``unset``)."""
    if layers is None:
        return
    known = f"the model has layers 0..{n_layers - 1}" if n_layers is not None else "layers are numbered from 0"
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):  # normalise() made every whole number an int
            raise ConfigError(f"{flag}: layer {layer!r} is not a whole number; give layer numbers, e.g. 0,4,8.")
        if layer < 0 or (n_layers is not None and layer >= n_layers):
            raise ConfigError(f"{flag}: layer {layer} is out of range: {known}.")
    if len(layers) == 0:
        raise ConfigError(f"{flag} is empty; give at least one layer, e.g. {flag} 0,4,8, or leave it out to {unset}.")


def preset_config(preset: str = DEFAULT_PRESET, **given: Any) -> SuiteConfig:
    """A :class:`SuiteConfig` from a named preset (presets.py): every option ``given`` (None counts as not given),
    and where the run is the whole default suite (``experiments`` not given, or ``all`` among them) the preset's
    options for the rest. Named experiments run whole, as when the window widths are chosen: naming an experiment
    asks for all of it. ``layers`` given choose every experiment's grid, so the preset's coarse grid is then left
    out (unless ``coarse`` is given too)."""
    if preset not in PRESETS:
        raise ConfigError(
            f"--suite {preset!r}: unknown preset; choose from {', '.join(PRESETS)} (default {DEFAULT_PRESET})."
        )
    given = {k: v for k, v in given.items() if v is not None}
    named = given.get("experiments", (ALL,))
    named = named.split(",") if isinstance(named, str) else named
    whole = ALL in (str(e).strip() for e in named) or set(_all_names()) <= set(named)
    options = dict(PRESETS[preset].options) if whole else {}
    if "layers" in given:
        options.pop("coarse", None)
    return SuiteConfig(**{**options, **given, "preset": preset})
