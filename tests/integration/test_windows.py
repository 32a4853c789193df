"""E8 window transplants and reverts on tiny twins: against hybrid checkpoints assembled in Hugging Face, the
identities that hold by construction, planted twins with a known answer, and both engines."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import BUNDLED_PAIRS
from transformers import AutoModelForCausalLM

import alignment_probe as ap
from alignment_probe.effects import RowKey
from alignment_probe.engine import make_engine
from alignment_probe.engine.fast import FastEngine
from alignment_probe.engine.hybrid import window_parts
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import windows
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.interventions import Transplant
from tests.helpers.checkpoints import planted_mlp_checkpoints

N_LAYERS = 4


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return list(ap.load_pairs(BUNDLED_PAIRS, n=4, seed=1, tokenizer=tiny_pair.tokenizer, max_length=64))


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    """Twins of the tiny base tuned in one block's MLP only (block 1), and in two (blocks 1 and 3)."""
    one, two = planted_mlp_checkpoints(tiny.base, tmp_path_factory.mktemp("planted-windows"), [(1, 11), (3, 12)])
    return {"one": ap.load_twins(tiny.base, one), "two": ap.load_twins(tiny.base, two)}


def specs(name: str, starts_widths, *, target="base", source="tuned") -> list[PatchSpec]:
    return [
        PatchSpec(RowKey(name, target, source, "blocks", "all", "both", a, float(w)), Transplant(w))
        for a, w in starts_widths
    ]


ALL_WINDOWS = [(a, w) for w in (1, 2, 3, 4) for a in range(N_LAYERS - w + 1)]


def hf_hybrid(inside, outside, window: range):
    """A Hugging Face model with ``outside``'s weights except the window's (its layers, the embedding with block 0,
    the final norm and unembedding with the last block), which come from ``inside``."""
    hybrid = copy.deepcopy(outside)
    theirs = inside.state_dict()
    prefixes = [f"model.layers.{i}." for i in window]
    if window.start == 0:
        prefixes.append("model.embed_tokens.")
    if window.stop == N_LAYERS:
        prefixes += ["model.norm.", "lm_head."]
    with torch.no_grad():
        for name, p in hybrid.state_dict().items():
            if any(name.startswith(x) for x in prefixes):
                p.copy_(theirs[name])
    return hybrid


@torch.no_grad()
def hf_delta(model, tokenized) -> np.ndarray:
    out = []
    for t in tokenized:
        lp = {}
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            logp = model(ids).logits[0].double().log_softmax(-1)
            lp[side] = sum(
                float(logp[p - 1, seq.completion_ids[p - seq.completion_start]])
                for p in range(seq.completion_start, seq.length)
            )
        out.append(lp["chosen"] - lp["rejected"])
    return np.asarray(out)


def test_the_window_parts_follow_the_blocks_they_cover():
    assert window_parts(4, range(0, 1)) == ["embed", "pos_embed", "blocks.0"]
    assert window_parts(4, range(1, 3)) == ["blocks.1", "blocks.2"]
    assert window_parts(4, range(3, 4)) == ["blocks.3", "ln_final", "unembed"]
    with pytest.raises(ValueError, match="outside the model"):
        window_parts(4, range(3, 5))


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_transplants_and_reverts_equal_hybrid_checkpoints_built_in_hugging_face(tiny, tiny_pair, pairs, engine):
    base = AutoModelForCausalLM.from_pretrained(tiny.base).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tiny.tuned).eval()
    chosen = [(0, 1), (1, 2), (3, 1), (0, 4)]
    rows = make_engine(engine).run(
        tiny_pair,
        pairs,
        specs("window_transplant", chosen) + specs("window_revert", chosen, target="tuned", source="base"),
    )
    for a, w in chosen:
        window = range(a, a + w)
        for name, inside, outside in (("window_transplant", tuned, base), ("window_revert", base, tuned)):
            got = rows[(rows.experiment == name) & (rows.layer == a) & (rows.param == w)].sort_values("pair_id")
            expected = hf_delta(hf_hybrid(inside, outside, window), pairs)
            np.testing.assert_allclose(
                got.patched_delta_logp.to_numpy(), expected, atol=2e-4, err_msg=f"{name} {a},{w}"
            )


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_transplant_of_every_block_is_the_tuned_model_and_base_into_base_is_nothing(tiny, tiny_pair, pairs, engine):
    scores = ap.score(tiny_pair, pairs).set_index("pair_id").sort_index()
    every = (
        make_engine(engine).run(tiny_pair, pairs, specs("window_transplant", [(0, N_LAYERS)])).sort_values("pair_id")
    )
    np.testing.assert_allclose(
        every.effect.to_numpy(), scores.gain.to_numpy(), rtol=0, atol=1e-9 if engine == "fast" else 2e-4
    )
    same = ap.load_twins(tiny.base, tiny.base)
    rows = make_engine(engine).run(same, pairs, specs("window_transplant", ALL_WINDOWS))
    assert (rows.effect == 0).all()


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_planted_block_carries_the_whole_gain_and_windows_without_it_carry_none(planted, pairs, engine):
    twins = planted["one"]
    gain = ap.score(twins, pairs).set_index("pair_id").sort_index().gain.to_numpy()
    rows = make_engine(engine).run(
        twins,
        pairs,
        specs("window_transplant", ALL_WINDOWS) + specs("window_revert", ALL_WINDOWS, target="tuned", source="base"),
    )
    for (name, a, w), group in rows.groupby(["experiment", "layer", "param"]):
        effect = group.sort_values("pair_id").effect.to_numpy()
        carried = effect if name == "window_transplant" else -effect
        expected = gain if a <= 1 < a + w else np.zeros_like(gain)
        # Exact for the fast engine (a hybrid with one model's weights is that model's clean run); the reference
        # engine runs every hybrid, and a hybrid with the same modules computes the same numbers.
        np.testing.assert_allclose(
            carried, expected, rtol=0, atol=1e-9 if engine == "fast" else 1e-5, err_msg=f"{name} start {a} width {w}"
        )


