"""The runtime shape checks the suite runs under (tests/helpers/typecheck.py, installed by conftest):
a wrongly shaped tensor passed to a public function fails at the call, naming the parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from tests.helpers import typecheck

pytestmark = pytest.mark.skipif(not typecheck.enabled(), reason="ALIGNMENT_PROBE_TYPECHECK=0")


def test_checked_modules_are_instrumented():
    import importlib

    assert typecheck.typechecker is not None
    for name in typecheck.CHECKED_MODULES:
        module = importlib.import_module(name)
        assert type(module.__loader__).__name__ == "_JaxtypingLoader", name


def ctx(target, source, side="chosen", **kw):
    from alignment_probe.interventions import SequenceContext

    return SequenceContext(0, side, 0, target, source, kw.pop("prompt_len", 2), kw.pop("length", target.shape[0]), **kw)


def test_sequence_context_target_and_source_must_agree():
    ctx(torch.zeros(5, 4), torch.ones(5, 4))
    with pytest.raises(TypeCheckError, match="source"):
        ctx(torch.zeros(5, 4), torch.ones(6, 4))  # pos differs
    with pytest.raises(TypeCheckError, match="source"):
        ctx(torch.zeros(5, 4), torch.ones(5, 3))  # d_model differs
    with pytest.raises(TypeCheckError, match="target"):
        ctx(torch.zeros(5), torch.ones(5))  # not [pos, d_model]
    with pytest.raises(TypeCheckError, match="target"):
        ctx(torch.zeros(5, 4, dtype=torch.long), torch.ones(5, 4))  # not float


def test_other_side_may_have_its_own_length_but_not_its_own_width():
    both = {"chosen": torch.zeros(5, 4), "rejected": torch.zeros(8, 4)}
    ctx(torch.zeros(5, 4), torch.ones(5, 4), source_by_side=both)
    with pytest.raises(TypeCheckError, match="source_by_side"):
        ctx(torch.zeros(5, 4), torch.ones(5, 4), source_by_side={"chosen": torch.zeros(5, 3)})


def test_project_basis_and_centre_must_agree():
    from alignment_probe.interventions import Project

    Project("reconstruct", torch.eye(4)[:, :2], torch.zeros(4))
    with pytest.raises(TypeCheckError, match="centre"):
        Project("reconstruct", torch.eye(4)[:, :2], torch.zeros(3))
    with pytest.raises(TypeCheckError, match="basis"):
        Project("difference", torch.zeros(4))


def test_scoring_shapes():
    from alignment_probe.scoring import sum_by_row

    out = sum_by_row(torch.ones(5), torch.tensor([0, 0, 1, 1, 1]), 2)
    assert out.tolist() == [2.0, 3.0]
    with pytest.raises(TypeCheckError, match="rows"):
        sum_by_row(torch.ones(5), torch.tensor([0, 0, 1]), 2)
    with pytest.raises(TypeCheckError, match="rows"):
        sum_by_row(torch.ones(5), torch.zeros(5), 2)  # row indices must be integers


def test_lowrank_shapes():
    from alignment_probe.experiments.subspace import Subspace, fit_subspace

    sub = fit_subspace(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)))
    assert sub.top(2).shape == (4, 2)
    with pytest.raises(TypeCheckError, match="stack"):
        fit_subspace(torch.randn(10))
    with pytest.raises(TypeCheckError, match="variance"):
        Subspace(basis=torch.eye(4), variance=torch.ones(3), centre=None)


def test_lowrank_row_subsets_have_their_own_length():
    from alignment_probe.experiments.subspace import rows_of

    acts = {"base": torch.zeros(5, 3), "tuned": torch.ones(5, 3), "pair_id": torch.tensor([0, 0, 1, 2, 2])}
    kept = rows_of(acts, [0, 2])
    assert kept["tuned"].shape == (4, 3) and kept["pair_id"].tolist() == [0, 0, 2, 2]
    with pytest.raises(TypeCheckError, match="acts"):  # (beartype checks one value of a dict per call)
        rows_of({"pair_id": torch.zeros(5, 2, dtype=torch.long)}, [0])


def test_lasso_shapes():
    from alignment_probe.experiments.lasso import fit_lasso, standardize

    assert standardize(np.ones((6, 3))).shape == (6, 3)
    with pytest.raises(TypeCheckError, match="features"):
        standardize(np.ones(6))
    with pytest.raises(TypeCheckError, match="features"):
        fit_lasso(np.ones((6, 3, 2)), np.ones(6))


def test_plain_types_are_checked_too():
    from alignment_probe.engine.spec import hook_name
    from alignment_probe.interventions import scope_mask

    with pytest.raises(TypeCheckError, match="layer"):
        hook_name("3", "resid_post")
    with pytest.raises(TypeCheckError, match="width"):
        scope_mask("all", 2, 5, 5.0)


def test_vocabularies_are_left_to_vocab_check():
    """A typo in a Literal-typed argument raises the same VocabularyError (naming the allowed values)
    under the checker as in production, not a TypeCheckError."""
    from alignment_probe.engine.spec import hook_name
    from alignment_probe.vocab import VocabularyError

    with pytest.raises(VocabularyError, match="use one of resid_pre"):
        hook_name(3, "resid")
