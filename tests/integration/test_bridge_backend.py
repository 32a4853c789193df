"""The TransformerBridge backend (transformer-lens 4.x) against Hugging Face's own models, family by family.

Each family is a tiny random checkpoint built in the test (tests/integration/test_families.py's builders, with
windows shorter than the sequences and small soft-caps, so a family whose mask, window, cap or scale went wrong
fails), plus OLMo-2 with grouped key/value heads, which the 3.9 line refuses. Against independent references:

* log-softmax equals the Hugging Face model's (float32, ≤ 1e-5);
* a forward from a cached ``resid_pre[k]`` equals the full forward for every k, and no hook below k fires
  (the blocks below are skipped, not run and discarded);
* ``stop_at_layer=n`` then ``unembed`` gives the logits; completions continued from their prompts' keys and
  values give the full sequence's final residual and ``hook_z`` (families without sliding windows);
* HookedTransformer's hook names with HookedTransformer's shapes (key/value heads before repetition);
* a multi-entry device map on the CPU gives the same log-probs; a decoded sequence step by step gives the full
  forward's logits; transplanting every part of the twin gives the twin.

Skipped, with the reason, where TransformerLens 3.x (no TransformerBridge) is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignment_probe import backends

pytestmark = pytest.mark.skipif(
    "bridge" not in backends.available_backends(),
    reason=f"the TransformerBridge backend needs transformer-lens 4.x; {backends.transformer_lens_version()} is installed",
)

from tests.helpers.checkpoints import perturbed_copy, save_checkpoint  # noqa: E402
from tests.integration.test_families import (  # noqa: E402
    FAMILIES,
    N_LAYERS,
    WINDOW,
    Family,
    _ids,
    family_tokenizer,
    randomise_vectors,
)

SEQ = 3 * WINDOW + 5  # longer than every sliding window


def _olmo2_grouped(t: dict[str, int]) -> Any:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(
        Olmo2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


_BY_NAME = {f.name: f for f in FAMILIES}
BRIDGE_FAMILIES = [
    _BY_NAME[n] for n in ("llama", "qwen2", "gemma-2", "gpt2", "mistral", "phi-3", "gemma-3", "gpt-neo")
] + [Family("olmo-2-grouped", _olmo2_grouped, "layers.1.mlp")]
_BY_NAME |= {"olmo-2-grouped": BRIDGE_FAMILIES[-1]}
SLIDING = {"gemma-2", "gemma-3", "mistral", "gpt-neo"}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, base_tokenizer: Any) -> Any:
    cache: dict[str, Any] = {}

    def _build(fam: Family) -> Any:
        if fam.name not in cache:
            from alignment_probe.backends.bridge import load

            tok = family_tokenizer(fam.tokenizer, base_tokenizer)
            ids = {
                "vocab": len(tok),
                "bos": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
                "eos": tok.eos_token_id,
                "pad": tok.pad_token_id,
            }
            torch.manual_seed(0)
            hf = randomise_vectors(fam.make(ids), seed=1)
            twin = perturbed_copy(hf, seed=2, scale=0.3)
            root = tmp_path_factory.mktemp(fam.name)
            base_dir = save_checkpoint(hf, tok, root / "base")
            twin_dir = save_checkpoint(twin, tok, root / "twin")
            cache[fam.name] = (load(str(base_dir)), hf.eval(), base_dir, twin_dir, twin.eval())
        return cache[fam.name]

    return _build


@pytest.fixture(scope="module")
def base_tokenizer() -> Any:
    from alignment_probe.data import load_pairs
    from tests.helpers.checkpoints import train_tokenizer

    pairs, _ = load_pairs(Path(__file__).resolve().parents[2] / "data" / "pairs" / "heldout.jsonl")
    return train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs], vocab_size=320)


def _tokens(backend: Any, batch: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, backend.d_vocab, (batch, SEQ), generator=gen)


def _logp(x: torch.Tensor) -> torch.Tensor:
    return x.double().log_softmax(-1)


@pytest.mark.parametrize("fam", BRIDGE_FAMILIES, ids=lambda f: f.name)
def test_logits_equal_hugging_face_and_start_at_layer_skips_the_blocks_below(fam: Family, build: Any) -> None:
    backend, hf, *_ = build(fam)
    ids = _tokens(backend)
    n = backend.n_layers
    with torch.inference_mode():
        ref = _logp(hf(ids).logits)
        logits, cache = backend.run(ids, capture=lambda name: name.endswith("hook_resid_pre"))
        assert (_logp(logits) - ref).abs().max().item() <= 1e-5
        final, _ = backend.run(ids, stop_at_layer=n)
        assert (_logp(backend.unembed(final[1])) - ref[1]).abs().max().item() <= 1e-5
        for k in range(n):
            below = lambda name: any(name.startswith(f"blocks.{i}.") for i in range(k))  # noqa: E731
            out, seen = backend.run(cache[f"blocks.{k}.hook_resid_pre"], start_at_layer=k, capture=below)
            assert (_logp(out) - ref).abs().max().item() <= 1e-5, k
            assert not seen, f"start_at_layer={k} ran blocks below it: {sorted(seen)[:3]}"
            mid, _ = backend.run(cache[f"blocks.{k}.hook_resid_pre"], start_at_layer=k, stop_at_layer=n)
            torch.testing.assert_close(mid, final, rtol=0, atol=1e-5)
    assert backend.facts.architecture == hf.config.architectures[0]


@pytest.mark.parametrize("fam", BRIDGE_FAMILIES, ids=lambda f: f.name)
def test_hook_names_and_shapes_are_hooked_transformers(fam: Family, build: Any) -> None:
    backend, hf, *_ = build(fam)
    f = backend.facts
    assert f.n_kv_heads == (getattr(hf.config, "num_key_value_heads", None) or f.n_heads)
    sites = {
        "hook_resid_pre": (f.d_model,),
        "hook_resid_mid": (f.d_model,),
        "hook_resid_post": (f.d_model,),
        "hook_attn_out": (f.d_model,),
        "hook_mlp_out": (f.d_model,),
        "attn.hook_q": (f.n_heads, f.d_head),
        "attn.hook_z": (f.n_heads, f.d_head),
        "attn.hook_k": (f.n_kv_heads, f.d_head),
        "attn.hook_v": (f.n_kv_heads, f.d_head),
    }
    names = [f"blocks.{layer}.{site}" for layer in range(f.n_layers) for site in sites]
    ids = _tokens(backend, batch=2)
    with torch.inference_mode():
        _, cache = backend.run(ids, capture=names)
    assert sorted(cache) == sorted(names)
    for name in names:
        assert tuple(cache[name].shape) == (2, SEQ, *sites[name.split(".", 2)[2]]), name
    for layer in range(f.n_layers - 1):  # one residual stream: what leaves block l enters block l+1
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"]
        )


@pytest.mark.parametrize("fam", BRIDGE_FAMILIES, ids=lambda f: f.name)
def test_continuations_from_prompt_keys_and_values_equal_the_full_sequence(fam: Family, build: Any) -> None:
    from alignment_probe.backends.base import length_mask, pad_stack

    backend, *_ = build(fam)
    assert backend.shares_prompt_kv() == (fam.name not in SLIDING)
    if not backend.shares_prompt_kv():
        return
    ids = _tokens(backend)
    n = backend.n_layers
    prompt_lengths, completion_lengths = [10, 14, 7], [12, 9, 15]
    seqs = [ids[i, : p + c] for i, (p, c) in enumerate(zip(prompt_lengths, completion_lengths))]
    width = max(len(s) for s in seqs)
    keep = ("blocks.1.hook_resid_pre", "blocks.2.attn.hook_z")
    with torch.inference_mode():
        mask = length_mask([len(s) for s in seqs], width, "cpu")
        full, cache = backend.run(pad_stack(seqs, width), stop_at_layer=n, attention_mask=mask, capture=keep)
        prompts = [ids[i, :p] for i, p in enumerate(prompt_lengths)]
        last, _, states = backend.run_prompts(pad_stack(prompts, max(prompt_lengths)), prompt_lengths)
        for i, p in enumerate(prompt_lengths):
            torch.testing.assert_close(last[i, p - 1], full[i, p - 1], rtol=1e-5, atol=1e-5)
        order = [2, 0, 1]  # rows in another order than their prompts
        for start in (None, 1, n):  # from tokens, from block 1's residual, from the final one (no block runs)
            source = {None: ids, 1: cache["blocks.1.hook_resid_pre"], n: full}[start]
            rows = [source[i, prompt_lengths[i] : prompt_lengths[i] + completion_lengths[i]] for i in order]
            out, acts = backend.run_continuations(
                pad_stack(rows, max(completion_lengths)),
                [completion_lengths[i] for i in order],
                [states[i] for i in order],
                start_at_layer=start,
                capture=["blocks.2.attn.hook_z"],
            )
            if start == n:
                assert not acts
                continue
            for r, i in enumerate(order):
                span = slice(prompt_lengths[i], prompt_lengths[i] + completion_lengths[i])
                c = completion_lengths[i]
                torch.testing.assert_close(out[r, :c], full[i, span], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(
                    acts["blocks.2.attn.hook_z"][r, :c], cache["blocks.2.attn.hook_z"][i, span], rtol=1e-5, atol=1e-5
                )


def test_a_multi_entry_device_map_gives_the_same_log_probs(build: Any) -> None:
    """accelerate dispatches the model by the map (on a CPU-only machine: one block offloaded to disk, loaded
    into memory only while it runs), and the layer-by-layer route still gives the same log-probs."""
    from alignment_probe.backends.bridge import load

    backend, hf, base_dir, *_ = build(_BY_NAME["llama"])
    device_map = {name: "cpu" for name in ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")}
    device_map |= {f"model.layers.{i}": ("disk" if i == 1 else "cpu") for i in range(N_LAYERS)}
    split = load(str(base_dir), device_map=device_map)
    assert split.model.original_model.hf_device_map == device_map
    assert next(split.model.blocks[1].parameters()).device.type == "meta"  # offloaded: materialised only to run
    ids = _tokens(backend)
    with torch.inference_mode():
        whole, cache = backend.run(ids, capture=["blocks.1.hook_resid_pre"])
        parts, _ = split.run(ids)
        from_1, _ = split.run(cache["blocks.1.hook_resid_pre"], start_at_layer=1)
    torch.testing.assert_close(_logp(parts), _logp(whole), rtol=0, atol=1e-6)
    torch.testing.assert_close(_logp(from_1), _logp(whole), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["llama", "gemma-2", "gpt2"])
def test_decoding_step_by_step_equals_the_full_forward(name: str, build: Any) -> None:
    backend, *_ = build(_BY_NAME[name])
    ids = _tokens(backend, batch=1)
    with torch.inference_mode():
        full, _ = backend.run(ids)
        state = backend.new_decode_state()
        steps = [backend.decode_step(ids[:, :5], state)]
        steps += [backend.decode_step(ids[:, j : j + 1], state) for j in range(5, SEQ)]
    torch.testing.assert_close(_logp(torch.cat(steps, dim=1)), _logp(full), rtol=0, atol=1e-5)


def test_transplanting_every_part_of_the_twin_gives_the_twin(build: Any) -> None:
    from alignment_probe.backends.bridge import load

    backend, hf, base_dir, twin_dir, twin_hf = build(_BY_NAME["llama"])
    base, twin = load(str(base_dir)), load(str(twin_dir))
    parts = ["embed", *(f"blocks.{i}" for i in range(base.n_layers)), "ln_final", "unembed"]
    assert base.part("pos_embed") is None  # rotary: no such part
    ids = _tokens(base)
    with torch.inference_mode():
        own, _ = base.run(ids)
        olds = {p: base.swap_part(p, twin.part(p)) for p in parts}  # type: ignore[arg-type]
        swapped, _ = base.run(ids)
        for p, module in olds.items():
            base.swap_part(p, module)
        back, _ = base.run(ids)
        torch.testing.assert_close(_logp(swapped), _logp(twin_hf(ids).logits), rtol=0, atol=1e-5)
        torch.testing.assert_close(back, own, rtol=0, atol=0)
        assert (_logp(own) - _logp(swapped)).abs().max().item() > 1e-2  # the twin differs: the check can fail


def test_weights_are_named_and_grouped_as_hooked_transformer_keeps_them(build: Any) -> None:
    backend, hf, *_ = build(_BY_NAME["olmo-2-grouped"])
    weights = dict(backend.named_weights())
    f = backend.facts
    assert f.n_kv_heads < f.n_heads
    assert "blocks.0.attn.W_K" not in weights
    k = weights["blocks.1.attn._W_K"]
    assert tuple(k.shape) == (f.n_kv_heads, f.d_model, f.d_head)
    hf_k = hf.model.layers[1].self_attn.k_proj.weight  # [kv_heads·d_head, d_model]
    torch.testing.assert_close(k, hf_k.reshape(f.n_kv_heads, f.d_head, f.d_model).transpose(1, 2))
    assert tuple(weights["blocks.1.attn.W_Q"].shape) == (f.n_heads, f.d_model, f.d_head)
    assert {"embed.W_E", "unembed.W_U", "ln_final.w", "blocks.0.mlp.W_in"} <= set(weights)


def test_the_tokenizer_is_left_as_the_checkpoint_has_it(build: Any) -> None:
    """The Bridge gives a tokenizer without BOS one (Qwen); the pair's must keep none (EOS stands in for it)."""
    backend, *_ = build(_BY_NAME["qwen2"])
    assert backend.tokenizer.bos_token_id is None


def test_a_hook_filter_that_accepts_two_names_of_one_point_hooks_it_once(build: Any) -> None:
    backend, *_ = build(_BY_NAME["llama"])
    ids = _tokens(backend)
    both = lambda name: name in ("blocks.1.hook_resid_pre", "blocks.1.hook_in")  # noqa: E731 — one point, two names
    with torch.inference_mode():
        _, cache = backend.run(ids, capture=["blocks.1.hook_resid_pre"])
        doubled, _ = backend.run(ids, hooks=[(both, lambda act, hook: act * 2)])
        expected, _ = backend.run(2 * cache["blocks.1.hook_resid_pre"], start_at_layer=1)
    torch.testing.assert_close(doubled, expected, rtol=0, atol=1e-5)
