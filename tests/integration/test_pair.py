"""Loading a pair: logits equal Hugging Face's, fingerprints are stable, incompatible pairs refused."""

from __future__ import annotations

import pytest
import torch

from alignment_probe.errors import CheckpointError, IncompatiblePairError
from alignment_probe.pair import load_local_model, load_twins


def test_local_llama_logits_match_hugging_face(tiny, hh_pairs):
    from transformers import AutoModelForCausalLM

    pairs, _ = hh_pairs
    loaded = load_local_model(tiny.base)
    hf = AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32).eval()
    tok = loaded.tokenizer
    for p in pairs[:3]:
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(p.prompt + p.chosen, add_special_tokens=False)[:200]])
        with torch.no_grad():
            ours = loaded.model(ids)
            ref = hf(ids).logits
        assert (ours - ref).abs().max().item() <= 1e-4


def test_path_containing_llama_is_loaded_from_its_own_config(tiny, tmp_path):
    # TransformerLens guesses the architecture from any path with "llama" in it; we must not.
    link = tmp_path / "my-Llama-checkpoint"
    link.symlink_to(tiny.base, target_is_directory=True)
    a, b = load_local_model(link), load_local_model(tiny.base)
    assert a.model.cfg.d_model == 64 and a.fingerprint == b.fingerprint


def test_fingerprints_identify_weights(tiny_pair, tiny):
    again = load_local_model(tiny.base)
    assert again.fingerprint == tiny_pair.base_fingerprint
    assert tiny_pair.base_fingerprint != tiny_pair.tuned_fingerprint


def test_incompatible_layers_refused(tiny):
    with pytest.raises(IncompatiblePairError, match="n_layers: base=4 tuned=5"):
        load_twins(tiny.base, tiny.deeper)


def test_incompatible_tokenizer_refused(tiny):
    with pytest.raises(IncompatiblePairError, match="probe string"):
        load_twins(tiny.base, tiny.other_tokenizer)


def test_missing_checkpoint_files_are_named(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_twins(tmp_path / "nowhere", tiny.tuned)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny.base / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing weights .* tokenizer files"):
        load_twins(partial, tiny.tuned)
