"""The notebook API: ``import alignment_probe as ap``. These names are the stable interface.

::

    twins = ap.load_twins(base, tuned, device="cpu", dtype="float32")  # checked base/tuned (backend="auto")
    pairs = ap.load_pairs(data, n=16, seed=0, tokenizer=twins.tokenizer, max_length=512)
    scores = ap.score(twins, pairs)              # the per-pair table of `alignment-probe score`
    eff = ap.sweep(twins, pairs, experiments=["patch_tuned_to_base", "identity"],
                   hooks=["resid_post", "mlp_out"], layers=None, scope="all", engine="fast")
    ap.curves(eff)                               # experiment, hook, scope, param, layer, mean, ci_low, ci_high, n
    ap.plot(eff)                                 # one line (with CI band) per condition
    ap.list_experiments()                        # the registry: name, method id, description
    run = ap.load_run("runs/default")            # .effects, .scores, .summary, .manifest, .report()

With no arguments, ``load_twins()`` and ``load_pairs(tokenizer=...)`` use the bundled model
organisms and their held-out pairs (offline). For a hand-made patch, :func:`completion_logprob`
runs one sequence with any TransformerLens forward hooks and returns log p(completion | prompt).
"""

from __future__ import annotations

import os
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from alignment_probe.effects import KEY_COLUMNS as _KEY_COLUMNS
from alignment_probe.errors import ConfigError

if TYPE_CHECKING:  # the type only: the ap. names import torch when first called, not at `import alignment_probe`
    from alignment_probe.pair import Twins

__all__ = [
    "load_twins",
    "load_pairs",
    "score",
    "sweep",
    "curves",
    "plot",
    "list_experiments",
    "load_run",
    "run_suite",
    "completion_logprob",
    "sequence_tokens",
    "TokenizedPairs",
]


def load_twins(
    base: str | os.PathLike[str] | None = None,
    tuned: str | os.PathLike[str] | None = None,
    *,
    device: str | None = "cpu",
    dtype: str = "float32",
    backend: str = "auto",
    device_map: Any = None,
) -> Twins:
    """Load a base model and its tuned twin unprocessed, checked compatible: HookedTransformers (TransformerLens
    3.x) or TransformerBridges (4.x).

    ``base``/``tuned``: hub names TransformerLens knows or local Hugging Face checkpoint folders;
    both None: the bundled model organisms. ``backend``: ``auto`` (the installed TransformerLens line), ``hooked``
    or ``bridge``; ``device_map`` (bridge only): ``"auto"``, ``"balanced"`` or a dict of module name → device, to
    split each model over devices. Returns :class:`~alignment_probe.pair.Twins` (``.base``, ``.tuned``,
    ``.tokenizer``, ``.n_layers``, ``.d_model``, ``.backend``)."""
    from alignment_probe.pair import load_twins as _load

    if (base is None) != (tuned is None):
        raise ConfigError("pass both base= and tuned= (or neither, for the bundled model organisms).")
    if base is None:
        from alignment_probe.organisms import bundled_pair_paths

        base, tuned = bundled_pair_paths()
    return _load(base, tuned, device=device, dtype=dtype, backend=backend, device_map=device_map)


class TokenizedPairs(list):
    """A list of :class:`~alignment_probe.tokens.TokenizedPair`, with ``.report``: what was read and
    skipped (and why) from the data source."""

    report: Any = None


