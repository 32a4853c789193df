"""docs/extending.md's example experiment is real: exactly the source the page shows, saved as one new module in a
clean copy of the package (no other edit), runs from the command line, with its own site (MLP neurons), its own
intervention and its own option; and on a planted twin it finds the known answer."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# the marker, then the code fence that follows it: the module's whole source
EXAMPLE = re.compile(r"<!-- example-experiment: (\w+) -->\s*\n```python\n(.*?)^```", re.S | re.M)
PLANTED_LAYER, PLANTED_NEURONS = 1, [3, 7]


def _example() -> tuple[str, str]:
    found = EXAMPLE.findall((REPO / "docs" / "extending.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "docs/extending.md shows one example experiment after its marker"
    return found[0]


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository copied (no .git, virtual environment or runs), the example saved as its one new module."""
    name, source = _example()
    root = tmp_path_factory.mktemp("clean") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "site", "__pycache__"))
    module = root / "alignment_probe" / "experiments" / f"{name}.py"
    assert not module.exists(), f"{module.name} is already in the package: the example must be a new module"
    module.write_text(source, encoding="utf-8")
    return root


def _cli(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # cwd outside the repository: `python -m` puts it first on sys.path, and the copy must be the package imported
    return subprocess.run(
        [sys.executable, "-m", "alignment_probe", *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=900
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_the_example_runs_from_a_clean_copy_with_no_other_edit(copy_root, tmp_path):
    name, _ = _example()
    helped = _cli(copy_root, "run", "--help", cwd=tmp_path)
    _ok(helped)
    assert "--neuron-k" in helped.stdout  # its option, picked up by the command line
    out = tmp_path / "run"
    _ok(_cli(copy_root, "run", "--experiments", name, "--n-pairs", "4", "--neuron-k", "4", "--procs", "1",
             "--out", str(out), cwd=tmp_path))  # fmt: skip
    effects = pd.read_parquet(out / "effects.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert set(effects.experiment) == {"mlp_neurons", "mlp_neurons_random"}
    assert set(effects.hook) == {"mlp_post"} and set(effects.param) == {4.0}
    for _, rows in effects.groupby("experiment"):  # every layer, every pair
        assert sorted(set(rows.layer)) == list(range(summary["n_layers"]))
        assert len(rows) == summary["n_layers"] * summary["n_pairs"]
    assert {"mlp_neurons", "mlp_neurons_random"} <= set(summary["experiments"])
    units = json.loads((out / "fits.json").read_text())["mlp_neurons"]["units"]
    assert all(len(u) == 4 for by_layer in units.values() for u in by_layer.values())


@pytest.fixture(scope="module")
def planted_neurons(tiny, tmp_path_factory) -> Path:
    """The tiny base with the input weights (gate and up projections) of two neurons of one block changed: the
    tuned model's only difference from the base is those neurons' activations there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.checkpoints import save_checkpoint

    base = AutoModelForCausalLM.from_pretrained(tiny.base)
    twin = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mlp = twin.model.layers[PLANTED_LAYER].mlp
        for weight in (mlp.gate_proj.weight, mlp.up_proj.weight):  # rows are neurons: [d_mlp, d_model]
            rows = weight[PLANTED_NEURONS]
            weight[PLANTED_NEURONS] = rows + 2.0 * rows.std() * torch.randn(rows.shape, generator=gen)
    path = tmp_path_factory.mktemp("planted-neurons") / "tuned"
    return save_checkpoint(twin, AutoTokenizer.from_pretrained(tiny.base), path)


def test_the_example_finds_planted_neurons_and_patching_them_is_the_tuned_model(
    copy_root, tiny, planted_neurons, tmp_path
):
    name, _ = _example()
    out = tmp_path / "planted"
    _ok(_cli(copy_root, "run", "--experiments", name, "--base", str(tiny.base), "--tuned", str(planted_neurons),
             "--layers", str(PLANTED_LAYER), "--neuron-k", "2", "--n-pairs", "4", "--max-length", "64",
             "--procs", "1", "--out", str(out), cwd=tmp_path))  # fmt: skip
    units = json.loads((out / "fits.json").read_text())["mlp_neurons"]["units"]
    assert units["mlp_neurons"][str(PLANTED_LAYER)] == PLANTED_NEURONS  # exactly the planted two
    effects = pd.read_parquet(out / "effects.parquet")
    scores = pd.read_parquet(out / "scores.parquet").set_index("pair_id")
    top = effects[effects.experiment == "mlp_neurons"].set_index("pair_id")
    assert len(top) == len(scores) and (scores.tuned_delta_logp - scores.base_delta_logp).abs().min() > 1e-3
    # the base with the planted neurons' activations is the tuned model: its Δlogp, pair by pair
    np.testing.assert_allclose(top.patched_delta_logp, scores.tuned_delta_logp.loc[top.index], atol=1e-4)
