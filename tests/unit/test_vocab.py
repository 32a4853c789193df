"""The closed vocabularies: one definition each, and a typo fails when a spec is built, naming the
bad value and the allowed ones (alignment_probe.vocab)."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from alignment_probe import vocab
from alignment_probe.effects import RowKey
from alignment_probe.errors import ConfigError
from alignment_probe.interventions import (
    AddVector,
    Interpolate,
    Project,
    Replace,
    SequenceContext,
    apply_in_scope,
    scope_mask,
)
from alignment_probe.vocab import VocabularyError

GOOD = dict(experiment="identity", target="base", source="tuned", hook="resid_post", scope="all", sides="both", layer=0)


def test_tuples_are_derived_from_the_literal_types():
    assert vocab.HOOKS == get_args(vocab.Hook) == ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    assert (
        vocab.SCOPES
        == get_args(vocab.Scope)
        == ("all", "prompt", "completion", "last_prompt", "all_but_bos", "predicting")
    )
    assert vocab.SIDES == ("chosen", "rejected") and vocab.PATCHED_SIDES == ("both", "chosen", "rejected")
    assert vocab.ROLES == ("base", "tuned")
    assert vocab.LOWRANK_MODES == {"lowrank_reconstruct": "reconstruct", "lowrank_difference": "difference"}
    assert vocab.VECTOR_KINDS == ("chosen", "rejected", "contrast")


def test_old_names_are_the_one_definition():
    from alignment_probe import engine, interventions, tokens
    from alignment_probe.engine import spec
    from alignment_probe.experiments import lasso, lowrank
    from alignment_probe.report import figures

    assert spec.HOOKS is engine.HOOKS is lasso.HOOKS is vocab.HOOKS
    assert interventions.SCOPES is vocab.SCOPES
    assert tokens.SIDES is vocab.SIDES
    assert lowrank.MODES is figures.LOWRANK_MODES is vocab.LOWRANK_MODES


def test_check_names_the_bad_value_and_the_allowed_ones():
    with pytest.raises(VocabularyError, match=r"unknown hook point 'resid'; use one of resid_pre, .*mlp_out") as err:
        vocab.check_hook("resid")
    assert isinstance(err.value, ValueError) and isinstance(err.value, ConfigError)  # callers and the CLI
    assert vocab.check("tuned", vocab.ROLES, "role") == "tuned"


@pytest.mark.parametrize(
    "scope, parsed",
    [
        ("all", ("all", None)),
        ("last_prompt", ("last_prompt", None)),
        ("first_completion:1", ("first_completion", 1)),
        ("first_completion:16", ("first_completion", 16)),
    ],
)
def test_parse_scope(scope, parsed):
    assert vocab.parse_scope(scope) == parsed and vocab.check_scope(scope) == scope


@pytest.mark.parametrize(
    "scope",
    [
        "compleiton",
        "first_completion",
        "first_completion:",
        "first_completion:0",
        "first_completion:-2",
        "first_completion:x",
        "first_completion:2.5",
        "completion:3",
        "",
        None,
        3,
    ],
)
def test_bad_scopes_are_rejected_with_the_allowed_list(scope):
    with pytest.raises(VocabularyError, match="scope") as err:
        vocab.check_scope(scope)
    assert repr(scope) in str(err.value)
    assert "first_completion" in str(err.value)


def test_row_key_accepts_the_vocabularies():
    RowKey(**GOOD)
    RowKey(**GOOD | {"scope": "first_completion:4", "sides": "rejected", "hook": "mlp_out"})


@pytest.mark.parametrize(
    "field, bad, allowed",
    [
        ("target", "bsae", "base, tuned"),
        ("source", "tunned", "base, tuned"),
        ("hook", "resid", "resid_pre, resid_mid, resid_post, attn_out, mlp_out"),
        ("hook", "hook_resid_post", "resid_post"),
        ("scope", "completions", "all, prompt, completion, last_prompt, all_but_bos, predicting, first_completion:K"),
        ("sides", "chosen_only", "both, chosen, rejected"),
    ],
)
def test_row_key_typo_fails_at_construction(field, bad, allowed):
    with pytest.raises(VocabularyError) as err:
        RowKey(**GOOD | {field: bad})
    assert repr(bad) in str(err.value) and allowed in str(err.value)


def test_patch_spec_and_hook_name():
    from alignment_probe.engine.spec import PatchSpec, hook_name

    spec = PatchSpec(RowKey(**GOOD | {"sides": "chosen"}), Replace())
    assert spec.name == "blocks.0.hook_resid_post"
    assert spec.patches("chosen") and not spec.patches("rejected")
    with pytest.raises(VocabularyError, match="'chossen'"):
        spec.patches("chossen")
    with pytest.raises(VocabularyError, match="unknown hook point 'mlp'"):
        hook_name(3, "mlp")
    with pytest.raises(TypeError):
        PatchSpec(GOOD, Replace())


def test_interventions_validate_at_construction():
    Interpolate(0.5), AddVector("contrast", 2.0), Project("difference", torch.eye(4)[:, :2])
    with pytest.raises(VocabularyError, match=r"unknown vector kind 'contrst'; use one of chosen, rejected, contrast"):
        AddVector("contrst")
    with pytest.raises(VocabularyError, match=r"unknown low-rank mode 'recon'; use one of reconstruct, difference"):
        Project("recon", torch.eye(4)[:, :2])
    with pytest.raises(VocabularyError, match="unknown side 'chosen '"):
        SequenceContext(0, "chosen ", 0, torch.zeros(3, 2), torch.zeros(3, 2), 1, 3)


def test_lowrank_mode_and_experiment_are_checked():
    from alignment_probe.experiments.lowrank import lowrank_specs
    from alignment_probe.experiments.subspace import fit_for_mode

    acts = {"base": torch.zeros(6, 4), "tuned": torch.randn(6, 4, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(VocabularyError, match="'diff'"):
        fit_for_mode("diff", acts, centre=False)
    sub = fit_for_mode("difference", acts, centre=False)
    with pytest.raises(VocabularyError, match="'lowrank_full'"):
        lowrank_specs("lowrank_full", sub, layer=0, ks=[1], hook="resid_post", scope="all")
    specs = lowrank_specs("lowrank_difference", sub, layer=0, ks=[1, 4], hook="resid_post", scope="first_completion:2")
    assert [s.key.param for s in specs] == [1.0, 4.0] and specs[0].intervention.basis.shape == (4, 1)


# ---------------------------------------------------------------- first_completion:K


@pytest.mark.parametrize("k, expected", [(1, [3]), (2, [3, 4]), (4, [3, 4, 5, 6]), (9, [3, 4, 5, 6])])
def test_first_completion_mask(k, expected):
    # prompt = positions 0..2 (BOS + 2 tokens), completion = 3..6, padding = 7..9
    mask = scope_mask(f"first_completion:{k}", prompt_len=3, length=7, width=10)
    assert mask.dtype == torch.bool and mask.nonzero().flatten().tolist() == expected


def test_first_completion_covering_the_completion_equals_completion():
    for k in (4, 5, 100):
        assert torch.equal(scope_mask(f"first_completion:{k}", 3, 7, 10), scope_mask("completion", 3, 7, 10))


def test_apply_in_scope_first_completion_and_bad_scope_before_running():
    ctx = SequenceContext(0, "rejected", 1, torch.zeros(6, 2), torch.ones(6, 2), prompt_len=2, length=5)
    out = apply_in_scope(Replace(), ctx, "first_completion:2")
    assert out[:, 0].tolist() == [0, 0, 1, 1, 0, 0]

    def never(ctx):
        raise AssertionError("the intervention ran before the scope was checked")

    with pytest.raises(VocabularyError, match="'first_completion:0'"):
        apply_in_scope(never, ctx, "first_completion:0")
