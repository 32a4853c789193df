"""SuiteConfig.normalise: repeated options are merged (each value once, first place kept), never run twice.

Issue 24: ``run --experiments patch_tuned_to_base --hook mlp_out`` ended in an internal error, because the
default ``--extra-hooks attn_out,mlp_out`` repeats the main hook: mlp_out's conditions ran twice and the
summary found two rows of one key. No model here: the conditions, the summary of a synthetic table whose
answer is planted, and ap.sweep with a recording engine.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from alignment_probe.effects import make_row, to_frame
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite import SuiteConfig, per_layer_specs, summarize_tables

N_LAYERS = 3


def test_the_main_hook_and_scope_leave_the_extra_ones_and_repeats_merge_in_order():
    cfg = SuiteConfig(
        experiments=("patch_tuned_to_base",),
        hook="mlp_out",
        scope="completion",
        extra_hooks=("resid_pre", "mlp_out", "attn_out", "resid_pre"),
        extra_scopes=("completion", "last_prompt", "prompt", "last_prompt"),
    )
    assert cfg.extra_hooks == ("resid_pre", "attn_out")
    assert cfg.extra_scopes == ("last_prompt", "prompt")
    # the bug's own combination: the default extra hooks hold the main hook
    assert SuiteConfig(hook="mlp_out").extra_hooks == ("attn_out",)
    assert SuiteConfig(hook="attn_out").extra_hooks == ("mlp_out",)
    assert SuiteConfig().extra_hooks == ("attn_out", "mlp_out")  # the default is unchanged


def test_repeated_experiments_layers_and_numbers_are_merged_first_place_kept():
    cfg = SuiteConfig(
        experiments=("identity", "alpha", "identity"),
        layers=(3, 1, 3, 1),
        alpha_layers=[2, 2, 0],
        lowrank_layers=(1, 1),
        alphas=(1.0, 0.5, 1.0),
        lowrank_ks=(4, 4, 1),
        steer_cs=(2.0, 2.0),
        window_widths=(2, 1, 2),
    )
    assert cfg.experiments == ("identity", "alpha")
    assert cfg.layers == (3, 1) and cfg.alpha_layers == (2, 0) and cfg.lowrank_layers == (1,)
    assert cfg.alphas == (1.0, 0.5) and cfg.lowrank_ks == (4, 1) and cfg.steer_cs == (2.0,)
    assert cfg.window_widths == (2, 1)
    assert SuiteConfig(layers=None).layers is None  # "every layer" stays None


def test_name_lists_given_as_one_string_and_scopes_are_spelt_canonically():
    cfg = SuiteConfig(
        experiments="identity, alpha,identity",
        extra_hooks="mlp_out",
        scope="first_completion:04",
        extra_scopes=("first_completion:4", "first_completion:2", "first_completion:002"),
    )
    assert cfg.experiments == ("identity", "alpha") and cfg.extra_hooks == ("mlp_out",)
    assert cfg.scope == "first_completion:4" and cfg.extra_scopes == ("first_completion:2",)


def test_normalising_is_idempotent_and_survives_the_manifest_round_trip():
    cfg = SuiteConfig(experiments=("patch_tuned_to_base", "patch_tuned_to_base"), hook="mlp_out", layers=(2, 0, 2))
    again = SuiteConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items()})
    assert again == cfg
    cfg.normalise()
    assert again == cfg


def test_unknown_names_are_left_for_validate_to_refuse_naming_the_option():
    cfg = SuiteConfig(hook="mlp_out", extra_hooks=("mlp", "mlp"), extra_scopes=("first_completion:0",))
    assert cfg.extra_hooks == ("mlp",)
    with pytest.raises(ConfigError, match="--extra-hooks"):
        cfg.validate()


def _keys(specs):
    return [(s.key.experiment, s.key.hook, s.key.scope, s.key.layer) for s in specs]


@pytest.mark.parametrize(
    "hook, extra_hooks, scope, extra_scopes",
    [
        ("mlp_out", ("attn_out", "mlp_out"), "all", ()),  # issue 24's combination
        ("resid_post", ("mlp_out", "mlp_out"), "all", ()),
        ("resid_post", (), "completion", ("completion", "prompt", "prompt")),
    ],
)
def test_each_condition_is_planned_once(hook, extra_hooks, scope, extra_scopes):
    cfg = SuiteConfig(
        experiments=("patch_tuned_to_base", "identity", "identity"),
        hook=hook,
        extra_hooks=extra_hooks,
        scope=scope,
        extra_scopes=extra_scopes,
        layers=(2, 0, 2),
    )
    keys = _keys(per_layer_specs(cfg, N_LAYERS))
    hooks = list(dict.fromkeys((hook, *extra_hooks)))
    scopes = list(dict.fromkeys((scope, *extra_scopes)))
    expected = {("patch_tuned_to_base", h, s, layer) for h in hooks for s in scopes for layer in (0, 2)}
    expected |= {("identity", hook, scope, layer) for layer in (0, 2)}
    assert len(keys) == len(set(keys)) and set(keys) == expected


def test_the_summary_of_the_issue_24_run_reports_the_planted_means():
    """One row per planned condition and pair, effect = 10·hook index + layer + pair noise: the summary (which
    raised 'several rows' before) gives each hook's per-layer means."""
    cfg = SuiteConfig(experiments=("patch_tuned_to_base",), hook="mlp_out", n_boot=50)
    specs = per_layer_specs(cfg, N_LAYERS)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, (4,))
    planted = {"mlp_out": 10.0, "attn_out": 20.0}
    rows = [
        make_row(s.key, pid, (0.0, 0.0), (planted[s.key.hook] + s.key.layer + noise[pid], 0.0))
        for s in specs
        for pid in range(4)
    ]
    scores = pd.DataFrame(
        {"pair_id": range(4), "gain": 1.0, "gain_per_token": 0.1, "base_delta_logp": 0.0, "tuned_delta_logp": 1.0}
    )
    summary = summarize_tables(to_frame(rows), scores, {}, cfg, n_layers=N_LAYERS, d_model=8)
    e1 = summary["experiments"]["patch_tuned_to_base"]
    assert [r["mean"] for r in e1["per_layer"]] == pytest.approx([10.0 + layer + noise.mean() for layer in range(3)])
    assert set(e1["by_hook"]) == {"mlp_out", "attn_out"}
    assert [r["mean"] for r in e1["by_hook"]["attn_out"]] == pytest.approx(
        [20.0 + layer + noise.mean() for layer in range(3)]
    )


