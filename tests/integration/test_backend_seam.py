"""The backend seam's primitives (alignment_probe.backends.base.Backend) against the model's own full forward, on
whichever backend the installed TransformerLens line gives: a start-at-layer run from a captured residual, the
completion-only unembedding, continuations from a prompt's keys and values, decoding with a cache, hooks that
leave no trace, part swaps that put everything back."""

from __future__ import annotations

import pytest
import torch

from alignment_probe.backends import backend_of, resolve_backend
from alignment_probe.backends.base import Backend, length_mask, pad_stack


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:  # other batch shapes or kernels: float rounding only
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()), msg=what)


@pytest.fixture(scope="module")
def seqs(tiny_pair):
    tok = tiny_pair.tokenizer
    texts = ["\n\nHuman: Where is the bread?\n\nAssistant: In the kitchen.", "\n\nHuman: Hi\n\nAssistant: Hello there!"]
    return [torch.tensor([tok.bos_token_id, *tok.encode(t, add_special_tokens=False)]) for t in texts]


def test_the_twins_backends_are_the_installed_line_and_stable(tiny_pair):
    b = tiny_pair.backends()["base"]
    assert isinstance(b, Backend) and b.name == resolve_backend("auto") == tiny_pair.backend
    assert backend_of(tiny_pair.base) is b and backend_of(b) is b  # one backend per model, found again
    assert b.model is tiny_pair.base
    facts = b.facts
    assert (facts.n_layers, facts.d_model) == (tiny_pair.n_layers, tiny_pair.d_model)
    assert facts.d_vocab >= len(tiny_pair.tokenizer)
    assert tiny_pair.describe()["backend"] == b.name


@torch.inference_mode()
def test_start_at_layer_and_stop_at_layer_reproduce_the_full_forward(tiny_pair, seqs):
    b = tiny_pair.backends()["base"]
    ids = seqs[0][None]
    logits, _ = b.run(ids)
    native = tiny_pair.base(ids)  # the model's own forward, as a notebook calls it
    assert torch.equal(logits, native)
    for layer in range(b.n_layers):
        resid, acts = b.run(ids, stop_at_layer=layer, capture=[f"blocks.{layer}.hook_resid_pre"])
        assert acts == {}  # block `layer` did not run: its hook is not reached
        _, pre = b.run(ids, capture=[f"blocks.{layer}.hook_resid_pre"])
        assert torch.equal(resid, pre[f"blocks.{layer}.hook_resid_pre"])
        again, _ = b.run(resid, start_at_layer=layer)
        close(again, logits, f"start at block {layer}")
    final, _ = b.run(ids, stop_at_layer=b.n_layers)
    positions = torch.tensor([1, 4, ids.shape[1] - 1])
    close(b.unembed(final[0, positions]), logits[0, positions], "unembedding selected positions")


@torch.inference_mode()
def test_hooks_act_inside_the_block_and_leave_no_trace(tiny_pair, seqs):
    b = tiny_pair.backends()["base"]
    ids = seqs[1][None]
    clean, _ = b.run(ids)
    name = "blocks.1.hook_resid_post"
    zeroed, acts = b.run(ids, hooks=[(name, lambda act, hook: torch.zeros_like(act))], capture=[name])
    assert torch.equal(acts[name], torch.zeros_like(acts[name]))  # the capture sees the written value
    assert not torch.allclose(zeroed, clean)
    with b.hooked([(lambda n: n.endswith("hook_mlp_out"), lambda act, hook: act * 0)]):
        assert not torch.allclose(b.run(ids)[0], clean)
    assert torch.equal(b.run(ids)[0], clean)  # every hook removed


@torch.inference_mode()
def test_continuations_from_prompt_keys_and_values_equal_the_full_sequences(tiny_pair, seqs):
    b = tiny_pair.backends()["tuned"]
    if not b.shares_prompt_kv():
        pytest.skip(f"{b.facts.architecture} does not continue from a cache")
    cut = [5, 9]  # prompt lengths
    width = max(len(s) for s in seqs)
    full, _ = b.run(
        pad_stack(seqs, width),
        stop_at_layer=b.n_layers,
        attention_mask=length_mask([len(s) for s in seqs], width, "cpu"),
    )
    prompts = [s[:c] for s, c in zip(seqs, cut)]
    out, _, kvs = b.run_prompts(pad_stack(prompts, max(cut)), cut)
    for r, c in enumerate(cut):
        close(out[r, c - 1], full[r, c - 1], f"prompt {r}'s last position")
    rest = [s[c:] for s, c in zip(seqs, cut)]
    order = [1, 0]  # rows in another order than their prompts
    lengths = [len(rest[i]) for i in order]
    cont, _ = b.run_continuations(pad_stack([rest[i] for i in order], max(lengths)), lengths, [kvs[i] for i in order])
    for r, i in enumerate(order):
        close(cont[r, : lengths[r]], full[i, cut[i] : len(seqs[i])], f"row {i} continued")


@torch.inference_mode()
def test_decoding_with_the_cache_gives_the_full_forward(tiny_pair, seqs):
    b = tiny_pair.backends()["base"]
    ids = seqs[0][None]
    full, _ = b.run(ids)
    state = b.new_decode_state()
    steps = [b.decode_step(ids[:, :6], state)[0]]
    steps += [b.decode_step(ids[:, i : i + 1], state)[0] for i in range(6, ids.shape[1])]
    close(torch.cat(steps), full[0], "decoded step by step")


@torch.inference_mode()
def test_part_swaps_put_the_other_models_weights_in_and_back(tiny_pair, seqs):
    base, tuned = tiny_pair.backends()["base"], tiny_pair.backends()["tuned"]
    ids = seqs[0][None]
    before = base.run(ids)[0]
    names = ["embed", *(f"blocks.{i}" for i in range(base.n_layers)), "ln_final", "unembed"]
    saved = [(n, base.swap_part(n, tuned.part(n))) for n in names if base.part(n) is not None]
    try:
        close(base.run(ids)[0], tuned.run(ids)[0], "every part swapped: the other model")
    finally:
        for n, module in reversed(saved):
            base.swap_part(n, module)
    assert torch.equal(base.run(ids)[0], before)
    weights = dict(base.named_weights())
    assert "blocks.0.attn.W_Q" in weights and "unembed.W_U" in weights
    assert weights["blocks.0.attn.W_Q"].shape == (base.facts.n_heads, base.d_model, base.facts.d_head)
