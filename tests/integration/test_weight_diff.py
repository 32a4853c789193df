"""E0 weight_diff against answers known in advance: a rank-one change planted in one module is found there with
its exact norm, singular value and stable rank 1, every other module exactly 0; a twin given as a LoRA adapter
read from the adapter (ΔW = scale·B·A, not merged) equals the merged weights' difference; in a run, E0 needs no
pairs' forwards and its summary and figure come from the run's tables."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import _corpus

from alignment_probe.experiments import weight_diff as E0
from alignment_probe.pair import load_twins
from tests.helpers.checkpoints import llama_config, random_llama, save_checkpoint, train_tokenizer


@pytest.fixture(scope="module")
def rank_one_twin(tmp_path_factory):
    """Base and a twin whose only change is u vᵀ added to layer 1's v_proj (a known ΔW)."""
    root = tmp_path_factory.mktemp("e0")
    tok = train_tokenizer(_corpus(100), vocab_size=300)
    base = random_llama(llama_config(tok, num_hidden_layers=3), seed=11)
    twin = random_llama(llama_config(tok, num_hidden_layers=3), seed=11)
    gen = torch.Generator().manual_seed(3)
    w = twin.model.layers[1].self_attn.v_proj.weight  # [out = kv_heads·d_head, in = d_model]
    u, v = torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)
    with torch.no_grad():
        w.add_(torch.outer(u, v))
    expected = float(u.norm() * v.norm())  # ‖u vᵀ‖_F = σ₁ = ‖u‖‖v‖
    return (save_checkpoint(base, tok, root / "base"), save_checkpoint(twin, tok, root / "twin"), expected)


def test_planted_rank_one_change_is_found_exactly(rank_one_twin):
    base, twin, expected = rank_one_twin
    record = E0.weight_diff(load_twins(base, twin))
    assert record["source"] == "weights"
    changed = [r for r in record["by_module"] if r["frob"] > 0]
    assert [(r["layer"], r["module"]) for r in changed] == [(1, "v")]
    (row,) = changed
    assert row["frob"] == pytest.approx(expected, rel=1e-5)
    assert row["top_singular_values"][0] == pytest.approx(expected, rel=1e-5)
    assert row["stable_rank"] == pytest.approx(1.0, abs=1e-4)
    assert row["share"] == 1.0
    assert sum(r["share"] for r in record["by_module"]) == pytest.approx(1.0)
    # every module of every block is listed, embedding and unembedding apart (layer None)
    modules = {(r["layer"], r["module"]) for r in record["by_module"]}
    assert {(None, "embed"), (None, "unembed"), (None, "ln_final")} <= modules
    assert {(2, m) for m in ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out", "ln1", "ln2")} <= modules
    json.dumps(record)


def test_lora_adapter_read_without_merging_equals_the_merged_difference(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        layers_to_transform=[1, 3],
        layers_pattern="layers",
        init_lora_weights=False,
    )
    get_peft_model(model, cfg).save_pretrained(tmp_path / "lora")
    twins = load_twins(tiny.base, tmp_path / "lora", cache_dir=tmp_path / "cache")
    assert twins.tuned_adapter == str((tmp_path / "lora").resolve())
    from_adapter = E0.weight_diff(twins)
    merged = E0.weight_diff(twins, use_adapter=False)
    assert from_adapter["source"] == "adapter" and merged["source"] == "weights"
    a = {(r["layer"], r["module"]): r for r in from_adapter["by_module"]}
    m = {(r["layer"], r["module"]): r for r in merged["by_module"]}
    assert a.keys() == m.keys()
    changed = {k for k, r in m.items() if r["frob"] > 1e-6}
    assert changed == {(layer, mod) for layer in (1, 3) for mod in ("q", "v", "o", "mlp_gate", "mlp_out")}
    for key, row in a.items():
        assert row["frob"] == pytest.approx(m[key]["frob"], rel=1e-4, abs=1e-6), key
        assert row["share"] == pytest.approx(m[key]["share"], rel=1e-4, abs=1e-9), key
        if key in changed:
            assert row["top_singular_values"] == pytest.approx(m[key]["top_singular_values"], rel=1e-4)
            assert row["stable_rank"] == pytest.approx(m[key]["stable_rank"], rel=1e-4)
            assert len(row["top_singular_values"]) <= 4  # rank ≤ r = 4


def test_weight_diff_runs_in_the_suite_and_draws(tiny, tmp_path, capsys):
    from conftest import BUNDLED_PAIRS

    from alignment_probe.cli import main
    from alignment_probe.rundir import load_run

    out = tmp_path / "run"
    rc = main(
        [
            "run",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            "--data",
            str(BUNDLED_PAIRS),
            "--n-pairs",
            "4",
            "--n-boot",
            "50",
            "--experiments",
            "weight_diff,window_transplant",
            "--out",
            str(out),
        ]
    )
    assert rc in (0, None)
    run = load_run(out)
    entry = run.summary["experiments"]["weight_diff"]
    assert {"layer", "module", "frob", "rel", "share", "stable_rank"} <= set(entry["by_module"][0])
    assert len(entry["by_block"]) == run.summary["n_layers"]
    # the tiny tuned twin perturbs every parameter: every module changed, the shares add up to 1
    assert entry["n_changed_modules"] == len(entry["by_module"])
    assert math.isclose(sum(r["share"] for r in entry["by_module"]), 1.0, rel_tol=1e-9)
    from alignment_probe.report import figures as F

    fig = F.all_figures(run.summary)["weight_diff"]
    assert len(fig.data) >= 9  # one bar trace per module kind, and the transplant curve below
    assert "Where the weights changed" in (out / "report.html").read_text()
