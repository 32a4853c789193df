"""The option matrix (issue 24): documented ``run`` options, in combination, end in success or a clean refusal.

Every combination runs the CLI in-process (``alignment_probe.cli.main``) on the tiny random Llama twin of
conftest (4 layers, grouped-query attention) with 5 pairs (the LASSO's 5 folds need 5; fewer would refuse
every default-suite combination) and a small bootstrap, and must end in

* success: exit 0, a ``summary.json`` holding exactly the experiments asked for, and an ``effects.parquet``
  with the table's columns and one row per condition and pair (issue 24's bug ran a condition twice); or
* a clean refusal: exit 2 and one ``alignment-probe: error:`` paragraph naming an option of the command line;

never an internal error (exit 1, "internal error (a bug)", a traceback). The combinations are a fixed list
(the bug's own commands, each opt-in experiment with its documented companion flags, ``--layers`` subsets and
ranges, known refusals with the option they must name) and a seeded, deterministic sample of the documented
options' values (:func:`sampled`), sized to a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest
from conftest import PAIRS_DATA

from alignment_probe.cli import main
from alignment_probe.effects import COLUMNS, KEY_COLUMNS
from alignment_probe.errors import EXIT_BAD_INPUT, EXIT_OK
from alignment_probe.experiments import registry

# 5 pairs leave the LASSO's per-layer probes one held-out pair per fold: sklearn warns that R² is undefined
pytestmark = pytest.mark.filterwarnings("ignore:R\\^2 score is not well-defined")

N_PAIRS = 5
COMMON = ["--n-pairs", str(N_PAIRS), "--n-boot", "20", "--max-length", "72", "--device", "cpu", "--procs", "1"]
OK = None  # expected: success

HOOKS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
SCOPES = ["all", "prompt", "completion", "last_prompt", "all_but_bos", "first_completion:2"]
# --layers as the README documents it: a list, start:stop:step ranges, or a mix (the twin has layers 0..3)
LAYERS = ["0", "3", "1,3", "0:4:2", "1:3", "3:0:-1", "0,2:4", "2,2,1"]

# Each opt-in experiment with its documented companions (README, "The experiments"), and default-suite groups.
RECIPES = [
    ["--experiments", "atp,patch_tuned_to_base", "--extra-hooks", "mlp_out,attn_out,resid_pre"],
    ["--experiments", "atp,patch_tuned_to_base", "--confirm", "3"],
    ["--experiments", "atp_heads,head_patch,kv_head_patch"],
    ["--experiments", "head_patch,kv_head_patch"],
    ["--experiments", "token_map", "--scope", "first_completion:2"],
    ["--experiments", "patch_tuned_to_base,steer"],
    ["--experiments", "patch_tuned_to_base,steer", "--steer-c", "0.5,2", "--steer-k", "2"],
    ["--experiments", "window_transplant,window_revert", "--window-widths", "1,2"],
    ["--experiments", "alpha", "--alpha-layers", "1,2"],
    ["--experiments", "lowrank_reconstruct,lowrank_difference", "--lowrank-layers", "2"],
    ["--experiments", "cross_2x2"],
    ["--experiments", "shift,lasso"],
    ["--experiments", "identity,random_noise,random_direction"],
    ["--experiments", "source_chosen_only,source_rejected_only,vector_contrast"],
    ["--experiments", "patch_tuned_to_base,patch_base_to_tuned"],
]
# Names drawn 1–3 at a time: every one but steer (the slowest, by its scan: through its recipes) and all (fixed cases).
NAMES = [
    "patch_tuned_to_base",
    "patch_base_to_tuned",
    "identity",
    "random_noise",
    "random_direction",
    "alpha",
    "window_transplant",
    "window_revert",
    "cross_2x2",
    "source_chosen_only",
    "vector_chosen",
    "lowrank_reconstruct",
    "lowrank_difference",
    "shift",
    "lasso",
    "head_patch",
    "kv_head_patch",
    "token_map",
    "atp",
    "atp_heads",
    "atp_confirm",
    "steer_scan",
]

FIXED: list[tuple[str, list[str], str | None]] = [
    # issue 24: the main hook repeated by the default --extra-hooks attn_out,mlp_out
    ("bug-hook-mlp_out", ["--experiments", "patch_tuned_to_base", "--hook", "mlp_out"], OK),
    ("bug-atp-hook-mlp_out", ["--experiments", "atp,patch_tuned_to_base", "--hook", "mlp_out"], OK),
    ("bug-hook-attn_out-all", ["--experiments", "all", "--hook", "attn_out", "--layers", "1,3"], OK),
    ("repeat-extra-hooks", ["--experiments", "patch_tuned_to_base", "--extra-hooks", "mlp_out,mlp_out,resid_post"], OK),
    (
        "repeat-extra-scopes",
        [
            "--experiments",
            "patch_tuned_to_base,atp",
            "--scope",
            "completion",
            "--extra-scopes",
            "completion,last_prompt,last_prompt",
        ],
        OK,
    ),
    (
        "repeat-layers",
        ["--experiments", "patch_tuned_to_base,alpha", "--layers", "1,1,0:2", "--alpha-layers", "2,2"],
        OK,
    ),
    ("repeat-experiments", ["--experiments", "identity,identity,head_patch,head_patch"], OK),
    ("repeat-window-widths", ["--experiments", "window_revert", "--window-widths", "1,1"], OK),
    (
        "atp-confirm-hooks",
        [
            "--experiments",
            "atp,patch_tuned_to_base",
            "--extra-hooks",
            "mlp_out,attn_out,resid_pre",
            "--confirm",
            "2",
            "--layers",
            "0:4:2",
        ],
        OK,
    ),
    ("confirm-alone", ["--experiments", "patch_tuned_to_base", "--confirm", "1", "--hook", "mlp_out"], OK),
    ("confirm-more-than-conditions", ["--experiments", "atp", "--confirm", "1000", "--layers", "2"], OK),
    ("all-with-opt-in", ["--experiments", "all,steer", "--layers", "2,3"], OK),
    (
        "atp-heads-reference",
        ["--experiments", "atp_heads,head_patch,kv_head_patch", "--engine", "reference", "--layers", "1"],
        OK,
    ),
    (
        "token-map-scopes",
        [
            "--experiments",
            "token_map",
            "--scope",
            "first_completion:2",
            "--extra-scopes",
            "completion,first_completion:02",
            "--layers",
            "3:0:-1",
        ],
        OK,
    ),
    (
        "window-widths-at-layers",
        ["--experiments", "window_transplant,window_revert", "--window-widths", "2,3", "--layers", "0,1"],
        OK,
    ),
    (
        "steer-options",
        [
            "--experiments",
            "patch_tuned_to_base,steer",
            "--steer-layer",
            "2",
            "--steer-c",
            "1,3",
            "--steer-k",
            "1",
            "--transfer-data",
            str(PAIRS_DATA),
            "--layers",
            "1:4",
        ],
        OK,
    ),
    ("steer-hook-scope", ["--experiments", "steer", "--hook", "mlp_out", "--scope", "completion"], OK),
    ("lowrank-outside-layers", ["--experiments", "lowrank_difference", "--layers", "1", "--lowrank-layers", "3"], OK),
    ("shift-alone", ["--experiments", "shift"], OK),
    ("small-parts", ["--experiments", "identity,atp", "--pairs-per-part", "2", "--batch-size", "1"], OK),
    # refusals: exit 2, naming the option (and the fix)
    ("empty-experiments", ["--experiments", ","], "--experiments is empty"),
    ("unknown-experiment", ["--experiments", "patch_tuned_to_bse"], "--experiments: unknown experiment"),
    ("head-hook", ["--experiments", "patch_tuned_to_base", "--hook", "z"], "--hook: unknown hook point 'z'"),
    ("bad-extra-hook", ["--experiments", "identity", "--extra-hooks", "mlp"], "--extra-hooks: unknown hook point"),
    (
        "bad-scope",
        ["--experiments", "identity", "--extra-scopes", "first_completion:0"],
        "--extra-scopes: bad position",
    ),
    ("layers-out-of-range", ["--experiments", "identity", "--layers", "0:9"], "--layers: layer 4 is out of range"),
    ("layers-negative", ["--experiments", "identity", "--layers", "-1"], "--layers: layer -1 is out of range"),
    ("layers-empty-range", ["--experiments", "identity", "--layers", "2:2"], "--layers is empty"),
    ("layers-open-range", ["--experiments", "identity", "--layers", "1:"], "--layers '1:'"),
    ("alpha-layers-empty", ["--experiments", "alpha", "--alpha-layers="], "--alpha-layers is empty"),
    (
        "lowrank-layers-empty",
        ["--experiments", "lowrank_reconstruct", "--lowrank-layers="],
        "--lowrank-layers is empty",
    ),
    ("steer-layer-range", ["--experiments", "steer", "--steer-layer", "7"], "--steer-layer: layer 7 is out of range"),
    ("cross-no-split", ["--experiments", "cross_2x2,identity", "--layers", "0"], "--layers 0: cross_2x2 splits"),
    (
        "window-does-not-fit",
        ["--experiments", "window_revert", "--window-widths", "2", "--layers", "3"],
        "--layers 3 with --window-widths 2",
    ),
    ("window-width-all-blocks", ["--experiments", "window_transplant", "--window-widths", "4"], "--window-widths"),
    ("confirm-zero", ["--experiments", "atp", "--confirm", "0"], "--confirm must be at least 1"),
    ("transfer-without-steer", ["--experiments", "identity", "--transfer-data", str(PAIRS_DATA)], "--transfer-data"),
    ("lasso-too-few-pairs", ["--experiments", "lasso", "--n-pairs", "3"], "--n-pairs 5 or more"),
    # none fits: raising --max-length is the fix (it suggested "--n-pairs 0 or fewer", which is refused)
    (
        "max-length-too-short",
        ["--experiments", "identity", "--max-length", "8"],
        "Raise --max-length (if the model's context allows)",
    ),
]


def sampled(n: int, seed: int) -> list[list[str]]:
    """``n`` seeded combinations of the documented options: a recipe or 1–3 experiment names, then each other
    option present with some probability, its value drawn from the documented ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            args = list(rng.choice(RECIPES))
        else:
            args = ["--experiments", ",".join(rng.sample(NAMES, rng.choice([1, 1, 2, 3])))]
        if "--hook" not in args and rng.random() < 0.5:
            args += ["--hook", rng.choice(HOOKS)]
        if "--extra-hooks" not in args and rng.random() < 0.4:
            args += ["--extra-hooks=" + ",".join(rng.sample(HOOKS, rng.choice([0, 1, 2, 3])))]
        if "--scope" not in args and rng.random() < 0.4:
            args += ["--scope", rng.choice(SCOPES)]
        if rng.random() < 0.25:
            args += ["--extra-scopes", ",".join(rng.sample(SCOPES, rng.choice([1, 2])))]
        if rng.random() < 0.6:
            args += ["--layers", rng.choice(LAYERS)]
        if "--confirm" not in args and rng.random() < 0.15:
            args += ["--confirm", rng.choice(["1", "3"])]
        if "--alpha-layers" not in args and rng.random() < 0.1:
            args += ["--alpha-layers", rng.choice(["1", "0,3", "0:4:3"])]
        if "--lowrank-layers" not in args and rng.random() < 0.1:
            args += ["--lowrank-layers", rng.choice(["2", "0,3"])]
        if "--window-widths" not in args and rng.random() < 0.15:
            args += ["--window-widths", rng.choice(["1", "2", "1,2", "3"])]
        if rng.random() < 0.15:
            args += ["--engine", "reference"]
        if rng.random() < 0.1:
            args += ["--pairs-per-part", "2"]
        out.append(args)
    return out


