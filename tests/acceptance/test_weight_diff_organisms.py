"""E0's known answer on the bundled organisms: every planted twin has its whole ΔW in its planted module(s) and
exactly 0 everywhere else (the twins were trained with everything else frozen)."""

from __future__ import annotations

import pytest

from alignment_probe.experiments.weight_diff import weight_diff
from alignment_probe.organisms import (
    bundled_pair_paths,
    head_twin_path,
    head_twin_site,
    kv_twin_path,
    kv_twin_site,
    planted_layers,
    planted_twin_path,
    two_block_layers,
    two_block_twin_path,
)
from alignment_probe.pair import load_twins

MLP = ("mlp_in", "mlp_gate", "mlp_out")


def _changed(tuned) -> set[tuple[int | None, str]]:
    rows = weight_diff(load_twins(bundled_pair_paths()[0], tuned))["by_module"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    return {(r["layer"], r["module"]) for r in rows if r["frob"] > 0}


@pytest.mark.parametrize("layer", planted_layers())
def test_planted_mlp_twin_changed_only_its_mlp(layer):
    assert _changed(planted_twin_path(layer)) == {(layer, m) for m in MLP}


def test_head_kv_and_two_block_twins_changed_only_their_modules():
    assert _changed(head_twin_path()) == {(head_twin_site()[0], "q")}
    assert _changed(kv_twin_path()) == {(kv_twin_site()[0], "v")}
    assert _changed(two_block_twin_path()) == {(b, m) for b in two_block_layers() for m in MLP}
