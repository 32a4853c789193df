"""E9 per-token maps: the long table's log-probs against Hugging Face's, its sums against the per-pair effects,
both engines, and the run directory that keeps it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BUNDLED_PAIRS
from transformers import AutoModelForCausalLM

import alignment_probe as ap
from alignment_probe.engine import make_engine
from alignment_probe.engine.fast import FastEngine
from alignment_probe.experiments import token_map
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return list(ap.load_pairs(BUNDLED_PAIRS, n=5, seed=2, tokenizer=tiny_pair.tokenizer, max_length=72))


@pytest.fixture(scope="module")
def conditions(tiny_pair):
    cfg = SuiteConfig(experiments=("token_map",), n_boot=200)
    return cfg, token_map.token_map_specs(
        Plan(cfg=cfg, n_layers=tiny_pair.n_layers, d_model=tiny_pair.d_model, selected=("token_map",))
    )


@torch.no_grad()
def hf_token_logprobs(path, tokenized) -> dict[tuple[int, str], np.ndarray]:
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = {}
    for t in tokenized:
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            logp = model(ids).logits[0].double().log_softmax(-1)
            out[(t.pair_id, side)] = np.asarray(
                [
                    float(logp[p - 1, seq.completion_ids[p - seq.completion_start]])
                    for p in range(seq.completion_start, seq.length)
                ]
            )
    return out


def test_every_condition_maps_e1_and_the_transplants(tiny_pair, conditions):
    _, chosen = conditions
    keys = {(s.key.hook, s.key.layer, s.key.param) for s in chosen}
    n = tiny_pair.n_layers
    assert {(h, a) for h, a, _ in keys if h == "resid_post"} == {("resid_post", a) for a in range(n)}
    assert {(a, w) for h, a, w in keys if h == "blocks"} == {(a, 1.0) for a in range(n)} | {(0, float(n))}


def test_clean_and_per_token_gain_equal_hugging_face(tiny, tiny_pair, pairs, conditions):
    _, chosen = conditions
    table = FastEngine().run_tokens(tiny_pair, pairs, chosen)
    base, tuned = hf_token_logprobs(tiny.base, pairs), hf_token_logprobs(tiny.tuned, pairs)
    every = table[(table.hook == "blocks") & (table.param == tiny_pair.n_layers)]  # the tuned model itself
    for (pid, side), g in every.groupby(["pair_id", "side"]):
        g = g.sort_values("position")
        np.testing.assert_allclose(g.clean_logp, base[(pid, side)], atol=1e-4)
        np.testing.assert_allclose(g.patched_logp, tuned[(pid, side)], atol=1e-4)
        np.testing.assert_allclose(g.effect, tuned[(pid, side)] - base[(pid, side)], atol=2e-4)
        assert list(g.token_id) == list(next(t for t in pairs if t.pair_id == pid).completion_ids(side))


@pytest.mark.parametrize("share", [True, False])
def test_per_token_effects_add_up_to_the_pair_effects(tiny_pair, pairs, conditions, share):
    _, chosen = conditions
    engine = FastEngine(share_prompts=share)
    tokens, effects = engine.run_tokens(tiny_pair, pairs, chosen), engine.run(tiny_pair, pairs, chosen)
    signed = tokens.effect * np.where(tokens.side == "chosen", 1.0, -1.0)
    sums = signed.groupby([tokens.hook, tokens.layer, tokens.param, tokens.pair_id], dropna=False).sum()
    pair = effects.set_index(["hook", "layer", "param", "pair_id"]).effect
    np.testing.assert_allclose(sums.sort_index().to_numpy(), pair.sort_index().to_numpy(), atol=1e-9)


def test_both_engines_give_the_same_per_token_table(tiny_pair, pairs, conditions):
    _, chosen = conditions
    fast = make_engine("fast").run_tokens(tiny_pair, pairs, chosen)
    ref = make_engine("reference").run_tokens(tiny_pair, pairs, chosen)
    assert len(fast) == len(ref)
    key = ["hook", "layer", "param", "pair_id", "side", "position"]
    assert fast[key].equals(ref[key])
    np.testing.assert_allclose(fast.effect, ref.effect, atol=1e-4)


def test_the_summary_splits_each_effect_by_position(tiny_pair, pairs, conditions):
    cfg, chosen = conditions
    engine = FastEngine()
    tokens = engine.run_tokens(tiny_pair, pairs, chosen)
    effects = engine.run(tiny_pair, pairs, chosen)
    entry = token_map.summarize_token_map(
        Tables(
            effects,
            ap.score(tiny_pair, pairs),
            {},
            cfg,
            tiny_pair.n_layers,
            tiny_pair.d_model,
            selected=("token_map",),
            tokens=tokens,
        )
    )["token_map"]
    assert len(entry["conditions"]) == len(chosen)
    for c in entry["conditions"]:
        rows = effects[
            (effects.hook == c["hook"])
            & (effects.layer == c["layer"])
            & ((effects.param == c["width"]) if c["width"] is not None else effects.param.isna())
        ]
        assert c["mean"] == pytest.approx(rows.effect.mean(), abs=1e-9)
        bins = {
            b["first"]: b
            for b in entry["by_bin"]
            if (b["hook"], b["layer"], b["width"]) == (c["hook"], c["layer"], c["width"])
        }
        assert bins[8]["mean"] + bins["rest"]["mean"] == pytest.approx(c["mean"], abs=1e-9)
        assert bins[1]["mean"] == pytest.approx(
            next(
                p["mean"]
                for p in entry["by_position"]
                if p["position"] == 0 and (p["hook"], p["layer"], p["width"]) == (c["hook"], c["layer"], c["width"])
            ),
            abs=1e-12,
        )
        positions = [
            p
            for p in entry["by_position"]
            if (p["hook"], p["layer"], p["width"]) == (c["hook"], c["layer"], c["width"])
        ]
        longest = int(tokens.position.max()) + 1
        if longest <= token_map.MAX_POSITION:  # every position shown: their contributions add up to the effect
            assert sum(p["mean"] for p in positions) == pytest.approx(c["mean"], abs=1e-9)
        assert all(p["ci_low"] <= p["mean"] <= p["ci_high"] for p in positions)


def test_a_run_keeps_the_long_table_and_regenerates_its_summary(tiny, tmp_path):
    out = tmp_path / "run"
    run = ap.run_suite(
        out,
        base=tiny.base,
        tuned=tiny.tuned,
        data=BUNDLED_PAIRS,
        n_pairs=4,
        max_length=64,
        experiments=("patch_tuned_to_base", "token_map"),
        extra_hooks=(),
        n_boot=100,
        progress=False,
    )
    assert (out / "token_effects.parquet").is_file() and len(run.tokens)
    assert sorted(p.name for p in (out / "parts").glob("stage1-tokens-*.parquet"))
    e1 = run.effects[(run.effects.experiment == "patch_tuned_to_base")].set_index(["layer", "pair_id"]).effect
    tm = run.effects[(run.effects.experiment == "token_map") & (run.effects.hook == "resid_post")]
    np.testing.assert_allclose(tm.set_index(["layer", "pair_id"]).effect.sort_index(), e1.sort_index(), atol=1e-9)
    before = (out / "summary.json").read_bytes()
    (out / "summary.json").unlink()
    ap.load_run(out).regenerate()
    assert (out / "summary.json").read_bytes() == before
    assert "token_map" in run.summary["experiments"]