N_SAMPLED, SEED = 60, 24
COMBOS = [pytest.param(args, expected, id=name) for name, args, expected in FIXED] + [
    pytest.param(args, "either", id=f"sampled-{i:02d}") for i, args in enumerate(sampled(N_SAMPLED, SEED))
]


def asked_experiments(args: list[str]) -> set[str]:
    """The summary's experiments for this command line, as the README documents them (independent of
    SuiteConfig): the names given, ``all`` = the default suite, ``--confirm`` adds atp and atp_confirm, steer
    reports its scan (steer_scan) too unless ``--steer-layer`` and a single scale leave nothing to choose, and
    atp_heads reports under the atp key."""
    names = set(args[args.index("--experiments") + 1].split(",")) - {""}
    if "all" in names:
        names = (names - {"all"}) | set(registry.experiment_names())
    if "--confirm" in args:
        names |= {"atp", "atp_confirm"}
    # E11 (revised): the scan chooses the layer and the scale on the fit half; only a fixed --steer-layer with a
    # single scale (1 is always in the grid) leaves nothing to choose
    scales = (
        {float(x) for x in args[args.index("--steer-c") + 1].split(",")} | {1.0}
        if "--steer-c" in args
        else {0.5, 1.0, 2.0, 4.0}
    )
    if "steer" in names and not ("--steer-layer" in args and len(scales) == 1):
        names.add("steer_scan")
    if "atp_heads" in names:
        names = (names - {"atp_heads"}) | {"atp"}
    return names