def test_two_planted_blocks_need_a_window_over_both(planted, pairs):
    twins = planted["two"]
    gain = ap.score(twins, pairs).set_index("pair_id").sort_index().gain.to_numpy()
    rows = make_engine("fast").run(twins, pairs, specs("window_transplant", ALL_WINDOWS))
    effect = {
        (int(a), int(w)): g.sort_values("pair_id").effect.to_numpy() for (a, w), g in rows.groupby(["layer", "param"])
    }
    np.testing.assert_array_equal(effect[(0, 1)], 0)  # neither planted block
    np.testing.assert_array_equal(effect[(2, 1)], 0)
    np.testing.assert_array_equal(effect[(1, 3)], gain)  # blocks 1–3: both
    assert np.abs(effect[(1, 1)]).max() > 1e-3 and np.abs(effect[(3, 1)]).max() > 1e-3  # one each: part of it
    assert not np.allclose(effect[(1, 1)], gain) and not np.allclose(effect[(3, 1)], gain)


def test_prompt_sharing_changes_no_number(tiny_pair, pairs):
    chosen = specs("window_transplant", ALL_WINDOWS) + specs(
        "window_revert", ALL_WINDOWS, target="tuned", source="base"
    )
    shared = FastEngine(share_prompts=True).run(tiny_pair, pairs, chosen)
    full = FastEngine(share_prompts=False).run(tiny_pair, pairs, chosen)
    np.testing.assert_allclose(shared.effect, full.effect, atol=1e-5)


def test_the_summary_reads_necessity_as_positive_and_checks_every_block(tiny_pair, pairs):
    cfg = SuiteConfig(experiments=("window_transplant", "window_revert"), n_boot=100)
    plan = Plan(
        cfg=cfg, n_layers=tiny_pair.n_layers, d_model=tiny_pair.d_model, selected=("window_transplant", "window_revert")
    )
    chosen = windows.window_specs(plan)
    assert {(s.key.layer, int(s.key.param)) for s in chosen if s.key.experiment == "window_revert"} == {
        (a, w) for w in (1, 2) for a in range(N_LAYERS - w + 1)
    }
    rows = make_engine("fast").run(tiny_pair, pairs, chosen)
    scores = ap.score(tiny_pair, pairs)
    summary = windows.summarize_windows(
        Tables(rows, scores, {}, cfg, tiny_pair.n_layers, tiny_pair.d_model, selected=plan.selected)
    )
    revert = summary["window_revert"]
    for r in revert["by_window"]:
        own = rows[(rows.experiment == "window_revert") & (rows.layer == r["start"]) & (rows.param == r["width"])]
        assert r["mean"] == pytest.approx(-own.effect.mean())
    assert [r["layer"] for r in revert["per_layer"]] == list(range(N_LAYERS))
    every = summary["window_transplant"]["every_block"]
    assert every["max_abs_error"] < 1e-9 and every["mean"] == pytest.approx(scores.gain.mean())


def test_a_transplant_spec_must_say_its_width_and_blocks():
    with pytest.raises(ValueError, match="Transplant goes with hook 'blocks'"):
        PatchSpec(RowKey("window_transplant", "base", "tuned", "resid_pre", "all", "both", 1, 1.0), Transplant(1))
    with pytest.raises(ValueError, match="param = its width"):
        PatchSpec(RowKey("window_transplant", "base", "tuned", "blocks", "all", "both", 1, 2.0), Transplant(1))
    with pytest.raises(ValueError, match="whole number"):
        Transplant(0)


def test_default_widths_are_one_in_the_default_suite_and_one_and_two_by_name():
    """Issue 12: the default run includes w = 1 windows (its time budget); asked for by name, w = 1 and 2."""
    from alignment_probe.experiments.suite import SuiteConfig

    assert SuiteConfig().window_widths == (1,)
    assert SuiteConfig(experiments=("patch_tuned_to_base", "window_transplant")).window_widths == (1, 2)
    assert SuiteConfig(window_widths=(1, 2, 4)).window_widths == (1, 2, 4)
    assert SuiteConfig().to_dict()["window_widths"] == (1,)  # the manifest records the widths used
