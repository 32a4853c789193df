"""Hub names, offline: tiny checkpoints planted under official names in a temporary Hugging Face cache.

The cache layout is the real one (``models--owner--name/snapshots/<hash>/`` + ``refs/main``) and
``HF_HUB_OFFLINE=1`` (conftest), so nothing is downloaded. Loading by hub name must give Hugging
Face's logits, and, for families whose TransformerLens config comes from config.json, TransformerLens's
own ``from_pretrained_no_processing`` logits too. Each failure has its own error and fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_families import FAMILIES, family_tokenizer, randomise_vectors

from alignment_probe.cli import main
from alignment_probe.errors import (
    ArchitectureNotSupportedError,
    HubAccessError,
    HubModelNotCachedError,
    HubModelUnknownError,
)
from alignment_probe.pair import load_hub_model, load_local_model, load_twins
from tests.helpers.checkpoints import perturbed_copy, save_checkpoint

BY_NAME = {f.name: f for f in FAMILIES}


def plant(cache: Path, repo_id: str, folder: Path) -> Path:
    """Copy a checkpoint folder into ``cache`` as the hub would have downloaded it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, base_tokenizer):
    """One cache with a base/instruct pair for Qwen2.5 and Gemma-2, and single models for Pythia and GPT-2."""
    cache = tmp_path_factory.mktemp("hf-cache")
    work = tmp_path_factory.mktemp("hub-src")
    planted = {}
    for fam, names in (
        ("qwen2", ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct")),
        ("gemma-2", ("google/gemma-2-2b", "google/gemma-2-2b-it")),
        ("pythia", ("EleutherAI/pythia-14m",)),
        ("gpt2", ("gpt2",)),
    ):
        f = BY_NAME[fam]
        tok = family_tokenizer(f.tokenizer, base_tokenizer)
        ids = {
            "vocab": len(tok),
            "bos": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos": tok.eos_token_id,
            "pad": tok.pad_token_id,
        }
        torch.manual_seed(0)
        base = randomise_vectors(f.make(ids), seed=3)
        models = [base, perturbed_copy(base, seed=4, scale=0.5, only=f.tuned)]
        for name, model in zip(names, models):
            planted[name] = plant(cache, name, save_checkpoint(model, tok, work / name.replace("/", "_")))
    return cache, planted


@pytest.fixture(scope="module")
def base_tokenizer():
    from conftest import BUNDLED_PAIRS

    from alignment_probe.data import load_pairs
    from tests.helpers.checkpoints import train_tokenizer

    pairs, _ = load_pairs(BUNDLED_PAIRS)
    return train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs], vocab_size=320)


@pytest.fixture
def use_cache(hub_cache, monkeypatch):
    from huggingface_hub import constants

    cache, planted = hub_cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at call time by hub and transformers
    assert constants.HF_HUB_OFFLINE
    return planted


def _tokens(tok, n=40):
    ids = tok.encode(
        "\n\nHuman: How do I bake bread at home?\n\nAssistant: Mix flour, water and salt, then wait.",
        add_special_tokens=False,
    )
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return torch.tensor([[bos] + ids[:n]])


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(ids).logits


@pytest.mark.parametrize(
    "base,tuned", [("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"), ("google/gemma-2-2b", "google/gemma-2-2b-it")]
)
def test_pair_by_hub_name_matches_hugging_face(use_cache, base, tuned):
    twins = load_twins(base, tuned)
    assert (twins.base_source, twins.tuned_source) == (base, tuned)
    assert twins.base_fingerprint != twins.tuned_fingerprint
    ids = _tokens(twins.tokenizer)
    for role, name in (("base", base), ("tuned", tuned)):
        with torch.no_grad():
            ours = getattr(twins, role)(ids)
        assert (ours - _hf_logits(use_cache[name], ids)).abs().max().item() <= 1e-4, name
    # The same checkpoint reached by its folder is the same model.
    assert load_local_model(use_cache[base]).fingerprint == twins.base_fingerprint


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B", "EleutherAI/pythia-14m"])
def test_hub_name_matches_transformer_lens_from_pretrained(use_cache, name):
    """For families TransformerLens configures from config.json, its own hub loader is an independent reference."""
    from transformer_lens import HookedTransformer

    ours = load_hub_model(name)
    theirs = HookedTransformer.from_pretrained_no_processing(name, device="cpu", dtype=torch.float32)
    ids = _tokens(ours.tokenizer)
    with torch.no_grad():
        a, b = ours.model(ids), theirs(ids)
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - _hf_logits(use_cache[name], ids)).abs().max().item() <= 1e-4


def test_gpt2_by_hub_name(use_cache):
    # TransformerLens's own loader reads GPT2Config.n_ctx, gone in transformers 5; ours reads n_positions.
    loaded = load_hub_model("gpt2")
    assert loaded.model.cfg.n_ctx == json.loads((use_cache["gpt2"] / "config.json").read_text())["n_positions"]
    ids = _tokens(loaded.tokenizer)
    with torch.no_grad():
        assert (loaded.model(ids) - _hf_logits(use_cache["gpt2"], ids)).abs().max().item() <= 1e-4


def test_unknown_to_transformer_lens(use_cache, tiny):
    with pytest.raises(
        HubModelUnknownError, match=r"--tuned: 'someone/my-finetune' is neither a local folder .*hf download"
    ):
        load_twins(tiny.base, "someone/my-finetune")


def test_not_in_the_cache_and_offline(use_cache):
    with pytest.raises(
        HubModelNotCachedError, match=r"Qwen/Qwen2.5-1.5B is not in the Hugging Face cache .*HF_HUB_OFFLINE=1"
    ):
        load_hub_model("Qwen/Qwen2.5-1.5B")


def test_cli_names_the_missing_hub_model_with_exit_2(use_cache, tmp_path, capsys):
    data = Path(__file__).resolve().parents[2] / "data" / "pairs" / "heldout.jsonl"
    code = main(
        [
            "score",
            "--base",
            "Qwen/Qwen2.5-0.5B",
            "--tuned",
            "Qwen/Qwen2.5-1.5B-Instruct",
            "--data",
            str(data),
            "--n-pairs",
            "2",
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 2
    assert "Qwen/Qwen2.5-1.5B-Instruct is not in the Hugging Face cache" in capsys.readouterr().err


def test_gated_model_without_access(use_cache, monkeypatch):
    # Gating cannot happen offline; the hub client's own GatedRepoError stands in for the server's answer.
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def refuse(repo_id, **kwargs):
        url = f"https://huggingface.co/{repo_id}/resolve/main/config.json"
        response = httpx.Response(403, request=httpx.Request("GET", url))
        raise GatedRepoError(f"403 Client Error. Cannot access gated repo for url {url}.", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(HubAccessError, match=r"meta-llama/Llama-3.2-1B is a gated model .*hf auth login"):
        load_hub_model("meta-llama/Llama-3.2-1B")


def test_architecture_transformer_lens_cannot_convert(tmp_path, tiny):
    """A real transformers model of a family TransformerLens has no conversion for (GPT-BigCode)."""
    from transformers import AutoTokenizer, GPTBigCodeConfig, GPTBigCodeForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny.base)
    model = GPTBigCodeForCausalLM(GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=len(tok)))
    folder = save_checkpoint(model, tok, tmp_path / "bigcode")
    with pytest.raises(ArchitectureNotSupportedError, match=r"cannot convert the architecture 'GPTBigCodeForCausalLM'"):
        load_local_model(folder)
