"""Tests of the project's model organisms (alignment_probe/organisms, data/organisms).

Fast (tiny builds, a handful of pairs) and offline: nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alignment_probe.organisms import (
    DEFAULT_DATA_DIR,
    PLANTED_LAYERS,
    bundled_metrics,
    bundled_pair_paths,
    bundled_pairs_path,
    planted_layers,
    planted_twin_path,
)
from alignment_probe.organisms.build import bootstrap_ci, build_named_twins, build_organisms, corpus
from alignment_probe.organisms.build.train import completion_logps, dpo_loss, score
from alignment_probe.organisms.twins import materialise_named_twin, materialise_twin

SMALL_NAMED = ("head_layer2_h1", "kv_layer1_g0", "mlp_layers1_3")  # the small build's named twins

WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
def test_corpus_is_deterministic_and_seeded():
    assert corpus.generate_dialogues(40, seed=3) == corpus.generate_dialogues(40, seed=3)
    assert corpus.generate_dialogues(40, seed=3) != corpus.generate_dialogues(40, seed=4)
    a = [p.to_json() for p in corpus.generate_pairs(40, seed=3)]
    assert a == [p.to_json() for p in corpus.generate_pairs(40, seed=3)]
    assert a != [p.to_json() for p in corpus.generate_pairs(40, seed=4)]


def test_dialogues_are_hh_format_with_variety():
    dialogues = corpus.generate_dialogues(600, seed=0)
    for d in dialogues:
        assert d.startswith("\n\nHuman: ")
        assert "\n\nAssistant: " in d
        prompt, completion = corpus.split_dialogue(d)
        assert prompt.endswith("\n\nAssistant:") and completion.startswith(" ")
    assert sum(d.count("\n\nHuman: ") > 1 for d in dialogues) > 60  # multi-turn happens
    rng = random.Random(0)
    reqs = [corpus.sample_request(rng) for _ in range(2000)]
    assert len({r.topic for r in reqs}) == len(corpus.BENIGN) + len(corpus.HARMFUL) + 1  # + science
    assert 0.3 < np.mean([r.harmful for r in reqs]) < 0.5
    assert len({r.core for r in reqs}) > 1000


def _check_pair(p: dict) -> None:
    assert p["prompt"].startswith("\n\nHuman: ")
    assert p["prompt"].endswith("\n\nAssistant:")
    assert p["chosen"].startswith(" ") and p["rejected"].startswith(" ")
    assert p["chosen"] != p["rejected"]
    assert p["chosen"].strip() and p["rejected"].strip()


def test_pairs_are_well_formed_and_splits_disjoint():
    train = corpus.generate_pairs(400, seed=0)
    heldout = corpus.generate_pairs(100, seed=0, heldout=True)
    for p in train + heldout:
        _check_pair(p.to_json())
    train_prompts = {p.prompt for p in train}
    assert len(train_prompts) == len(train)
    assert train_prompts.isdisjoint(p.prompt for p in heldout)
    # no held-out request occurs in any human turn of a training pair; held-out prompts end with one
    for p in train:
        assert not any(corpus.is_heldout(_strip_prefix(t)) for t in _human_turns(p.prompt))
    for p in heldout:
        assert corpus.is_heldout(_strip_prefix(_human_turns(p.prompt)[-1]))
    # chosen = helpful (benign) / polite refusal (harmful); rejected = a dispreferred behaviour
    for p in train:
        assert p.rejected_kind in (corpus.HARMFUL_REJECTED if p.harmful else corpus.BENIGN_REJECTED)
    assert {p.harmful for p in train} == {True, False}


def _human_turns(prompt: str) -> list[str]:
    return [t.split("\n\nAssistant:")[0] for t in prompt.split("\n\nHuman: ")[1:]]


def _strip_prefix(turn: str) -> str:
    """The core request of a human turn (follow-up turns may start with e.g. "Thanks! ")."""
    for prefix in corpus.FOLLOWUP_PREFIXES:
        if turn.startswith(prefix):
            return turn[len(prefix) :]
    return turn


# --------------------------------------------------------------------------------------------
# Small builds (seconds): determinism, layout, twins
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("organisms")
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        metrics = build_organisms(root / name, seed=seed, size="small", progress=False)
        out[name] = (root / name, metrics)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_small_build_layout(small_builds):
    out, metrics = small_builds["a"]
    org = out / "organisms"
    for name in ("base", "tuned"):
        for f in ("config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json"):
            assert (org / name / f).is_file()
    assert (out / "pairs" / "heldout.jsonl").is_file()
    assert (org / "metrics.json").is_file() and (out / "README.md").is_file()
    assert ".cache" in (out / ".gitignore").read_text()
    assert planted_layers(out) == (1, 2)
    assert json.loads((org / "metrics.json").read_text())["heldout_loss"] == metrics["heldout_loss"]
    for key in ("tuned", "twin_layer1", "twin_layer2", *(f"twin_{n}" for n in SMALL_NAMED)):
        assert set(metrics[key]) >= {"mean_gain", "gain_ci95"}
    from alignment_probe.organisms import head_twin_site, kv_twin_site, twin_names, two_block_layers

    assert twin_names(out) == ("mlp_layer1", "mlp_layer2", *sorted(SMALL_NAMED))
    assert (head_twin_site(out), kv_twin_site(out), two_block_layers(out)) == ((2, 1), (1, 0), (1, 3))
    assert metrics["tuned"]["mean_gain"] > 0  # even a few DPO steps move the tuned model the right way


def test_small_build_is_deterministic(small_builds):
    (a, ma), (b, mb), (c, _) = small_builds["a"], small_builds["b"], small_builds["c"]
    for rel in (
        "organisms/base/" + WEIGHTS,
        "organisms/tuned/" + WEIGHTS,
        "organisms/twins/mlp_layer1.safetensors",
        "organisms/twins/mlp_layer2.safetensors",
        *(f"organisms/twins/{n}.safetensors" for n in SMALL_NAMED),
    ):
        assert _same(_weights(a / rel), _weights(b / rel)), rel
        assert not _same(_weights(a / rel), _weights(c / rel)), rel
    for n in SMALL_NAMED:
        assert ma[f"twin_{n}"] == mb[f"twin_{n}"]
    for rel in ("pairs/heldout.jsonl", "organisms/base/tokenizer.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "pairs/heldout.jsonl").read_bytes() != (c / "pairs/heldout.jsonl").read_bytes()
    for key in ("heldout_loss", "tuned", "twin_layer1"):
        assert ma[key] == mb[key]


def test_cli_organism_build_runs_the_build_as_its_own_program(small_builds, tmp_path, monkeypatch, capsys):
    """`alignment-probe organism build` runs `python -m alignment_probe.organisms.build` in a child process (the
    runtime never imports the build): same seed, same organisms as the in-process build, and its summary line."""
    from alignment_probe.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the child computes with our thread count
    assert main(["organism", "build", "--size", "small", "--seed", "0", "--out", str(tmp_path)]) == 0
    a, metrics = small_builds["a"]
    for rel in ("organisms/base/" + WEIGHTS, "organisms/tuned/" + WEIGHTS, "pairs/heldout.jsonl"):
        assert (tmp_path / rel).read_bytes() == (a / rel).read_bytes(), rel
    out = capsys.readouterr().out
    assert f"tuned gain {metrics['tuned']['mean_gain']:+.2f}" in out and "metrics in" in out, out


def _assert_only_mlp_differs(base_file: Path, twin_file: Path, layer: int) -> None:
    base, twin = _weights(base_file), _weights(twin_file)
    assert base.keys() == twin.keys()
    prefix = f"model.layers.{layer}.mlp."
    differing = {k for k in base if not torch.equal(base[k], twin[k])}
    expected = {f"{prefix}{p}_proj.weight" for p in ("gate", "up", "down")}
    assert differing == expected, sorted(differing ^ expected)


def test_small_twins_differ_only_in_planted_mlp(small_builds, tmp_path):
    out, _ = small_builds["a"]
    for layer in (1, 2):
        path = materialise_twin(out / "organisms", layer, cache_dir=tmp_path)
        assert "llama" not in str(path).lower()
        _assert_only_mlp_differs(out / "organisms" / "base" / WEIGHTS, path / WEIGHTS, layer)
        again = materialise_twin(out / "organisms", layer, cache_dir=tmp_path / "other")
        assert (again / WEIGHTS).read_bytes() == (path / WEIGHTS).read_bytes()


def test_small_named_twins_differ_only_where_planted(small_builds, tmp_path):
    out, _ = small_builds["a"]
    org = out / "organisms"
    base = _weights(org / "base" / WEIGHTS)
    d_head = 32 // 4
    for name, tensor, head in (
        ("head_layer2_h1", "model.layers.2.self_attn.q_proj.weight", 1),
        ("kv_layer1_g0", "model.layers.1.self_attn.v_proj.weight", 0),
    ):
        twin = _weights(materialise_named_twin(org, name, cache_dir=tmp_path) / WEIGHTS)
        assert {k for k in base if not torch.equal(base[k], twin[k])} == {tensor}, name
        rows = {i for i in range(base[tensor].shape[0]) if not torch.equal(base[tensor][i], twin[tensor][i])}
        assert rows and rows <= set(range(head * d_head, (head + 1) * d_head)), (name, sorted(rows))
    twin = _weights(materialise_named_twin(org, "mlp_layers1_3", cache_dir=tmp_path) / WEIGHTS)
    assert {k for k in base if not torch.equal(base[k], twin[k])} == {
        f"model.layers.{layer}.mlp.{p}_proj.weight" for layer in (1, 3) for p in ("gate", "up", "down")
    }


def test_only_rebuilds_named_twins_bit_identically(small_builds, tmp_path):
    """``--only`` (named twins retrained on an existing build) gives the full build's bytes and leaves
    every other file alone."""
    import shutil

    src, metrics = small_builds["a"]
    out = tmp_path / "copy"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".cache"))
    twins = out / "organisms" / "twins"
    for n in SMALL_NAMED[:2]:
        (twins / f"{n}.safetensors").unlink()
    others = {
        p: p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.parent != twins and p.name not in ("metrics.json", "README.md")
    }
    merged = build_named_twins(out, list(SMALL_NAMED[:2]), seed=0, size="small", progress=False)
    for n in SMALL_NAMED:
        for ext in ("safetensors", "json"):
            assert (twins / f"{n}.{ext}").read_bytes() == (src / "organisms" / "twins" / f"{n}.{ext}").read_bytes()
    assert all(p.read_bytes() == b for p, b in others.items())
    assert list(merged) == list(metrics)  # same keys, same order
    for key in ("tuned", "twin_layer1", *(f"twin_{n}" for n in SMALL_NAMED)):
        assert merged[key] == metrics[key], key
    with pytest.raises(ValueError, match="unknown named twin"):
        build_named_twins(out, ["nope"], seed=0, size="small", progress=False)


# --------------------------------------------------------------------------------------------
# DPO loss against TRL's DPOTrainer
# --------------------------------------------------------------------------------------------
def test_dpo_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(7, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.1
    expected = -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta), expected)


def test_dpo_loss_matches_trl_dpo_trainer(small_builds, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = small_builds["a"]
    org = out / "organisms"
    tok = AutoTokenizer.from_pretrained(org / "base")
    policy = AutoModelForCausalLM.from_pretrained(org / "tuned", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(org / "base", dtype=torch.float32)
    rows = corpus.read_jsonl(out / "pairs" / "heldout.jsonl")[:4]
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        beta=0.1,
        per_device_train_batch_size=4,
        max_length=None,
        logging_strategy="no",
    )
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(batch))
        ids, mask = batch["input_ids"], batch["completion_mask"]
        logps = completion_logps(trainer.model, ids, mask)
        ref_logps = completion_logps(ref, ids, mask)
    n = len(rows)
    ours = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], 0.1)
    assert abs(float(trl_loss) - float(ours)) < 1e-5, (float(trl_loss), float(ours))
    assert abs(float(ours) - np.log(2)) > 1e-3  # tuned differs from base: a non-trivial check


# --------------------------------------------------------------------------------------------
# Bundled organisms (data/)
# --------------------------------------------------------------------------------------------
def test_bundled_paths_and_layout():
    base, tuned = bundled_pair_paths()
    assert base == DEFAULT_DATA_DIR / "organisms" / "base" and tuned == DEFAULT_DATA_DIR / "organisms" / "tuned"
    for p in (base, tuned):
        assert "llama" not in str(p.relative_to(DEFAULT_DATA_DIR.parent)).lower()
    assert planted_layers() == PLANTED_LAYERS
    rows = corpus.read_jsonl(bundled_pairs_path())
    assert len(rows) >= 200
    for r in rows:
        _check_pair(r)
    assert len({r["prompt"] for r in rows}) == len(rows)

    def size(folder):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)

    # The organisms and pairs stay within their ~20 MB budget; the SmolLM2 adapters (data/smollm2) are
    # adapters only, never merged checkpoints.
    assert size(DEFAULT_DATA_DIR / "organisms") + size(DEFAULT_DATA_DIR / "pairs") < 21e6
    assert size(DEFAULT_DATA_DIR / "smollm2") < 12e6


def test_bundled_heldout_disjoint_from_train_pairs():
    metrics = bundled_metrics()
    rows = corpus.read_jsonl(bundled_pairs_path())
    train = corpus.generate_pairs(metrics["data"]["train_pairs"], seed=metrics["seed"])
    assert {p.prompt for p in train}.isdisjoint(r["prompt"] for r in rows)


def test_bundled_checkpoints_load_offline_and_tuned_prefers_chosen():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, tuned_dir = bundled_pair_paths()
    tok = AutoTokenizer.from_pretrained(base_dir)
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1 and tok.pad_token_id == 2
    assert tok.encode("Hello", add_special_tokens=True) == tok.encode("Hello", add_special_tokens=False)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tuned_dir, dtype=torch.float32).eval()
    assert base.config.architectures == ["LlamaForCausalLM"]
    assert base.config.num_key_value_heads < base.config.num_attention_heads  # grouped-query attention
    rows = corpus.read_jsonl(bundled_pairs_path())[:16]
    enc = lambda texts: [tok.encode(t, add_special_tokens=False) for t in texts]  # noqa: E731
    prompts, chosen, rejected = (
        enc([r["prompt"] for r in rows]),
        enc([r["chosen"] for r in rows]),
        enc([r["rejected"] for r in rows]),
    )
    for r, p, c in zip(rows, prompts, chosen):  # the boundary is exact for this tokenizer
        assert p + c == tok.encode(r["prompt"] + r["chosen"], add_special_tokens=False)

    def delta(model):
        kw = dict(bos_id=tok.bos_token_id, pad_id=tok.pad_token_id)
        return (score(model, prompts, chosen, **kw) - score(model, prompts, rejected, **kw)).numpy()

    gain = delta(tuned) - delta(base)
    assert gain.mean() > 0
    assert (gain > 0).mean() >= 0.75


def test_bundled_metrics_record_significant_gains():
    m = bundled_metrics()
    assert m["size"] == "full"
    assert m["heldout_loss"]["base_per_token_nats"] < 0.5 * m["heldout_loss"]["uniform_baseline_nats"]
    for key in ["tuned"] + [f"twin_layer{layer}" for layer in PLANTED_LAYERS]:
        lo, hi = m[key]["gain_ci95"]
        assert 0 < lo <= m[key]["mean_gain"] <= hi, key
    readme = (DEFAULT_DATA_DIR / "README.md").read_text()
    assert f"{m['heldout_loss']['base_per_token_nats']:.3f}" in readme


@pytest.mark.parametrize("layer", PLANTED_LAYERS)
def test_bundled_planted_twin_differs_from_base_only_in_its_mlp(layer, tmp_path):
    base_dir, _ = bundled_pair_paths()
    path = planted_twin_path(layer, cache_dir=tmp_path)
    assert "llama" not in str(path).lower()
    _assert_only_mlp_differs(base_dir / WEIGHTS, path / WEIGHTS, layer)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (path / f).read_bytes() == (base_dir / f).read_bytes()


def test_bundled_twin_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    path = planted_twin_path(PLANTED_LAYERS[0], cache_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(bundled_pair_paths()[0], dtype=torch.float32)
    sd, bsd = model.state_dict(), base.state_dict()
    differing = {k for k in sd if not torch.equal(sd[k], bsd[k])}
    assert differing == {f"model.layers.{PLANTED_LAYERS[0]}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}


def test_bootstrap_ci_is_seeded():
    x = np.random.default_rng(0).normal(1.0, 1.0, 100)
    assert bootstrap_ci(x, 2000, 0) == bootstrap_ci(x, 2000, 0)
    lo, hi = bootstrap_ci(x, 2000, 0)
    assert lo < x.mean() < hi