def load_pairs(
    data: str | os.PathLike[str] | None = None,
    *,
    n: int | None = 16,
    seed: int = 0,
    tokenizer: Any = None,
    max_length: int | None = 512,
    data_dir: str | None = None,
    split: str = "test",
    chat_template: str | None = "none",
) -> TokenizedPairs:
    """Read preference pairs (HH-RLHF JSONL, prompt/chosen/rejected JSONL, or a hub dataset name), draw a
    seeded sample of ``n`` usable pairs (None: all) and tokenise them with ``tokenizer`` (BOS + prompt +
    completion; prompts longer than ``max_length`` lose tokens from the left). ``data=None``: the bundled
    held-out pairs. ``chat_template``: ``"none"`` (raw text), ``"auto"`` (the tokenizer's chat template) or a
    template file: each dialogue rendered in it, only the assistant reply's tokens scored (chat.py)."""
    from alignment_probe.prepare import InputSpec, prepare_pairs, read_inputs

    if tokenizer is None:
        raise ConfigError("load_pairs needs the twins' tokenizer: pass tokenizer=twins.tokenizer.")
    if data is None:
        from alignment_probe.organisms import bundled_pairs_path

        data = bundled_pairs_path()
    spec = InputSpec(
        data=str(data),
        data_dir=data_dir,
        split=split,
        n_pairs=n,
        max_length=max_length,
        seed=seed,
        chat_template=chat_template,
    )
    read = read_inputs(spec)
    out = TokenizedPairs(prepare_pairs(read, tokenizer).pairs)
    out.report = read.report
    return out


def score(twins: Twins, pairs: Sequence[Any], *, batch_size: int = 8) -> pd.DataFrame:
    """One row per pair: both models' log-probs of both completions, their Δlogp and the gain."""
    from alignment_probe.scoring import score_pairs

    return score_pairs(twins, pairs, batch_size=batch_size)


def generate(
    twins: Twins,
    prompts: Sequence[Any],
    *,
    conditions: Sequence[str] | str = ("base", "tuned"),
    max_new_tokens: int = 32,
    seed: int = 0,
    temperature: float = 0.0,
    steer_pairs: Sequence[Any] | None = None,
) -> Any:
    """E12: decode ``prompts`` (tokenised pairs from :func:`load_pairs`, strings or token-id lists) from base,
    tuned and the base under ``conditions`` — ``patch:HOOK@LAYER`` (the tuned activation on the same prefix,
    decoded in lockstep), ``window@START[:WIDTH]`` (a transplant), ``base``, ``tuned``. Greedy unless
    ``temperature > 0`` (seeded sampling, the same draws for every condition of a prompt). ``steer@LAYER[:SCALE]``
    adds E11's per-class tuning shift fitted on ``steer_pairs`` (tokenised pairs; keep them apart from the
    prompts) at the predicting positions. Returns a list of
    ``{"pair_id", "condition", "text", "token_ids", "prompt"}`` shown side by side in a notebook
    (``.to_frame()``: a table; ``.write(dir)``: generations.jsonl and generations.html)."""
    from alignment_probe.experiments.steering import fit_steer_shifts
    from alignment_probe.generation import Generations
    from alignment_probe.generation import generate as run

    shifts = fit_steer_shifts(twins, conditions, steer_pairs)
    rows = run(
        twins, prompts, conditions, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, shifts=shifts
    )
    return Generations(rows, twins.tokenizer)


def export_activations(
    twins: Twins,
    pairs: Sequence[Any],
    out: str,
    *,
    hooks: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    positions: str = "all",
) -> Any:
    """Paired clean activations of base and tuned on ``pairs`` (row-aligned, with pair/side/position/token
    indices) as one safetensors file, for crosscoder or SAE-diff training elsewhere (exports.py shows how to
    load it)."""
    from alignment_probe.exports import export_activations as run

    return run(twins, pairs, out, hooks=hooks, layers=layers, positions=positions)