def check_success(out, args: list[str]) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == N_PAIRS and summary["n_layers"] == 4
    assert set(summary["experiments"]) == asked_experiments(args)
    effects = pd.read_parquet(out / "effects.parquet")
    assert list(effects.columns) == COLUMNS
    repeated = effects[effects.duplicated(KEY_COLUMNS, keep=False)]
    assert repeated.empty, f"conditions ran more than once:\n{repeated[KEY_COLUMNS].head()}"


def check_refusal(err: str, args: list[str], expected: str) -> None:
    assert "alignment-probe: error:" in err, err
    message = err.split("alignment-probe: error:", 1)[1]
    if expected != "either":
        assert expected in message, message
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    assert flags & set(re.findall(r"--[a-z][a-z-]*", message)), f"the refusal names no option given: {message}"


@pytest.mark.parametrize("args, expected", COMBOS)
def test_option_combination_succeeds_or_is_refused_cleanly(tiny, tmp_path, capsys, args, expected):
    argv = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        *COMMON,
        *args,
        "--out",
        str(tmp_path / "run"),
    ]
    code = main(argv)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    assert code in (EXIT_OK, EXIT_BAD_INPUT), err
    if expected is OK:
        assert code == EXIT_OK, err
    elif expected != "either":
        assert code == EXIT_BAD_INPUT, f"expected a refusal naming {expected!r}; exit {code}"
    if code == EXIT_OK:
        check_success(tmp_path / "run", argv)
    else:
        check_refusal(err, argv, expected)


