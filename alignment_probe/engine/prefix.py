"""Forwards of a pair's shared prompt once, and of its two completions continued from it.

A pair's two sequences share BOS + prompt. By causality the prompt positions of a run depend only
on the prompt's inputs, so when both runs of a pair see the same inputs at the prompt positions
(the clean runs always; a patched run when its patch is the same on both prompts) the prompt is
computed once and each completion continues from its keys and values — the model's own key/value cache,
through the backend seam (``Backend.run_prompts``/``run_continuations``), from any start block.

How a batch of continuations of prompts of different lengths stays exact:

* prompt forwards are right-padded; each prompt's keys/values are kept unpadded (an opaque ``PromptKV`` the
  backend made);
* a continuation batch gathers its rows' prompt keys/values right-padded, masks the padded prompt keys and
  places completion token j of a row with a P-token prompt at position P + j, as in the full sequence (the
  backend does this: backends/hooked.py with TransformerLens's frozen key/value cache);
* the first completion token is predicted by the prompt's last position: the prompt forward keeps
  that final residual, the continuation scores the rest.

Where the backend says a continuation would not reproduce the full sequence (ALiBi, shortformer, local
attention …: ``Backend.shares_prompt_kv``), the engine runs full sequences (:func:`supports_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import Backend, Hooks, PromptKV, length_mask, pad_stack

__all__ = ["PromptState", "length_mask", "pad_stack", "run_continuations", "run_prompts", "supports_prefix", "writing"]

CaptureFn = Callable[[str], bool]


def supports_prefix(model: Backend | Any) -> bool:
    """Whether continuing from a key/value cache reproduces the full sequence for this model (a backend, or a
    native model: its backend)."""
    return backend_of(model).shares_prompt_kv()


@dataclass
class PromptState:
    """What the continuations of one prompt need: its keys and values at every block the forward
    ran (the backend's, opaque), and the final residual at its last position."""

    kv: PromptKV
    last: Float[Tensor, " d_model"]
    length: int


def writing(hook: str | None, written: Tensor | None) -> Hooks:
    """The hooks that replace the activation at ``hook`` by ``written`` (none if ``hook`` is None)."""
    if hook is None or written is None:
        return ()
    return [(hook, lambda act, hook: written.to(act.dtype))]


@torch.inference_mode()
def run_prompts(
    model: Backend | Any,
    start: int | None,
    inputs: Sequence[Tensor],
    *,
    hook: str | None = None,
    written: Sequence[Tensor] | None = None,
    capture: CaptureFn | None = None,
) -> tuple[list[PromptState], dict[str, Tensor], Float[Tensor, "batch pos d_model"]]:
    """Forward right-padded prompts and keep what their continuations need.

    ``inputs``: token ids ``[len]`` (``start`` None: from the embedding) or residuals ``[len, d_model]``
    (start at block ``start``). Returns one :class:`PromptState` per prompt, the captured
    activations ``[batch, width, d_model]`` and the final residual.
    """
    backend = backend_of(model)
    device = backend.device
    lengths = [int(t.shape[0]) for t in inputs]
    width = max(lengths)
    x = pad_stack(list(inputs), width).to(device)
    w = None if written is None else pad_stack(list(written), width).to(device)
    out, acts, kvs = backend.run_prompts(x, lengths, start_at_layer=start, hooks=writing(hook, w), capture=capture)
    states = [PromptState(kv, out[b, n - 1], n) for b, (kv, n) in enumerate(zip(kvs, lengths))]
    return states, acts, out


@torch.inference_mode()
def run_continuations(
    model: Backend | Any,
    start: int | None,
    prompts: Sequence[PromptState],
    inputs: Sequence[Tensor],
    *,
    hook: str | None = None,
    written: Sequence[Tensor] | None = None,
    capture: CaptureFn | None = None,
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """Forward completions, row r continuing prompt ``prompts[r]`` (rows may share a prompt).

    ``inputs`` as in :func:`run_prompts`, for the completion positions only. Returns the final
    residual ``[batch, width, d_model]`` and the captured activations, completion positions only.
    """
    backend = backend_of(model)
    device = backend.device
    lengths = [int(t.shape[0]) for t in inputs]
    width = max(lengths)
    x = pad_stack(list(inputs), width).to(device)
    w = None if written is None else pad_stack(list(written), width).to(device)
    return backend.run_continuations(
        x, lengths, [p.kv for p in prompts], start_at_layer=start, hooks=writing(hook, w), capture=capture
    )