def sweep(
    twins: Twins,
    pairs: Sequence[Any],
    *,
    experiments: Sequence[str] = ("patch_tuned_to_base",),
    hooks: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    scope: str = "all",
    engine: str = "fast",
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Patch every layer (or ``layers``) at each hook point for each per-layer experiment; returns the
    tidy effects table (one row per pair × condition, see effects.py).

    ``experiments``: any registered name that emits per-layer rows (``ap.list_experiments()``), those with a fit
    on all pairs (low rank) or upstream needs too: their fits run first, in memory, as in a suite run, and the
    table holds the rows of the names asked for (and the extra names their experiments emit).
    ``options``: other :class:`~alignment_probe.experiments.suite.SuiteConfig` fields and the experiments'
    declared options (``alphas``, ``vector_scale``, ``lowrank_ks``…). ``engine``: ``"fast"`` or ``"reference"``
    (same numbers, one forward per patch).
    """
    from alignment_probe.engine import make_engine
    from alignment_probe.experiments import registry
    from alignment_probe.experiments.suite import SuiteConfig, per_layer_specs, run_suite

    # a repeated experiment or hook is merged (SuiteConfig.normalise does the same for each hook's options)
    experiments = list(dict.fromkeys([experiments] if isinstance(experiments, str) else experiments))
    hooks = list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))
    allowed = registry.sweep_names()
    bad = [e for e in experiments if e not in allowed]
    if bad:
        raise ConfigError(
            f"ap.sweep runs experiments that emit per-layer rows; {', '.join(map(repr, bad))} "
            f"{'is' if len(bad) == 1 else 'are'} not one. Choose from {', '.join(allowed)} (the "
            "others need the whole suite: use `alignment-probe run --experiments ...`)."
        )
    if not hooks:
        raise ConfigError("hooks is empty; pass at least one hook point, e.g. hooks=['resid_post'].")
    options.setdefault("extra_hooks", ())  # ``hooks`` are the hook points: none besides them
    configs = []
    for hook in hooks:
        cfg = SuiteConfig(
            experiments=tuple(experiments),
            hook=hook,
            scope=scope,
            layers=None if layers is None else tuple(int(x) for x in layers),
            seed=seed,
            **options,
        )
        cfg.validate(twins.n_layers)
        configs.append(cfg)
    run = make_engine(engine)
    staged = set(experiments) - set(registry.per_layer_names())
    if staged:  # fits or upstream needs: the suite's stages, in memory, per hook point
        wanted = {n for e in experiments for n in (e, *registry.get(e).emits)}
        tables = [
            run_suite(twins, list(pairs), run, cfg, progress=progress, pairs_per_part=None, summarize=False).effects
            for cfg in configs
        ]
        frame = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else None
        if frame is None:
            return tables[0]
        frame = frame[frame.experiment.isin(wanted)]
        key = [c for c in frame.columns if c in _KEY_COLUMNS]
        return frame.drop_duplicates(subset=key, keep="first").reset_index(drop=True)
    specs = [spec for cfg in configs for spec in per_layer_specs(cfg, twins.n_layers, twins.d_model)]
    # one hook's extra hooks may be another of ``hooks`` (hooks=["resid_post", "mlp_out"], extra_hooks=["mlp_out"]):
    # each condition once, so the table has one row per key and pair
    seen: set[tuple] = set()
    unique = []
    for spec in specs:
        ident = tuple("nan" if isinstance(v, float) and v != v else v for v in astuple(spec.key))
        if ident not in seen:
            seen.add(ident)
            unique.append(spec)
    return run.run(twins, list(pairs), unique, progress=progress)


def curves(effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """Tidy per-layer curves of any slice of an effects table: ``experiment, hook, scope, param, layer,
    mean, ci_low, ci_high, n`` (+ target, source, sides, split), one row per condition and layer."""
    from alignment_probe.report.curves import curves as _curves

    return _curves(effects, seed=seed, n_boot=n_boot)


def plot(
    effects: pd.DataFrame, *, title: str = "Per-layer effect by condition", seed: int = 0, n_boot: int = 2000
) -> Any:
    """A plotly Figure: one line with its 95% CI band per condition of an effects table (or of ``curves``)."""
    from alignment_probe.report.curves import plot as _plot

    return _plot(effects, title=title, seed=seed, n_boot=n_boot)


def list_experiments() -> pd.DataFrame:
    """Every registered experiment name with its method id (E1–E11), one-line description, label, module key,
    and whether the default suite runs it (``default``; the others run when named in ``experiments``)."""
    from alignment_probe.experiments import registry

    default = set(registry.experiment_names())
    rows = [r | {"default": r["name"] in default} for r in registry.table(opt_in=True)]
    return pd.DataFrame(rows, columns=["name", "method", "description", "label", "experiment", "default"])


def load_run(path: str | os.PathLike[str]) -> Any:
    """A finished run directory: ``.effects``, ``.scores``, ``.summary``, ``.manifest``, ``.fits``,
    ``.curves(...)``, ``.report(path=None)`` (regenerated from the tables)."""
    from alignment_probe.rundir import load_run as _load

    return _load(Path(path))


def run_suite(
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    tuned: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    experiments: Sequence[str] | None = None,
    suite: str = "tour",
    n_pairs: int | None | str = "preset",
    max_length: int = 512,
    device: str = "cpu",
    dtype: str = "float32",
    engine: str = "fast",
    progress: bool = True,
    force: bool = False,
    **options: Any,
) -> Any:
    """``alignment-probe run`` from Python: the whole suite into the run directory ``out`` (resumable),
    returned as :func:`load_run` reads it (not ``ap.run``: that name is the module ``alignment_probe.run``).
    Models and data default to the bundled organisms. ``suite``: the preset, ``"tour"`` (the default) or
    ``"full"`` (``--suite``; experiments/presets.py says what each runs); ``n_pairs``: ``"preset"`` (its number:
    32 for the tour, 80 for full), a number, or None for every pair; ``options``:
    :class:`~alignment_probe.experiments.suite.SuiteConfig` fields (``hook``, ``layers``, ``n_boot``…) and every
    option an experiment declares (``alphas``, ``steer_k``…: ``Experiment.options``), which win over the preset's."""
    from alignment_probe.experiments.presets import PRESETS
    from alignment_probe.experiments.suite import preset_config
    from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path
    from alignment_probe.run import RunRequest, execute

    if (base is None) != (tuned is None):
        raise ConfigError("pass both base= and tuned= (or neither, for the bundled model organisms).")
    if base is None:
        base, tuned = bundled_pair_paths()
    cfg = preset_config(suite, experiments=experiments, **options)
    if n_pairs == "preset":
        n_pairs = PRESETS[suite].n_pairs
    elif isinstance(n_pairs, str):
        raise ConfigError(
            f'n_pairs={n_pairs!r}: give a number of pairs, None for every pair, or "preset" for the preset\'s number.'
        )
    req = RunRequest(
        base=str(base),
        tuned=str(tuned),
        data=str(data if data is not None else bundled_pairs_path()),
        out=Path(out),
        suite=cfg,
        n_pairs=n_pairs,
        max_length=max_length,
        device=device,
        dtype=dtype,
        engine=engine,
        force=force,
        argv=["ap.run"],
    )
    execute(req, progress=progress, log=print if progress else (lambda s: None))
    return load_run(out)


def sequence_tokens(pair: Any, side: str = "chosen") -> Any:
    """The token ids [1, pos] of one side of a tokenised pair (BOS + prompt + completion)."""
    import torch

    from alignment_probe.vocab import SIDES

    if side not in SIDES:
        raise ConfigError(f"side must be one of {', '.join(SIDES)}, not {side!r}.")
    seq = pair.sequence(side)
    return torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)], dtype=torch.long)


def completion_logprob(
    model: Any, pair: Any, side: str = "chosen", fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = ()
) -> float:
    """log p(completion | prompt) of one side of a tokenised pair under ``model`` (``twins.base`` or ``twins.tuned``:
    a HookedTransformer or a TransformerBridge), with any TransformerLens forward hooks applied: the building
    block of a hand-made patch."""
    import torch

    from alignment_probe.backends import backend_of

    backend = backend_of(model)
    seq = pair.sequence(side)
    tokens = sequence_tokens(pair, side).to(backend.device)
    with torch.inference_mode():
        logits, _ = backend.run(tokens, hooks=list(fwd_hooks))
    logp = logits[0, seq.completion_start - 1 : seq.length - 1].float().log_softmax(-1)
    target = tokens[0, seq.completion_start : seq.length]
    return float(logp.gather(-1, target[:, None]).sum())
