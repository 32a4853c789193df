"""The engines' unembedding: TransformerLens's, without adding a bias that is all zeros.

Most families have no unembedding bias, but TransformerLens's ``Unembed`` keeps a zero ``b_U`` and adds it:
``F.linear`` copies it into the ``[positions, d_vocab]`` logits before the product accumulates onto them,
about a fifth of the unembedding's time at d_model 128. Adding zero changes no value, so inside
:func:`lean_unembed` such a module runs :func:`unembed_forward`, the same product without the bias: the same
bits, its hook points (``hook_in``, ``hook_out``) firing on the same values. Any other unembedding (a soft-capped
one, a module with a non-zero bias or a forward someone else has replaced) keeps its own forward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

_MARK = "_alignment_probe_lean_unembed"  # set on the module while lean_unembed has swapped its forward


def supports_lean_unembed(unembed: Any) -> bool:
    """Whether :func:`unembed_forward` computes what this module computes: a plain ``Unembed`` whose ``b_U`` is
    all zeros."""
    from transformer_lens.components import Unembed

    return type(unembed) is Unembed and "forward" not in unembed.__dict__ and not bool(unembed.b_U.any())


def unembed_forward(self: Any, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """``Unembed.forward`` without adding ``b_U`` (all zeros)."""
    return self.hook_out(F.linear(self.hook_in(residual), self.W_U.T.contiguous()))


def lean_unembed(*models: Any) -> contextlib.AbstractContextManager[None]:
    """Inside the ``with`` block, each model's unembedding runs :func:`unembed_forward` where it is supported; its
    own forward is back afterwards (also on an error)."""
    from alignment_probe.engine.swap import swapped_forwards

    return swapped_forwards(models, lambda model: (getattr(model, "unembed", None),), unembed_forward,
                            supports_lean_unembed, _MARK, lambda unembed: {_MARK: True})
