"""The engines' gated MLP: TransformerLens's, without adding biases that are all zeros.

Llama, Qwen, Mistral, Gemma and most gated-MLP families have no MLP biases, but TransformerLens's
``GatedMLP`` keeps zero ``b_in``/``b_out`` parameters and adds them on every forward: a pass over the
``[batch, pos, d_mlp]`` activations for ``b_in``, and a copy of ``b_out`` into the output before the
product accumulates onto it. Adding zero changes no value (x + 0 = x; only a −0 would become +0, which no
later operation tells apart), so inside :func:`lean_mlp` each such module runs :func:`gated_forward`: the
same products on the same operands, every hook point (``hook_pre``, ``hook_pre_linear``, ``hook_post``)
firing on the same values, without the zero additions. Tested bit for bit against TransformerLens on
every family (``test_family_zero_biases_mlp_and_unembedding``).

A module whose biases are not all zero when the block is entered, a layer-norm activation (SoLU), a
4-bit or mixture-of-experts MLP, or one whose forward someone else has replaced keeps its own forward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

_MARK = "_alignment_probe_lean_mlp"  # set on a module while lean_mlp has swapped its forward


def supports_lean_mlp(mlp: Any) -> bool:
    """Whether :func:`gated_forward` computes what this TransformerLens MLP module computes: a plain
    ``GatedMLP`` whose ``b_in`` is all zeros."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    return (type(mlp) is GatedMLP and "forward" not in mlp.__dict__ and not mlp.cfg.is_layer_norm_activation()
            and not bool(mlp.b_in.any()))


def gated_forward(self: Any, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """``GatedMLP.forward`` with ``b_in`` (all zeros) not added, and ``b_out`` not added when it is all zeros
    (marked on the module by :func:`lean_mlp`)."""
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T.contiguous()))  # [batch, pos, d_mlp]
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T.contiguous()))
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear)
    return F.linear(post_act, self.W_out.T.contiguous(), None if self.__dict__[_MARK] else self.b_out)


def lean_mlp(*models: Any) -> contextlib.AbstractContextManager[None]:
    """Inside the ``with`` block, every supported MLP module of ``models`` runs :func:`gated_forward`; their own
    forwards are back afterwards (also on an error). Re-entrant: modules already swapped are left to the outer
    block."""
    from alignment_probe.engine.swap import block_parts, swapped_forwards

    # the mark: True where b_out is all zeros too
    return swapped_forwards(models, block_parts("mlp"), gated_forward, supports_lean_mlp, _MARK,
                            lambda mlp: {_MARK: not bool(mlp.b_out.any())})