@pytest.mark.parametrize(
    "args",
    [
        ["--experiments", "patch_tuned_to_base", "--hook", "mlp_out"],
        ["--experiments", "atp,patch_tuned_to_base", "--hook", "mlp_out"],
    ],
    ids=["hook-mlp_out", "atp-hook-mlp_out"],
)
def test_issue_24_commands_on_the_bundled_default(tmp_path, capsys, args):
    """The bug's commands as reported: the bundled organisms (no --base/--tuned/--data), offline; E1's summary
    reports the main hook and the remaining extra hook once each."""
    out = tmp_path / "run"
    assert main(["run", *args, "--n-pairs", "4", "--n-boot", "20", "--procs", "1", "--out", str(out)]) == EXIT_OK, (
        capsys.readouterr().err
    )
    e1 = json.loads((out / "summary.json").read_text())["experiments"]["patch_tuned_to_base"]
    assert set(e1["by_hook"]) == {"mlp_out", "attn_out"}

    # the same cells; only the family-wise bands differ (over m = layers for the curve, layers × hooks for by_hook)
    def cells(rows):
        return [{k: v for k, v in r.items() if k not in ("band_low", "band_high")} for r in rows]

    assert cells(e1["per_layer"]) == cells(e1["by_hook"]["mlp_out"])


def test_equivalent_spellings_are_one_configuration(tiny, tmp_path, capsys):
    """Merged options are what the manifest records: a rerun spelt differently (repeats, the main hook among the
    extra hooks) resumes the same run instead of being refused as another configuration."""
    out = tmp_path / "run"
    base = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        *COMMON,
        "--out",
        str(out),
    ]
    assert (
        main(
            [
                *base,
                "--experiments",
                "patch_tuned_to_base,identity",
                "--hook",
                "mlp_out",
                "--extra-hooks",
                "attn_out,mlp_out",
                "--layers",
                "1,2",
            ]
        )
        == EXIT_OK
    ), capsys.readouterr().err
    capsys.readouterr()
    assert (
        main(
            [
                *base,
                "--experiments",
                "patch_tuned_to_base,identity,identity",
                "--hook",
                "mlp_out",
                "--extra-hooks",
                "attn_out,attn_out",
                "--layers",
                "2,1,1:3",
            ]
        )
        == EXIT_OK
    )
    err = capsys.readouterr().err
    assert "already done" in err and "different configuration" not in err, err


def test_run_suite_merges_like_the_command_line(tiny, tmp_path):
    """``ap.run_suite`` builds the same SuiteConfig: the issue's combination, names given as one string."""
    import alignment_probe as ap

    run = ap.run_suite(
        tmp_path / "api",
        base=tiny.base,
        tuned=tiny.tuned,
        data=PAIRS_DATA,
        experiments="patch_tuned_to_base",
        hook="mlp_out",
        layers=[2, 0, 2],
        n_pairs=N_PAIRS,
        max_length=72,
        n_boot=20,
        progress=False,
    )
    e1 = run.summary["experiments"]["patch_tuned_to_base"]
    assert set(e1["by_hook"]) == {"mlp_out", "attn_out"} and [r["layer"] for r in e1["per_layer"]] == [0, 2]
    assert not run.effects.duplicated(KEY_COLUMNS).any()
