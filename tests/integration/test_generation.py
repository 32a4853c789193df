"""E12 generation under intervention against known answers: on a twin that differs only in block 2's MLP, base
patched with tuned's mlp_out at block 2 decodes exactly tuned's tokens, patched below it exactly base's, and the
block-2 transplant equals tuned; a lockstep patch with key/value caches equals decoding without caches, every
prefix recomputed; sampling is deterministic for a seed; the CLI writes the files its interface names and refuses
a bad condition before any weights load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BUNDLED_PAIRS

from alignment_probe import api
from alignment_probe.errors import ConfigError
from alignment_probe.generation import generate, parse_condition, parse_conditions


@pytest.fixture(scope="module")
def prompts(planted):
    return api.load_pairs(BUNDLED_PAIRS, n=3, seed=0, tokenizer=planted.tokenizer, max_length=96)


def _by(rows):
    return {(r["pair_id"], r["condition"]): r["token_ids"] for r in rows}


def test_planted_mlp_twin_known_answers(planted, prompts):
    conds = ["base", "tuned", "patch:mlp_out@2", "patch:mlp_out@1", "patch:mlp_out@0", "window@2", "window@0:2"]
    rows = generate(planted, prompts, conds, max_new_tokens=12)
    got = _by(rows)
    assert any(got[(p.pair_id, "base")] != got[(p.pair_id, "tuned")] for p in prompts)  # the twin is different
    for p in prompts:
        tuned, base = got[(p.pair_id, "tuned")], got[(p.pair_id, "base")]
        assert got[(p.pair_id, "patch:mlp_out@2")] == tuned
        assert got[(p.pair_id, "patch:mlp_out@1")] == base
        assert got[(p.pair_id, "patch:mlp_out@0")] == base
        assert got[(p.pair_id, "window@2")] == tuned
        assert got[(p.pair_id, "window@0:2")] == base  # blocks 0–1 and the embedding are the base's own
    assert {r["condition"] for r in rows} == set(conds)
    assert all(isinstance(r["text"], str) and r["text"] == planted.tokenizer.decode(r["token_ids"]) for r in rows)


@torch.inference_mode()
def _patched_greedy_without_cache(twins, prompt, hook, max_new):
    """The definition, recomputed from scratch at every step: tuned runs on the whole prefix, base runs on it with
    the hook's activation at every position replaced by tuned's."""
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        x = torch.tensor([ids])
        _, cache = twins.tuned.run_with_cache(x, names_filter=hook)
        logits = twins.base.run_with_hooks(x, fwd_hooks=[(hook, lambda a, hook: cache[hook.name])])
        token = int(logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token == twins.tokenizer.eos_token_id:
            break
    return out


def test_lockstep_patch_with_caches_equals_recomputing_every_prefix(tiny_pair, prompts):
    """On a twin that differs everywhere, a mid-depth resid_post patch gives text that is neither model's; the
    cached lockstep decoding must equal the uncached definition token for token."""
    pairs = api.load_pairs(BUNDLED_PAIRS, n=2, seed=1, tokenizer=tiny_pair.tokenizer, max_length=64)
    rows = generate(tiny_pair, pairs, ["patch:resid_post@1", "patch:attn_out@2"], max_new_tokens=10)
    got = _by(rows)
    for p in pairs:
        for cond, hook in (
            ("patch:resid_post@1", "blocks.1.hook_resid_post"),
            ("patch:attn_out@2", "blocks.2.hook_attn_out"),
        ):
            assert got[(p.pair_id, cond)] == _patched_greedy_without_cache(tiny_pair, p.prompt_ids, hook, 10)


def test_sampling_is_seeded_and_shared_across_conditions(planted, prompts):
    a = generate(planted, prompts[:2], ["base", "patch:mlp_out@1"], max_new_tokens=10, temperature=1.0, seed=3)
    b = generate(planted, prompts[:2], ["base", "patch:mlp_out@1"], max_new_tokens=10, temperature=1.0, seed=3)
    c = generate(planted, prompts[:2], ["base"], max_new_tokens=10, temperature=1.0, seed=4)
    assert a == b
    # a patch below the planted block leaves the distribution the base's: with shared draws, the same tokens
    assert all(_by(a)[(p.pair_id, "base")] == _by(a)[(p.pair_id, "patch:mlp_out@1")] for p in prompts[:2])
    assert [r["token_ids"] for r in c] != [r["token_ids"] for r in a if r["condition"] == "base"]


def test_condition_parsing_refuses_with_the_syntax():
    assert parse_condition("window@3:2").width == 2
    assert parse_condition("patch:mlp_out@4", 8).layer == 4
    assert [c.text for c in parse_conditions("base, tuned,base")] == ["base", "tuned"]
    for bad in ("patch:mlp@2", "window@9", "patch:resid_post@8", "steering@2", ""):
        with pytest.raises(ConfigError, match="--conditions"):
            parse_conditions(bad, 8)


def test_generate_cli_writes_jsonl_and_html(tiny, tmp_path, capsys):
    from alignment_probe.cli import main

    out = tmp_path / "gen"
    rc = main(
        [
            "generate",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            "--data",
            str(BUNDLED_PAIRS),
            "--n-pairs",
            "2",
            "--conditions",
            "base,tuned,patch:mlp_out@2",
            "--max-new-tokens",
            "6",
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3
    assert all({"pair_id", "condition", "text", "token_ids"} <= set(x) for x in lines)
    page = (out / "generations.html").read_text()
    assert "patch:mlp_out@2" in page and "<table" in page
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["conditions"] == ["base", "tuned", "patch:mlp_out@2"]
    # a condition outside the model is refused (exit 2) naming the option, before any weights load
    rc = main(
        [
            "generate",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            "--data",
            str(BUNDLED_PAIRS),
            "--conditions",
            "patch:mlp_out@99",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert rc == 2 and "--conditions" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_ap_generate_shows_side_by_side(planted, prompts):
    gens = api.generate(planted, prompts[:1], conditions=["base", "tuned"], max_new_tokens=5)
    html = gens._repr_html_()
    assert "<table" in html and "tuned" in html
    frame = gens.to_frame()
    assert list(frame.columns)[:4] == ["pair_id", "condition", "text", "token_ids"] and len(frame) == 2


def test_steer_on_a_bias_twin_decodes_the_twin(tmp_path):
    """A twin that is its base plus a vector u in the last block's MLP output bias has h_T − h_B = u at every
    position of that block's resid_post, so E11's per-class shift there is u in every class, and the base steered
    with a = 1 at the predicting positions (the last prompt token and every generated one) has the twin's
    next-token distributions: it decodes exactly the twin's tokens (nothing after the last block mixes positions)."""
    from alignment_probe.data import load_pairs
    from alignment_probe.experiments.steering import fit_steer_shifts
    from alignment_probe.pair import load_twins
    from tests.helpers.checkpoints import gpt2_bias_twin, save_checkpoint, train_tokenizer

    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs], vocab_size=320)
    base, twin = gpt2_bias_twin(tok, block=2, scale=2.0, n_positions=160)
    twins = load_twins(save_checkpoint(base, tok, tmp_path / "base"), save_checkpoint(twin, tok, tmp_path / "twin"))
    drawn = api.load_pairs(BUNDLED_PAIRS, n=6, seed=0, tokenizer=twins.tokenizer, max_length=96)
    prompts, fit = list(drawn[:2]), list(drawn[2:])
    shifts = fit_steer_shifts(twins, ["steer@2"], fit)
    assert set(shifts) == {2}
    rows = generate(twins, prompts, ["base", "tuned", "steer@2", "steer@2:0"], max_new_tokens=12, shifts=shifts)
    got = _by(rows)
    assert any(got[(p.pair_id, "base")] != got[(p.pair_id, "tuned")] for p in prompts)
    for p in prompts:
        assert got[(p.pair_id, "steer@2")] == got[(p.pair_id, "tuned")]
        assert got[(p.pair_id, "steer@2:0")] == got[(p.pair_id, "base")]  # a = 0 adds nothing
    with pytest.raises(ConfigError, match="steer"):
        generate(twins, prompts, ["steer@1"], max_new_tokens=2)  # no shift fitted at layer 1
