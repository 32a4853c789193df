"""Exports: paired activations are row-aligned with their indices and equal each model's own cached activations;
shift vectors round-trip through safetensors (and a llama.cpp control vector where gguf is installed)."""

from __future__ import annotations

import pytest
import torch
from conftest import BUNDLED_PAIRS
from safetensors import safe_open
from safetensors.torch import load_file

from alignment_probe import api
from alignment_probe.errors import ConfigError
from alignment_probe.exports import export_activations, export_shift_vectors


def test_paired_activations_are_row_aligned(tiny_pair, tmp_path):
    pairs = api.load_pairs(BUNDLED_PAIRS, n=2, seed=0, tokenizer=tiny_pair.tokenizer, max_length=64)
    path = export_activations(
        tiny_pair,
        pairs,
        tmp_path / "acts.safetensors",
        hooks=["resid_post", "mlp_out"],
        layers=[1, 2],
        positions="completion",
    )
    acts = load_file(str(path))
    n = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    for role in ("base", "tuned"):
        for hook in ("blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"):
            assert acts[f"{role}.{hook}"].shape == (n, tiny_pair.d_model)
    assert (acts["position"] >= acts["completion_start"]).all()
    # the rows of one sequence are that sequence's own activations, in both models
    p = pairs[0]
    seq = p.sequence("rejected")
    rows = (acts["pair_id"] == p.pair_id) & (acts["side"] == 1)
    ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
    assert acts["token_id"][rows].tolist() == list(seq.completion_ids)
    for role, model in tiny_pair.models().items():
        _, cache = model.run_with_cache(ids)
        expect = cache["blocks.2.hook_mlp_out"][0, seq.completion_start :]
        torch.testing.assert_close(acts[f"{role}.blocks.2.hook_mlp_out"][rows], expect)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["positions"] == "completion"
    with pytest.raises(ConfigError, match="hook"):
        export_activations(tiny_pair, pairs, tmp_path / "x.safetensors", hooks=["bogus"])


def test_shift_vectors_round_trip(tmp_path):
    vectors = {3: torch.randn(16), 5: torch.randn(16)}
    files = export_shift_vectors(vectors, tmp_path / "shift.safetensors", model_hint="llama")
    back = load_file(str(files["safetensors"]))
    assert set(back) == {"layer.3", "layer.5"} and torch.equal(back["layer.3"], vectors[3])
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(files["gguf"]))
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.4", "direction.6"]
    got = {t.name: torch.tensor(t.data.copy()) for t in reader.tensors}
    torch.testing.assert_close(got["direction.4"].reshape(-1), vectors[3])


def test_steering_vectors_export_the_fitted_shift(planted, tmp_path):
    """On a twin that differs only in block 2's MLP, the shift at layer 1 (below it) is exactly 0 and at layer 2 it
    is the mean of h_T − h_B over the predicting positions, computed here independently from the two caches."""
    from alignment_probe.experiments.steering import export_steering_vectors
    from alignment_probe.interventions import predicting_classes

    pairs = api.load_pairs(BUNDLED_PAIRS, n=3, seed=0, tokenizer=planted.tokenizer, max_length=64)
    files = export_steering_vectors(planted, pairs, tmp_path / "v.safetensors", layers=[1, 2])
    got = load_file(str(files["safetensors"]))
    assert {"layer.1", "layer.2", "layer.2.last_prompt", "layer.2.first", "layer.2.rest"} <= set(got)
    assert got["layer.1"].abs().max() == 0
    rows = []
    for p in pairs:
        for side in ("chosen", "rejected"):
            seq = p.sequence(side)
            ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            at = predicting_classes(seq.completion_start, seq.length, 8) >= 0
            _, cb = planted.base.run_with_cache(ids)
            _, ct = planted.tuned.run_with_cache(ids)
            name = "blocks.2.hook_resid_post"
            rows.append((ct[name][0] - cb[name][0])[at])
    torch.testing.assert_close(got["layer.2"], torch.cat(rows).double().mean(0).float(), atol=1e-5, rtol=1e-4)