class _Recorder:
    """An engine that records the conditions it is asked to run."""

    def __init__(self):
        self.specs = []

    def run(self, twins, pairs, specs, progress=True):
        self.specs += specs
        return specs


def test_sweep_runs_each_condition_once(monkeypatch):
    import alignment_probe as ap
    import alignment_probe.engine

    engine = _Recorder()
    monkeypatch.setattr(alignment_probe.engine, "make_engine", lambda name="fast", **kw: engine)
    twins = SimpleNamespace(n_layers=N_LAYERS, d_model=8)
    ap.sweep(
        twins,
        [],
        experiments=["patch_tuned_to_base", "patch_tuned_to_base", "random_noise"],
        hooks=["resid_post", "mlp_out", "resid_post"],
        extra_hooks=("mlp_out", "attn_out"),
        layers=[1, 1],
        progress=False,
    )
    keys = _keys(engine.specs)
    assert len(keys) == len(set(keys))
    assert set(keys) == (
        {("patch_tuned_to_base", h, "all", 1) for h in ("resid_post", "mlp_out", "attn_out")}
        | {("random_noise", h, "all", 1) for h in ("resid_post", "mlp_out")}
    )


def test_numpy_layer_numbers_become_ints_and_other_values_are_refused_naming_the_option():
    import json

    cfg = SuiteConfig(layers=np.array([2, 0, 2]), alpha_layers=(np.int64(1),), steer_layer=np.int64(2))
    assert cfg.layers == (2, 0) and type(cfg.layers[0]) is int and type(cfg.steer_layer) is int
    json.dumps(cfg.to_dict())  # the manifest records it
    with pytest.raises(ConfigError, match=r"--lowrank-layers: layer '1' is not a whole number"):
        SuiteConfig(lowrank_layers=("1",)).validate()
    with pytest.raises(ConfigError, match=r"--alpha-layers: layer 4 is out of range: the model has layers 0\.\.2"):
        SuiteConfig(alpha_layers=(4,)).validate(N_LAYERS)
    with pytest.raises(ConfigError, match=r"--steer-layer: layer -1 is out of range: layers are numbered from 0"):
        SuiteConfig(steer_layer=-1).validate()
    with pytest.raises(ConfigError, match="--experiments is empty"):
        SuiteConfig(experiments=()).validate()
    with pytest.raises(ConfigError, match="--scope: bad position scope 'first_completion:0'"):
        SuiteConfig(scope="first_completion:0").validate()


def test_all_is_the_default_suite_also_beside_opt_in_names():
    suite = SuiteConfig()
    assert SuiteConfig(experiments=("all",)).experiments == suite.experiments
    both = SuiteConfig(experiments="all,steer,identity")
    assert both.experiments == (*suite.experiments, "steer")
    assert both.window_widths == suite.window_widths == (1,)  # the default suite's widths, as with "all" alone
    assert SuiteConfig(experiments=("window_transplant",)).window_widths == (1, 2)  # named: both widths


@pytest.mark.parametrize(
    "option, field",
    [("--alpha-layers", "alpha_layers"), ("--lowrank-layers", "lowrank_layers"), ("--layers", "layers")],
)
def test_an_empty_layer_list_is_refused_naming_the_option(option, field):
    with pytest.raises(ConfigError, match=f"{option} is empty"):
        SuiteConfig(**{field: ()}).validate()


def test_a_named_experiment_without_any_condition_at_the_swept_layers_is_refused():
    """Issue 24's matrix: cross_2x2 at --layers 0 (no split) and a window that cannot fit ended in an internal
    error (an effects table without rows or columns)."""
    n = 4
    with pytest.raises(ConfigError, match=r"--layers 0: cross_2x2 splits the model at layers 1\.\.3.*--layers 0,1"):
        SuiteConfig(experiments=("cross_2x2", "identity"), layers=(0,)).validate(n)
    SuiteConfig(experiments=("cross_2x2", "identity"), layers=(0, 1)).validate(n)  # the fix it names
    SuiteConfig(experiments=("cross_2x2",), layers=(0, 3)).validate(n)  # split 3 exists
    for name in ("window_revert", "window_transplant"):
        with pytest.raises(ConfigError, match=rf"--layers 3 with --window-widths 2: {name}'s windows.*--layers 2,3"):
            SuiteConfig(experiments=(name,), layers=(3,), window_widths=(2,)).validate(n)
        SuiteConfig(experiments=(name,), layers=(2, 3), window_widths=(2,)).validate(n)  # the fix it names: 2 + 2 ≤ 4
    SuiteConfig(layers=(0,)).validate(n)  # the whole suite reports nothing for cross_2x2 there, no refusal
    SuiteConfig(experiments=("all", "steer"), layers=(3,), window_widths=(2,)).validate(n)
