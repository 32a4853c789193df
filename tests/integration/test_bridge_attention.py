"""The TransformerBridge backend's AtP* and weight-diff interfaces against the model's own computation, family by
family (tiny random checkpoints with windows shorter than the sequences and small soft-caps, from
test_bridge_backend.py):

* ``attention(layer)`` recomputes ``hook_z`` from ``hook_q``/``hook_k``/``hook_v`` (engine/attribution.py's
  ``attention_z``, what AtP*'s QK fix runs) equal to the model's own ``hook_z``, clean and with one KV head's
  keys replaced at some positions by a hook; a family whose attention it does not model is refused naming the
  alternatives, never approximated;
* Gemma-2's ``named_weights`` hold what the model computes with (as TransformerLens 3.9 does): each norm's weight
  reproduces the Hugging Face norm's output (x·(1 + w)), ``ln1_post``/``ln2_post`` are there, and ``W_E`` rows
  are the residual stream block 0 receives (the embedding times √d_model).

Skipped, with the reason, where TransformerLens 3.x (no TransformerBridge) is installed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from alignment_probe import backends

pytestmark = pytest.mark.skipif(
    "bridge" not in backends.available_backends(),
    reason=f"the TransformerBridge backend needs transformer-lens 4.x; {backends.transformer_lens_version()} is installed",
)

from alignment_probe.engine.attribution import attention_z, patched_keys  # noqa: E402
from alignment_probe.errors import ConfigError  # noqa: E402
from tests.integration.test_bridge_backend import (  # noqa: E402, F401  (fixtures)
    _BY_NAME,
    BRIDGE_FAMILIES,
    SEQ,
    _tokens,
    base_tokenizer,
    build,
)
from tests.integration.test_families import Family  # noqa: E402

# Families whose attention the QK fix does not model on the Bridge, and why (the refusal must say so).
REFUSED = {"gemma-3": "QK norm", "olmo-2-grouped": "QK norm", "gpt-neo": "without a 'scaling'"}


@pytest.mark.parametrize("fam", BRIDGE_FAMILIES, ids=lambda f: f.name)
def test_attention_z_reproduces_the_models_hook_z(fam: Family, build: Any) -> None:  # noqa: F811 (fixture)
    backend, *_ = build(fam)
    layer = 1
    names = [f"blocks.{layer}.attn.hook_{h}" for h in "qkvz"]
    if fam.name in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[fam.name]) as err:
            backend.attention(layer)
        assert "plain AtP" in str(err.value) and "--backend hooked" in str(err.value)
        return
    attn = backend.attention(layer)
    ids = _tokens(backend, batch=2)
    with torch.no_grad():
        _, cache = backend.run(ids, stop_at_layer=layer + 1, capture=names)
    q, k, v, z = (cache[n] for n in names)
    torch.testing.assert_close(attention_z(attn, q, k, v), z, rtol=0, atol=1e-5)
    # one KV head's keys replaced at some positions (a hook, as the exact engines write them): z moves, and the
    # recomputation follows it
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[0, 3:9], mask[1, SEQ // 2 :] = True, True
    noise = torch.randn(k.shape, generator=torch.Generator().manual_seed(3), dtype=k.dtype)
    new_k = patched_keys(k, k + noise, mask, 1.0, k.shape[2] - 1)
    with torch.no_grad():
        _, moved = backend.run(
            ids, stop_at_layer=layer + 1, hooks=[(names[1], lambda act, hook: new_k)], capture=names[3:]
        )
    assert (moved[names[3]] - z).abs().max() > 1e-3
    torch.testing.assert_close(attention_z(attn, q, new_k, v), moved[names[3]], rtol=0, atol=1e-5)


def test_gemma2_weights_are_what_the_model_computes_with(build: Any) -> None:  # noqa: F811 (fixture)
    backend, hf, *_ = build(_BY_NAME["gemma-2"])
    weights = dict(backend.named_weights())
    layer = hf.model.layers[1]
    x = torch.randn(2, 5, hf.config.hidden_size, generator=torch.Generator().manual_seed(0))
    unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + hf.config.rms_norm_eps)
    norms = {
        "ln1": layer.input_layernorm,
        "ln1_post": layer.post_attention_layernorm,
        "ln2": layer.pre_feedforward_layernorm,
        "ln2_post": layer.post_feedforward_layernorm,
    }
    with torch.no_grad():
        for ours, norm in norms.items():
            torch.testing.assert_close(unit * weights[f"blocks.1.{ours}.w"], norm(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unit * weights["ln_final.w"], hf.model.norm(x), rtol=1e-5, atol=1e-5)
        ids = _tokens(backend, batch=1)
        _, cache = backend.run(ids, stop_at_layer=1, capture=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(weights["embed.W_E"][ids[0]], cache["blocks.0.hook_resid_pre"][0], rtol=1e-6, atol=1e-6)
