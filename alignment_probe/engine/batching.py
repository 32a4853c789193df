"""Which sequences share a forward: batches of similar length, cut where padding would cost more
than one more forward.

Sorting by length and cutting every ``batch_size`` sequences still pads a short sequence to the
longest of its batch when everything fits in one batch (a chunk of 8 pairs is 16 sequences). The
planner instead minimises, over the rows sorted by length, ``Σ_batches cost(batch)`` with at most
``batch_size`` rows per batch, where a batch of n rows padded to W tokens, attending to C tokens of
context before them (a continuation's prompt keys, padded to the batch's longest prompt), costs

    overhead + n · W · (1 + (C + W) / attention_tokens)

in token-equivalents: a fixed per-forward cost (Python, kernel dispatch, reading the weights), the
padded tokens, and the attention over the padded keys, which grows with their number (on the bundled
model at 100 keys attention is ~40 % of a token's cost). Rows with context are sorted by context +
length, so continuations of similar prompts share a batch. That is a 1-D dynamic programme,
O(n · batch_size), and it is deterministic (ties keep the stable sort order).
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    overhead_tokens: float,
    *,
    context: Sequence[int] | None = None,
    attention_tokens: float = math.inf,
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches (each in the planner's order, shortest first)."""
    return _plan(lengths, batch_size, overhead_tokens, context, attention_tokens)[0]


def plan_cost(
    lengths: Sequence[int],
    batch_size: int,
    overhead_tokens: float,
    *,
    context: Sequence[int] | None = None,
    attention_tokens: float = math.inf,
) -> float:
    """The planner's cost of its best plan, in token-equivalents (see the module docstring)."""
    return _plan(lengths, batch_size, overhead_tokens, context, attention_tokens)[1]


def _plan(
    lengths: Sequence[int],
    batch_size: int,
    overhead_tokens: float,
    context: Sequence[int] | None,
    attention_tokens: float,
) -> tuple[list[list[int]], float]:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    ctx = list(context) if context is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: ctx[i] + lengths[i])
    n = len(order)
    if n == 0:
        return [], 0.0
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the first j rows in order
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = keys = 0
        for i in range(j - 1, max(0, j - batch_size) - 1, -1):  # the batch order[i:j], grown to the left
            width, keys = max(width, lengths[order[i]]), max(keys, ctx[order[i]])
            cost = best[i] + overhead_tokens + (j - i) * width * (1 + (keys + width) / attention_tokens)
            if cost <= best[j]:  # on a tie the longer batch (fewer forwards), as scanning upwards with <
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1], best[n]


def attention_tokens(cfg: Any) -> float:
    """How many attended keys double a token's cost: the ``attention_tokens`` of the planner's cost.

    A token's cost in the blocks grows with d_model² and its attention with (keys · d_model), so this
    grows with d_model. Measured on this project's CPU machine, 1 thread, bundled d_model-128 model: a
    forward costs ~50 µs per token plus ~0.22 µs per token and key (doubling at ~230 keys; 1.8 ·
    d_model). On a GPU attention over a few thousand keys is cheap: no term.
    """
    if str(cfg.device).startswith("cuda"):
        return math.inf
    return 1.8 * cfg.d_model


def overhead_tokens(cfg: Any) -> float:
    """A forward's fixed cost in token-equivalents, from the model's width and device.

    On a CPU a forward pays, whatever its size, ~0.5 ms of Python and kernel dispatch per block — worth
    ~10⁶ / d_model² tokens, since a token's cost grows with d_model² — and reads every weight from
    memory once, worth ~12 tokens of compute at any width (~60 GFLOP/s per core against ~10 GB/s).
    Measured on this project's CPU machine, 1 thread: the bundled 8-block d_model-128 model costs
    ~4 ms + ~50 µs per token per forward (~80 tokens; this gives 73; the whole default run's patched
    stage is cheapest at 50–100); at d_model 512 an earlier 2-thread measurement gave ~27 (this gives
    16). On a GPU a forward costs about the same whatever its size up to thousands of tokens, so padding
    is nearly free and fewer, larger batches win.
    """
    if str(cfg.device).startswith("cuda"):
        return 4096.0
    return 12.0 + 1e6 / cfg.d_model**2
