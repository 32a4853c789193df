"""The suite: a small dependency graph over the registered experiments (see registry.py).

:func:`run_suite` decides the order. Experiments whose conditions need nothing upstream share
**stage 1**; an experiment that *declares* it needs another's summary (low rank is fitted at E1's
peak layer) runs in the stage after it; whole-data computations (the LASSO) come last. Every result
is kept as a *part* (see :class:`~alignment_probe.tables.PartStore`), so an interrupted run resumes
where it stopped and ends with the same numbers as an uninterrupted one:

1. per group of ``pairs_per_part`` pairs of similar prompt length (:func:`pair_groups`; ``<first>``/``<last>``
   are its lowest and highest pair ids): the scores (``scores-<first>-<last>``)
   and every stage-1 condition (``stage1-<first>-<last>``, one engine call, so they share batches);
2. stage n ≥ 2: an experiment's fit on all pairs, if it has one (``stage<n>-fit``, a JSON record
   such as low rank's variance explained), then its conditions per group (``stage<n>-<first>-<last>``);
3. each whole-data computation under its experiment's key (``lasso``).

Fits and whole-data computations read the clean activations they declare (``Experiment.clean_hooks``)
from the clean pass stage 1 made anyway, kept by the fast engine (:func:`_shared_clean_pass`), and a later
stage's clean runs come from there too: each model runs once per sequence from its tokens.

The summary is then a pure function of the tables (effects, scores and the fit records, see
:func:`summarize_tables`), always read back from their stored form, so it cannot depend on which
parts were computed in this process, and a finished run directory regenerates it byte for byte.
The groups are a function of the pair list and ``pairs_per_part`` only, so every run of the same
configuration batches the same sequences together. run.py writes the result to disk and report/
draws it.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from alignment_probe import stats, vocab
from alignment_probe.effects import KEY_COLUMNS, to_frame
from alignment_probe.engine.spec import HOOKS, Engine, PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import registry
from alignment_probe.experiments.alpha import DEFAULT_ALPHAS
from alignment_probe.experiments.generations import MAX_NEW_TOKENS
from alignment_probe.experiments.lowrank import DEFAULT_KS
from alignment_probe.experiments.presets import DEFAULT_PRESET, PRESETS
from alignment_probe.experiments.registry import Experiment, Plan, Tables
from alignment_probe.experiments.windows import DEFAULT_SUITE_WIDTHS, DEFAULT_WIDTHS
from alignment_probe.numerics import check_scores
from alignment_probe.pair import Twins
from alignment_probe.progress import Stages
from alignment_probe.scoring import score_pairs
from alignment_probe.tables import PartStore
from alignment_probe.tokens import TokenizedPair


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


@dataclass
class SuiteConfig:
    """Every knob of the suite. Defaults follow docs/method.md; the manifest records all of them."""

    experiments: tuple[str, ...] = field(default_factory=_all_names)
    hook: str = "resid_post"  # the default hook point every experiment reports on
    scope: str = "all"  # the default position scope
    # E1 tuned→base also at these hook points: by default the block's attention and MLP outputs, so the components
    # (E7) share one figure with the residual stream
    extra_hooks: tuple[str, ...] = ("attn_out", "mlp_out")
    extra_scopes: tuple[str, ...] = ()  # ... and these position scopes
    layers: tuple[int, ...] | None = None  # layers the per-layer experiments sweep; None: every layer
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha_layers: tuple[int, ...] | None = None  # None: every swept layer
    vector_scale: float = 1.0
    lowrank_ks: tuple[int, ...] = DEFAULT_KS
    lowrank_layers: tuple[int, ...] | None = None  # None: the peak layer of E1
    lowrank_centre: bool = True
    lowrank_exclude_bos: bool = True
    lasso_position: str = "last_prompt"
    seed: int = 0
    n_boot: int = 2000
    # E11 steering (experiments/steering.py); None: its defaults (E1's held-out layer; c ∈ 0.5, 1, 2, 4; k = 4)
    steer_layer: int | None = None
    steer_cs: tuple[float, ...] | None = None
    steer_k: int | None = None
    transfer_data: str | None = None  # E11 transfer: pairs of another data source (loaded by run.py)
    # E8 window transplants/reverts: widths w (blocks per window). None: 1 in the default suite (its time budget,
    # issue 12), 1 and 2 when the experiments are chosen (the manifest records the widths used)
    window_widths: tuple[int, ...] | None = None
    atp_confirm_k: int = 5  # E10 ``--confirm K``: exact patching of the K conditions attribution patching ranks highest
    # The preset that filled in the options not given (``--suite``, :data:`PRESETS`); "full" for a configuration built
    # field by field, as for every run directory made before presets existed (the manifest records it)
    preset: str = "full"
    # A coarse grid: these experiments sweep every ``coarse_step``-th swept layer, counted back from the last one
    # (8 layers, step 2: 1, 3, 5, 7; :meth:`layers_for`); () : every experiment at every swept layer
    coarse: tuple[str, ...] = ()
    coarse_step: int = 2
    reverse_extras: bool = True  # E3's reverse direction also at the extra hooks and scopes (False: the main ones)
    generation_tokens: int = MAX_NEW_TOKENS  # E12 in the run: tokens decoded per prompt and condition

    def __post_init__(self) -> None:
        given = self.experiments.split(",") if isinstance(self.experiments, str) else self.experiments
        whole_suite = ALL in (str(e).strip() for e in given)
        self.normalise()
        if self.window_widths is None:
            whole_suite = whole_suite or set(self.experiments) == set(_all_names())
            self.window_widths = DEFAULT_SUITE_WIDTHS if whole_suite else DEFAULT_WIDTHS

    # The list-valued options, merged by normalise(): names (a str is a comma-separated list) and numbers.
    NAME_LISTS = ("experiments", "extra_hooks", "extra_scopes", "coarse")
    LAYER_LISTS = ("layers", "alpha_layers", "lowrank_layers")
    NUMBER_LISTS = (*LAYER_LISTS, "alphas", "lowrank_ks", "steer_cs", "window_widths")

    def normalise(self) -> None:
        """The one place options become a configuration (the CLI, ``ap.run_suite``, ``ap.sweep`` and a run
        directory's manifest all construct one): a repeated entry is merged, not an error — lists become
        tuples with each value once, at its first place (``--layers 1,1,2`` is 1,2; ``--experiments
        identity,identity`` is identity), and the extra hooks (scopes) drop the main ``hook`` (``scope``),
        which every experiment patches anyway (``--hook mlp_out`` with the default ``--extra-hooks
        attn_out,mlp_out`` patches mlp_out once). Conditions are keyed by hook, scope and layer, so a repeat
        would run the same condition twice and give two rows of one key. ``all`` among the experiments is the
        default suite (``all,steer``: the suite and steering). Scopes are spelt canonically
        (``first_completion:04`` → ``first_completion:4``). Idempotent; unknown names are left for validate()."""
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
        for name in self.NUMBER_LISTS:
            value = getattr(self, name)
            if value is not None:
                value = (value,) if isinstance(value, numbers.Number) else value
                if name in self.LAYER_LISTS:  # numpy integers as ints (the manifest is JSON)
                    value = [
                        int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in value
                    ]
                setattr(self, name, _unique(value))
        if isinstance(self.steer_layer, numbers.Integral) and not isinstance(self.steer_layer, bool):
            self.steer_layer = int(self.steer_layer)

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
        known = f"the model has layers 0..{n_layers - 1}" if n_layers is not None else "layers are numbered from 0"
        for option, layers in (
            ("--layers", self.layers),
            ("--alpha-layers", self.alpha_layers),
            ("--lowrank-layers", self.lowrank_layers),
            ("--steer-layer", None if self.steer_layer is None else (self.steer_layer,)),
        ):
            for layer in layers or ():
                if not isinstance(layer, int) or isinstance(layer, bool):  # normalise() made every whole number an int
                    raise ConfigError(
                        f"{option}: layer {layer!r} is not a whole number; give layer numbers, e.g. 0,4,8."
                    )
                if layer < 0 or (n_layers is not None and layer >= n_layers):
                    raise ConfigError(f"{option}: layer {layer} is out of range: {known}.")
        for option, layers, default in (
            ("--layers", self.layers, "sweep every layer"),
            ("--alpha-layers", self.alpha_layers, "use every swept layer"),
            ("--lowrank-layers", self.lowrank_layers, "use E1's peak layer"),
        ):
            if layers is not None and len(layers) == 0:
                raise ConfigError(
                    f"{option} is empty; give at least one layer, e.g. {option} 0,4,8, or leave it out to {default}."
                )
        if not self.window_widths or any(not isinstance(w, int) or w < 1 for w in self.window_widths):
            raise ConfigError(
                f"--window-widths {','.join(map(str, self.window_widths)) or '(empty)'}: give whole "
                "numbers ≥ 1 (blocks per window), e.g. --window-widths 1,2."
            )
        if n_layers is not None and min(self.window_widths) >= n_layers:
            raise ConfigError(
                f"--window-widths: every width is ≥ the model's {n_layers} blocks; a window must leave "
                f"some block out, e.g. --window-widths 1,2."
            )
        if n_layers is not None:
            self._check_named_experiments_have_conditions(n_layers)
        if self.preset not in PRESETS:
            raise ConfigError(f"--suite {self.preset!r}: unknown preset; choose from {', '.join(PRESETS)}.")
        unknown = [e for e in self.coarse if e not in names]
        if unknown:
            raise ConfigError(f"coarse: unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names)}.")
        if not isinstance(self.coarse_step, int) or isinstance(self.coarse_step, bool) or self.coarse_step < 1:
            raise ConfigError(
                f"coarse_step must be a whole number ≥ 1 (every k-th swept layer), got {self.coarse_step!r}."
            )
        if not isinstance(self.generation_tokens, int) or self.generation_tokens < 1:
            raise ConfigError(
                f"generation_tokens must be a whole number ≥ 1 (tokens decoded per prompt), got "
                f"{self.generation_tokens!r}."
            )
        if self.atp_confirm_k < 1:
            raise ConfigError(f"--confirm must be at least 1, got {self.atp_confirm_k}.")
        if self.steer_k is not None and self.steer_k < 1:
            raise ConfigError(f"--steer-k must be at least 1, got {self.steer_k}.")
        if self.steer_cs is not None and len(self.steer_cs) == 0:
            raise ConfigError("--steer-c is empty; give at least one coefficient, e.g. --steer-c 0.5,1,2,4.")
        if self.transfer_data is not None and "steer" not in self.experiments:
            raise ConfigError(
                "--transfer-data is read by the steering experiment only; add steer to --experiments "
                "(e.g. --experiments patch_tuned_to_base,steer)."
            )

    def _check_named_experiments_have_conditions(self, n_layers: int) -> None:
        """An experiment named in --experiments whose conditions all fall outside the swept layers is refused (in
        the whole default suite it just reports nothing there: ``--experiments all --layers 0`` has no 2×2 split)."""
        if set(self.experiments) >= set(_all_names()):
            return
        swept = self.swept_layers(n_layers)
        shown = ",".join(map(str, swept))
        if "cross_2x2" in self.experiments and not any(1 <= s < n_layers for s in swept):
            raise ConfigError(
                f"--layers {shown}: cross_2x2 splits the model at layers 1..{n_layers - 1} (at 0 there "
                "are no early blocks) and --layers has none of them; add one, e.g. --layers "
                f"{','.join(map(str, sorted({*swept, 1})))}, or leave cross_2x2 out of --experiments."
            )
        windows = [e for e in ("window_transplant", "window_revert") if e in self.experiments]
        widths = sorted(set(self.window_widths or ()))
        if windows and not any(a + w <= n_layers and w < n_layers for a in swept for w in widths):
            raise ConfigError(
                f"--layers {shown} with --window-widths {','.join(map(str, widths))}: {windows[0]}'s "
                f"windows start at a swept layer and must end inside the model's {n_layers} blocks "
                f"(start + width ≤ {n_layers}), and none does; sweep an earlier layer (e.g. --layers "
                f"{','.join(map(str, sorted({*swept, n_layers - min(widths)})))}) or narrower windows "
                "(e.g. --window-widths 1)."
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
        return asdict(self)


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


@dataclass
class SuiteResult:
    scores: pd.DataFrame
    effects: pd.DataFrame
    summary: dict[str, Any]
    lasso: dict[str, Any] | None = None
    fits: dict[str, Any] = field(default_factory=dict)  # each experiment's fit / whole-data record
    extra: dict[str, Any] = field(default_factory=dict)
    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # the long per-token table (token_effects.parquet)


# --------------------------------------------------------------------------------------------------
# the graph


@dataclass(frozen=True)
class Step:
    """One registered experiment in a run: the names it computes (asked for, or needed downstream), the
    names it reports in the summary, and its stage."""

    experiment: Experiment
    computed: tuple[str, ...]
    reported: tuple[str, ...]
    stage: int  # 1, 2, …; whole-data computations: after every patching stage


def plan_steps(cfg: SuiteConfig) -> list[Step]:
    """The experiments of a run, in execution order: by stage, then by their place in a shared engine
    call. A name another experiment ``needs`` is computed (not reported) even when not asked for."""
    asked = set(cfg.experiments)
    computed = set(asked)
    frontier = list(asked)
    while frontier:  # the closure of declared needs
        for need in registry.get(frontier.pop()).needs:
            if need not in computed:
                computed.add(need)
                frontier.append(need)
    stages: dict[str, int] = {}

    def stage_of(exp: Experiment) -> int:
        if exp.key not in stages:
            stages[exp.key] = 1 + max((stage_of(registry.get(n)) for n in exp.needs), default=0)
        return stages[exp.key]

    steps = []
    for exp in registry.experiments():
        names = tuple(n.name for n in exp.names if n.name in computed)
        if names:
            steps.append(Step(exp, names, tuple(n for n in names if n in asked), stage_of(exp)))
    last = max((s.stage for s in steps if s.experiment.compute is None), default=0)
    steps = [s if s.experiment.compute is None else Step(s.experiment, s.computed, s.reported, last + 1) for s in steps]
    return sorted(steps, key=lambda s: (s.stage, s.experiment.spec_order, s.experiment.key))


def _plan(step: Step, cfg: SuiteConfig, n_layers: int, d_model: int, **extra: Any) -> Plan:
    return Plan(cfg=cfg, n_layers=n_layers, d_model=d_model, selected=step.computed, **extra)


def stage_specs(steps: Sequence[Step], cfg: SuiteConfig, n_layers: int, d_model: int, **extra: Any) -> list[PatchSpec]:
    """Every condition of these steps (one stage), in their shared engine call's order."""
    return [
        spec
        for step in steps
        if step.experiment.specs is not None
        for spec in step.experiment.specs(_plan(step, cfg, n_layers, d_model, **extra))
    ]


def per_layer_specs(cfg: SuiteConfig, n_layers: int, d_model: int = 0) -> list[PatchSpec]:
    """Every stage-1 condition (the ones that need nothing upstream), for one shared engine call."""
    return stage_specs(
        [s for s in plan_steps(cfg) if s.stage == 1 and s.experiment.compute is None], cfg, n_layers, d_model
    )


def summarize_tables(
    effects: pd.DataFrame,
    scores: pd.DataFrame,
    fits: Mapping[str, Any],
    cfg: SuiteConfig,
    *,
    n_layers: int,
    d_model: int,
    tokens: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The run's summary, a pure function of its tables: the gain, every reported experiment's entry (in
    execution order) and the verdicts on the paper's claims (``verdicts``: judged ones, ``verdicts_not_run``: the
    claims whose experiment did not run; report/verdicts.py). summary.json is a cache of this."""
    summary: dict[str, Any] = {"n_layers": n_layers} | gain_summary(scores, cfg) | {"experiments": {}}
    for step in plan_steps(cfg):
        if step.reported and (step.experiment.compute is None or step.experiment.key in fits):
            tables = Tables(effects, scores, fits, cfg, n_layers, d_model, selected=step.reported, tokens=tokens)
            summary["experiments"].update(step.experiment.summarize(tables))
    from alignment_probe.experiments.verdicts import summary_verdicts

    # the findings-vs-paper verdicts are part of the summary: a function of it and of the same tables
    summary.update(summary_verdicts(summary, effects, scores))
    return summary


def gain_summary(scores: pd.DataFrame, cfg: SuiteConfig) -> dict[str, Any]:
    mean, lo, hi = stats.bootstrap_mean_ci(scores.gain.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    pt_mean, pt_lo, pt_hi = stats.bootstrap_mean_ci(scores.gain_per_token.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    return {
        "n_pairs": int(len(scores)),
        "base_delta_logp_mean": float(scores.base_delta_logp.mean()),
        "tuned_delta_logp_mean": float(scores.tuned_delta_logp.mean()),
        "gain_mean": mean,
        "gain_ci": [lo, hi],
        "gain_per_token_mean": pt_mean,
        "gain_per_token_ci": [pt_lo, pt_hi],
        # statistics.md: the per-token mean beside every sum-based headline, and which one verdicts use
        "gain_basis": "sum",
    }


DEFAULT_PAIRS_PER_PART = 8


def pair_groups(
    tokenized: Sequence[TokenizedPair], pairs_per_part: int | None, *, ranks: int = 1
) -> list[list[TokenizedPair]]:
    """Groups of ``pairs_per_part`` pairs of similar prompt length (one group if None), each in pair-id order.

    The pairs are sorted by prompt length (ties by pair id) and cut every ``pairs_per_part``: a group's prompts,
    which its forwards share and its continuations attend to, then pad little (bundled default run: block-token
    work 1.103 → 1.076 of the floor; pair-id groups mixed 20- and 150-token prompts). The groups' contents depend
    on the pairs and ``pairs_per_part`` only; their *order* deals them to ``ranks`` processes (a part goes to
    rank k mod ranks, :class:`~alignment_probe.tables.PartStore`) as a snake — short to long, then long to
    short — so no rank gets every longer prompt."""
    if pairs_per_part is not None and pairs_per_part < 1:
        raise ConfigError(f"--pairs-per-part must be at least 1, got {pairs_per_part}.")
    ordered = sorted(tokenized, key=lambda t: (len(t.prompt_ids), t.pair_id))
    size = pairs_per_part or max(len(ordered), 1)
    groups = [sorted(ordered[i : i + size], key=lambda t: t.pair_id) for i in range(0, len(ordered), size)]
    rounds = [groups[i : i + ranks] for i in range(0, len(groups), max(ranks, 1))]
    return [g for n, r in enumerate(rounds) for g in (r[::-1] if n % 2 else r)]


def group_tag(group: Sequence[TokenizedPair]) -> str:
    return f"{group[0].pair_id:06d}-{group[-1].pair_id:06d}"


def canonical_tokens(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of the long per-token table → one table in the canonical row order (that of ``tokens_to_frame``)."""
    from alignment_probe.effects import TOKEN_KEY_COLUMNS

    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(TOKEN_KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)


def per_token_names() -> set[str]:
    """Names of the experiments whose conditions the engine reports per token (``Experiment.per_token``)."""
    return {n.name for e in registry.experiments() if e.per_token for n in e.names}


def engine_part(
    store: PartStore,
    name: str,
    engine: Engine,
    pair: Twins,
    group: Sequence[TokenizedPair],
    specs: Callable[[], Sequence[PatchSpec]],
    *,
    per_token: bool,
    token_parts: list[pd.DataFrame],
) -> pd.DataFrame:
    """One engine call on one group of pairs (``specs()``: its conditions, built only if a part is computed),
    stored as the effects part ``name``. With ``per_token`` (the stage has an ``Experiment.per_token``
    experiment) the same call also gives the long per-token table of those experiments' conditions, stored first
    as ``<stage>-tokens-<group>`` (appended to ``token_parts``)."""
    if not per_token:
        return store.table(name, lambda: engine.run(pair, group, specs(), progress=False))
    if not hasattr(engine, "runs"):
        raise ConfigError(f"per-token maps need an exact engine (--engine fast or reference); {engine.name} has none.")
    from alignment_probe.engine.outputs import effects_table, token_table

    wanted = per_token_names()
    done: dict[str, pd.DataFrame] = {}

    def both() -> dict[str, pd.DataFrame]:
        if not done:  # one engine call for both parts (a resumed run may need only one of them)
            runs = list(engine.runs(pair, group, specs(), progress=False))
            done["effects"] = effects_table(runs)
            done["tokens"] = token_table([r for r in runs if r[0].key.experiment in wanted], group)
        return done

    stage, _, tag = name.partition("-")
    token_parts.append(store.table(f"{stage}-tokens-{tag}", lambda: both()["tokens"]))
    return store.table(name, lambda: both()["effects"])


def _real(*parts: Any) -> bool:
    """Every one a table, none a placeholder for a part another process is computing."""
    return all(isinstance(p, pd.DataFrame) for p in parts)


def canonical_effects(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of an effects table → one table in the canonical row order (that of ``to_frame``)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    for i, p in enumerate(parts):
        if "estimator" not in p.columns:  # a part stored before the column existed: every row exact
            parts[i] = p = p.copy()
            p.insert(p.columns.get_loc("pair_id") + 1, "estimator", "exact")
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)


def run_suite(
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    engine: Engine,
    cfg: SuiteConfig | None = None,
    *,
    progress: bool | Stages = False,
    log: Callable[[str], None] = lambda s: None,
    store: PartStore | None = None,
    pairs_per_part: int | None = DEFAULT_PAIRS_PER_PART,
    extra_pairs: Mapping[str, Sequence[TokenizedPair]] | None = None,
) -> SuiteResult:
    """Run the chosen experiments on loaded twins and tokenised pairs.

    ``store`` keeps each stage's parts (a folder for a resumable run; in memory by default):
    parts it already holds are loaded, not recomputed. ``extra_pairs`` (tag → tokenised pairs, e.g. the
    transfer data of E11) are other pair sets a later stage's conditions may target: a condition whose
    ``key.split`` is a tag runs on that set (parts ``stage<n>-<tag>-<first>-<last>``), the others on the run's.
    ``progress``: one progress display per stage (True, or the :class:`~alignment_probe.progress.Stages` of a
    run that spans several passes); ``log`` gets a line per finished stage.
    """
    cfg = cfg or SuiteConfig()
    cfg.validate(pair.n_layers)
    store = store if store is not None else PartStore()
    stages = progress if isinstance(progress, Stages) else Stages(progress, log, existing=store.names())
    tokenized = sorted(tokenized, key=lambda t: t.pair_id)
    groups = pair_groups(tokenized, pairs_per_part, ranks=store.ranks)
    n_layers, d_model = pair.n_layers, pair.d_model
    steps = plan_steps(cfg)
    ids = tuple(t.pair_id for t in tokenized)
    base_extra: dict[str, Any] = {"pair_ids": ids, "twins": pair, "tokenized": tokenized}
    if extra_pairs:
        base_extra["extra_pairs"] = {tag: sorted(p, key=lambda t: t.pair_id) for tag, p in extra_pairs.items()}
    stage_one = [
        s for s in steps if s.stage == 1 and s.experiment.compute is None and s.experiment.estimator == "exact"
    ]
    stage_one_specs = stage_specs(stage_one, cfg, n_layers, d_model, upstream={}, **base_extra)
    clean = _shared_clean_pass(steps, cfg, pair, groups, engine, stage_one_specs)
    try:
        return _run_stages(pair, groups, steps, engine, cfg, store, clean, base_extra, stage_one_specs, stages=stages)
    finally:
        if clean is not None:  # the kept activations are this run's: release them
            engine.release_activations()  # an engine that keeps them (_shared_clean_pass checked)


def _shared_clean_pass(
    steps: Sequence[Step],
    cfg: SuiteConfig,
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    stage_one_specs: list[PatchSpec],
) -> Callable[[], Any] | None:
    """Issue 15's one clean pass per model and sequence: the clean activations the run's fits and whole-data
    computations declare (``Experiment.clean_hooks``), kept by the engine from the clean runs it makes anyway.

    Returns the ``Plan.clean`` callable, which first runs the clean passes that did not happen in this process
    (a resumed run loads stage 1's parts instead), group by group exactly as stage 1 would have (same chunks
    and batches, so the same numbers as an uninterrupted run); or None — the engine cannot keep activations
    (the reference engine), or they would not fit its ``keep_budget_gb`` — and each experiment runs the models
    itself."""
    if not hasattr(engine, "keep_activations"):
        return None
    keep: dict[str, set[str]] = {}
    tokenized = [t for g in groups for t in g]
    for step in steps:
        exp = step.experiment
        if exp.clean_hooks is not None and (exp.fit is not None or exp.compute is not None):
            plan = _plan(step, cfg, pair.n_layers, pair.d_model, twins=pair, tokenized=tokenized)
            for model, names in exp.clean_hooks(plan).items():
                keep.setdefault(model, set()).update(names)
    tokens = sum(2 * len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    size = tokens * sum(len(v) for v in keep.values()) * pair.d_model * pair.backends()["base"].dtype.itemsize
    if not keep or size > getattr(engine, "keep_budget_gb", 0.0) * 2**30:
        return None
    engine.keep_activations(keep)

    def clean() -> Any:
        # groups stage 1 ran here are held already; the others (a resumed run loaded them) run their clean pass now
        return engine.clean_activations(pair, groups, stage_one_specs)

    return clean


def _run_stages(
    pair: Twins,
    groups: list[list[TokenizedPair]],
    steps: list[Step],
    engine: Engine,
    cfg: SuiteConfig,
    store: PartStore,
    clean: Callable[[], Any] | None,
    base_extra: dict[str, Any],
    stage_one_specs: list[PatchSpec],
    *,
    stages: Stages,
) -> SuiteResult:
    """:func:`run_suite`'s stages, in order (see the module docstring)."""
    n_layers, d_model = pair.n_layers, pair.d_model
    fits: dict[str, Any] = {}
    upstream: dict[str, Any] = {}
    tables: list[pd.DataFrame] = []
    token_parts: list[pd.DataFrame] = []  # the long per-token table's parts (per-token experiments only)
    scores = pd.DataFrame()

    def ran(rows: pd.DataFrame, stage: Sequence[Step]) -> None:
        """Keep a stage's rows, and the summaries that later stages declared they need."""
        tables.append(rows)
        for step in stage:
            wanted = [n for n in step.computed if any(n in s.experiment.needs for s in steps)]
            if wanted:
                upstream.update(
                    step.experiment.summarize(
                        Tables(rows, scores, fits, cfg, n_layers, d_model, selected=tuple(wanted))
                    )
                )

    for number in sorted({s.stage for s in steps if s.experiment.compute is None} | {1}):
        stage = [s for s in steps if s.stage == number and s.experiment.compute is None]
        extra = {**base_extra, "upstream": upstream, "clean": clean}
        exact = [s for s in stage if s.experiment.estimator == "exact"]  # the others: _estimated
        estimated = [s for s in stage if s not in exact]
        # the stage's work in pairs: the run's pairs for its exact conditions (and the scores), once more per
        # estimator, and the other pair sets' (E11's transfer pairs) in a later stage
        n_pairs = sum(map(len, groups))
        units = (n_pairs if exact or number == 1 else 0) + n_pairs * len({s.experiment.estimator for s in estimated})
        if exact and number > 1:
            units += sum(map(len, base_extra.get("extra_pairs", {}).values()))
        if number == 1:
            what = f"scores and {len(stage_one_specs)} conditions"
            stages.start(1, what, units)
            scores, rows = _stage_one(
                pair,
                groups,
                engine,
                stage_one_specs,
                store,
                stages=stages,
                token_parts=token_parts,
                per_token=any(s.experiment.per_token for s in exact),
            )
        else:
            stages.start(number, ", ".join(s.experiment.key for s in stage), units)
            rows = (
                _later_stage(
                    number, exact, pair, groups, engine, cfg, store, fits, extra, stages=stages, token_parts=token_parts
                )
                if exact
                else pd.DataFrame()
            )
            what = ", ".join(f"{s.experiment.key}" + (" (fit on all pairs)" if s.experiment.fit else "") for s in stage)
        rows = _estimated(number, estimated, rows, pair, groups, cfg, store, extra, stages=stages)
        stages.finish(
            number,
            f"{what}: {len(rows)} rows, {n_pairs} pairs in {len(groups)} part(s)"
            + (f" ({engine.name} engine)" if number == 1 else ""),
        )
        if len(rows):
            ran(rows, stage)
    computes = [s for s in steps if s.experiment.compute is not None]
    if computes:
        number = computes[0].stage
        stages.start(number, ", ".join(s.experiment.key for s in computes), len(computes), unit="step")
    for step in computes:
        plan = _plan(step, cfg, n_layers, d_model, upstream=upstream, scores=scores, clean=clean, **base_extra)
        fits[step.experiment.key] = store.json(step.experiment.key, lambda s=step, p=plan: s.experiment.compute(p))
        stages.done(step.stage, f"{step.experiment.key}.json", 1)
    if computes:
        stages.finish(computes[0].stage, ", ".join(s.experiment.key for s in computes) + " on all pairs")
    # effects.parquet, as written; with no patched condition (e.g. shift alone) still the table's columns, which
    # every summary reads
    effects = pd.concat(tables, ignore_index=True) if tables else to_frame([])
    tokens = canonical_tokens(token_parts)  # token_effects.parquet
    summary = summarize_tables(effects, scores, fits, cfg, n_layers=n_layers, d_model=d_model, tokens=tokens)
    return SuiteResult(
        scores=scores, effects=effects, summary=summary, lasso=fits.get("lasso"), fits=fits, tokens=tokens
    )


def _stage_one(
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    specs: list[PatchSpec],
    store: PartStore,
    *,
    stages: Stages,
    per_token: bool,
    token_parts: list[pd.DataFrame],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores and every stage-1 condition, one group of pairs at a time."""
    score_parts, effect_parts = [], []
    for group in groups:
        tag = group_tag(group)

        def score(group: list[TokenizedPair] = group) -> pd.DataFrame:
            # One clean pass per model for the run: the fast engine scored these sequences in its clean runs
            # (free after engine.run; else its own clean pass); the reference engine has no such pass.
            clean = getattr(engine, "clean_scores", None)
            table = clean(pair, group) if clean is not None else score_pairs(pair, group, progress=False)
            check_scores(pair, table, group)  # NaN/inf: names the pair, model and layer
            return table

        if specs:
            effect_parts.append(
                engine_part(
                    store,
                    f"stage1-{tag}",
                    engine,
                    pair,
                    group,
                    lambda: specs,
                    per_token=per_token,
                    token_parts=token_parts,
                )
            )
        score_parts.append(store.table(f"scores-{tag}", score))
        stages.done(1, f"stage1-{tag}.parquet", len(group), real=_real(score_parts[-1], *effect_parts[-1:]))
    scores = pd.concat(score_parts, ignore_index=True).sort_values("pair_id", kind="stable").reset_index(drop=True)
    return scores, canonical_effects(effect_parts)


def _later_stage(
    number: int,
    stage: list[Step],
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    cfg: SuiteConfig,
    store: PartStore,
    fits: dict[str, Any],
    extra: dict[str, Any],
    *,
    stages: Stages,
    token_parts: list[pd.DataFrame],
) -> pd.DataFrame:
    """A stage after the first: its fits on all pairs (computed only when some part still needs them),
    then its conditions per group of pairs."""
    n_layers, d_model = pair.n_layers, pair.d_model
    fitting = [s for s in stage if s.experiment.fit is not None]
    fit_part = {
        s.experiment.key: f"stage{number}-fit" if len(fitting) == 1 else f"stage{number}-fit-{s.experiment.key}"
        for s in fitting
    }
    names = [f"stage{number}-{group_tag(g)}.parquet" for g in groups]
    # other pair sets (E11's transfer data), in groups of the run's size
    other = {
        tag: pair_groups(p, max(map(len, groups)) if groups else None, ranks=store.ranks)
        for tag, p in extra.get("extra_pairs", {}).items()
        if p
    }
    other_names = {tag: [f"stage{number}-{tag}-{group_tag(g)}.parquet" for g in gs] for tag, gs in other.items()}
    fitted: dict[str, Any] = {}

    def fitted_of(step: Step) -> Any:
        if step.experiment.key not in fitted:
            fitted[step.experiment.key] = step.experiment.fit(_plan(step, cfg, n_layers, d_model, **extra))
        return fitted[step.experiment.key]

    complete = (
        all(store.has(f"{p}.json") for p in fit_part.values())
        and all(store.has(n) for n in names)
        and all(store.has(n) for ns in other_names.values() for n in ns)
    )
    for step in fitting:
        if not complete:
            fitted_of(step)  # some part is missing: its conditions need the fit
        fits[step.experiment.key] = store.json(fit_part[step.experiment.key], lambda s=step: fitted_of(s).record)
    specs_cache: list[list[PatchSpec]] = []

    def specs() -> list[PatchSpec]:
        if not specs_cache:
            specs_cache.append(
                [
                    spec
                    for s in stage
                    for spec in s.experiment.specs(
                        _plan(s, cfg, n_layers, d_model, fitted=fitted_of(s) if s.experiment.fit else None, **extra)
                    )
                ]
            )
        return specs_cache[0]

    def specs_for(tag: str | None) -> list[PatchSpec]:
        """The run's pairs (None) get every condition but those of another pair set; a set, only its own."""
        if not other:
            return specs()
        return [s for s in specs() if (s.key.split == tag if tag is not None else s.key.split not in other)]

    parts = []
    for group, name in zip(groups, names):
        parts.append(
            engine_part(
                store,
                name.removesuffix(".parquet"),
                engine,
                pair,
                group,
                lambda: specs_for(None),
                per_token=any(s.experiment.per_token for s in stage),
                token_parts=token_parts,
            )
        )
        stages.done(number, name, len(group), real=_real(parts[-1]))
    for tag, tag_groups in other.items():
        for group, name in zip(tag_groups, other_names[tag]):

            def run_other(g: list[TokenizedPair] = group, t: str = tag) -> pd.DataFrame:
                chosen = specs_for(t)
                return engine.run(pair, g, chosen, progress=False) if chosen else pd.DataFrame()

            parts.append(store.table(name.removesuffix(".parquet"), run_other))
            stages.done(number, name, len(group), real=_real(parts[-1]))
    return canonical_effects(parts)


# Engines of the estimators an experiment may declare (``Experiment.estimator``), "module:Class".
ESTIMATOR_ENGINES = {"atp": "alignment_probe.engine.attribution:AttributionEngine"}


def estimator_engine(name: str) -> Engine:
    """The engine that computes an estimator's conditions (built with its defaults)."""
    import importlib

    if name not in ESTIMATOR_ENGINES:
        raise ConfigError(f"unknown estimator {name!r}; known: exact, {', '.join(ESTIMATOR_ENGINES)}.")
    module, _, attr = ESTIMATOR_ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def _estimated(
    number: int,
    stage: list[Step],
    rows: pd.DataFrame,
    pair: Twins,
    groups: list[list[TokenizedPair]],
    cfg: SuiteConfig,
    store: PartStore,
    extra: dict[str, Any],
    *,
    stages: Stages,
) -> pd.DataFrame:
    """A stage's conditions that an estimator computes instead of the run's engine (``Experiment.estimator``,
    e.g. attribution patching), per group of pairs in parts ``stage<n>-<estimator>-<first>-<last>``, added to
    the stage's exact ``rows`` in the canonical order (the exact rows keep theirs)."""
    parts = [rows]
    for name in sorted({s.experiment.estimator for s in stage}):
        own = [s for s in stage if s.experiment.estimator == name]
        if any(s.experiment.fit is not None for s in own):
            raise ConfigError(f"{', '.join(s.experiment.key for s in own)}: an estimated experiment cannot have a fit.")
        specs = stage_specs(own, cfg, pair.n_layers, pair.d_model, **extra)
        if not specs:
            continue
        engine = estimator_engine(name)
        for group in groups:
            part = f"stage{number}-{name}-{group_tag(group)}"
            parts.append(store.table(part, lambda g=group, e=engine, c=specs: e.run(pair, g, c, progress=False)))
            stages.done(number, f"{part}.parquet", len(group), real=_real(parts[-1]))
    return canonical_effects(parts) if len(parts) > 1 else rows
