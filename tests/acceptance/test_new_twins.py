"""Known answers, part 4: the named planted twins (one query head, one KV head, two MLPs).

* each twin differs from base only where it was planted: tensor by tensor, and for the head twins
  row by row (only the planted head's rows of q_proj / v_proj);
* each has a positive gain on the held-out pairs with a bootstrap CI excluding 0 (metrics.json), and
  the stored per-pair gains agree with the toolkit's own scoring (TransformerLens) on the first pairs;
* the existing patching machinery gets the two-block twin's known answer: ``mlp_out`` patching
  gives exactly 0 for every MLP below the first planted block.

Small-build determinism of these twins (and ``--only``) is tested in test_organisms.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alignment_probe.organisms import (
    HEAD_TWIN_SITE,
    KV_TWIN_SITE,
    TWO_BLOCK_LAYERS,
    bundled_metrics,
    bundled_pair_paths,
    bundled_pairs_path,
    head_twin_name,
    head_twin_path,
    head_twin_site,
    kv_twin_name,
    kv_twin_path,
    kv_twin_site,
    organisms_dir,
    twin_names,
    twin_path,
    twin_recipe,
    two_block_layers,
    two_block_twin_name,
    two_block_twin_path,
)

WEIGHTS = "model.safetensors"
D_HEAD, N_HEADS, N_KV_HEADS, N_LAYERS = 32, 4, 2, 8
HEAD_NAME, KV_NAME, TWO_BLOCK_NAME = "head_layer4_h1", "kv_layer3_g0", "mlp_layers2_5"
NAMED = (HEAD_NAME, KV_NAME, TWO_BLOCK_NAME)
MLP_TENSORS = ("gate_proj", "up_proj", "down_proj")

torch.set_num_threads(1)


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def base_weights():
    return load_file(str(bundled_pair_paths()[0] / WEIGHTS))


def test_named_twins_are_listed_with_their_sites():
    assert set(NAMED) <= set(twin_names())
    assert (head_twin_name(), kv_twin_name(), two_block_twin_name()) == NAMED
    assert head_twin_site() == HEAD_TWIN_SITE == (4, 1)
    assert kv_twin_site() == KV_TWIN_SITE == (3, 0)
    assert two_block_layers() == TWO_BLOCK_LAYERS == (2, 5)
    r = twin_recipe(HEAD_NAME)
    assert r["tensor"] == "model.layers.4.self_attn.q_proj.weight" and r["rows"] == [32, 64]
    r = twin_recipe(KV_NAME)
    assert r["tensor"] == "model.layers.3.self_attn.v_proj.weight" and r["rows"] == [0, 32]
    assert twin_recipe("mlp_layer4")["layer"] == 4  # the one-MLP twins answer to their names too


@pytest.mark.parametrize(
    "name, path_fn, tensor, head",
    [
        (HEAD_NAME, head_twin_path, "model.layers.4.self_attn.q_proj.weight", 1),
        (KV_NAME, kv_twin_path, "model.layers.3.self_attn.v_proj.weight", 0),
    ],
)
def test_head_twins_differ_from_base_only_in_the_planted_rows(name, path_fn, tensor, head, base_weights, tmp_path):
    path = path_fn(cache_dir=tmp_path)
    assert path == twin_path(name, cache_dir=tmp_path)
    assert "llama" not in str(path).lower()
    twin = load_file(str(path / WEIGHTS))
    assert _differing(base_weights, twin) == {tensor}  # tensor by tensor
    new, old = twin[tensor], base_weights[tensor]
    rows = {i for i in range(new.shape[0]) if not torch.equal(new[i], old[i])}  # row by row
    planted = set(range(head * D_HEAD, (head + 1) * D_HEAD))
    assert rows <= planted, sorted(rows - planted)
    assert len(rows) >= D_HEAD // 2  # the head really was tuned
    # the delta stores the whole tensor, equal to base outside the planted rows
    delta = load_file(str(organisms_dir() / "twins" / f"{name}.safetensors"))
    assert set(delta) == {tensor} and delta[tensor].shape == old.shape
    outside = [i for i in range(old.shape[0]) if i not in planted]
    assert torch.equal(delta[tensor][outside], old[outside])
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (path / f).read_bytes() == (bundled_pair_paths()[0] / f).read_bytes()


def test_two_block_twin_differs_from_base_only_in_its_two_mlps(base_weights, tmp_path):
    twin = load_file(str(two_block_twin_path(cache_dir=tmp_path) / WEIGHTS))
    expected = {f"model.layers.{layer}.mlp.{t}.weight" for layer in (2, 5) for t in MLP_TENSORS}
    assert _differing(base_weights, twin) == expected


def test_materialised_twin_is_deterministic(tmp_path):
    a = head_twin_path(cache_dir=tmp_path / "a")
    b = head_twin_path(cache_dir=tmp_path / "b")
    assert (a / WEIGHTS).read_bytes() == (b / WEIGHTS).read_bytes()


@pytest.mark.parametrize("name", NAMED)
def test_named_twin_metrics_show_a_significant_gain(name):
    m = bundled_metrics()[f"twin_{name}"]
    lo, hi = m["gain_ci95"]
    assert 0 < lo <= m["mean_gain"] <= hi
    assert m["planted"]["name"] == name
    assert m["frac_pairs_positive_gain"] > 0.5
    assert len(m["gain_first16_pairs"]) == 16


@pytest.fixture(scope="module")
def first_pairs():
    from alignment_probe.data import load_pairs

    pairs, _ = load_pairs(bundled_pairs_path())
    return pairs[:16]


def _scored(name, first_pairs):
    from alignment_probe.pair import load_twins
    from alignment_probe.tokens import sample_and_tokenize

    pair = load_twins(bundled_pair_paths()[0], twin_path(name))
    tokenized = sample_and_tokenize(first_pairs, pair.tokenizer, max_length=None)
    assert [t.pair_id for t in tokenized] == sorted(p.pair_id for p in first_pairs)
    return pair, tokenized


@pytest.mark.parametrize("name", NAMED)
def test_stored_gains_agree_with_the_toolkit_scoring(name, first_pairs):
    from alignment_probe.scoring import score_pairs

    pair, tokenized = _scored(name, first_pairs)
    gain = score_pairs(pair, tokenized).sort_values("pair_id").gain.to_numpy()
    stored = np.array(bundled_metrics()[f"twin_{name}"]["gain_first16_pairs"])
    np.testing.assert_allclose(gain, stored, rtol=1e-3, atol=2e-3)
    assert gain.mean() > 0


def _sweep(name, first_pairs, hooks):
    from alignment_probe.engine import make_engine
    from alignment_probe.experiments.patching import layer_sweep
    from alignment_probe.scoring import score_pairs

    pair, tokenized = _scored(name, first_pairs[:8])
    assert pair.n_layers == N_LAYERS
    specs = layer_sweep("patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers), hooks=hooks)
    effects = make_engine("fast").run(pair, tokenized, specs)
    gain = score_pairs(pair, tokenized).gain.mean()
    assert gain > 0
    return effects, effects.groupby(["hook", "layer"]).effect.mean(), gain


def test_mlp_patching_finds_nothing_below_the_first_planted_block(first_pairs):
    """Known answer for the existing engine: in the two-block twin every MLP below layer 2 is base's, and so
    is everything feeding it, so patching its output (tuned → base) changes nothing, exactly."""
    effects, mean, gain = _sweep(TWO_BLOCK_NAME, first_pairs, ("mlp_out", "resid_post", "attn_out"))
    first, second = TWO_BLOCK_LAYERS
    mlp = mean["mlp_out"]
    below = effects[(effects.hook == "mlp_out") & (effects.layer < first)]
    assert len(below) and (below.effect == 0).all()  # every pair, not just the mean
    assert (effects[(effects.hook == "attn_out") & (effects.layer <= first)].effect == 0).all()
    assert mlp[first] > 0 and mlp[second] > 0  # each planted block alone moves base toward the twin
    assert mlp[second] > 0.5 * gain
    # the residual stream: nothing before the first block; the first block's share up to the second; all after
    resid = mean["resid_post"]
    assert (resid[resid.index < first] == 0).all()
    for layer in range(first, second):
        assert resid[layer] == pytest.approx(mlp[first], rel=1e-3)
    for layer in range(second, N_LAYERS):
        assert resid[layer] == pytest.approx(gain, rel=1e-3)


@pytest.mark.parametrize("name, layer", [(HEAD_NAME, HEAD_TWIN_SITE[0]), (KV_NAME, KV_TWIN_SITE[0])])
def test_head_twins_localise_to_their_layers_attention(name, layer, first_pairs):
    """Known answer at layer level (head-level patching is tested elsewhere): nothing below the planted layer
    carries any effect, and that layer's attention output carries the whole gain."""
    effects, mean, gain = _sweep(name, first_pairs, ("attn_out", "mlp_out", "resid_post"))
    assert (effects[effects.layer < layer].effect == 0).all()
    assert (effects[(effects.hook == "mlp_out") & (effects.layer < layer)].effect == 0).all()
    assert mean["attn_out"][layer] == pytest.approx(gain, rel=1e-3)
    for later in range(layer, N_LAYERS):
        assert mean["resid_post"][later] == pytest.approx(gain, rel=1e-3)
