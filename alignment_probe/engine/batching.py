"""Which sequences share a forward: batches of similar length, cut where padding would cost more
than one more forward.

Sorting by length and cutting every ``batch_size`` sequences still pads a short sequence to the
longest of its batch when everything fits in one batch (a chunk of 8 pairs is 16 sequences). The
planner instead minimises, over the sorted lengths, ``Σ_batches (overhead + n_rows · longest)``:
padded tokens plus a fixed per-forward cost expressed in tokens (Python, kernel launches), with at
most ``batch_size`` rows per batch. That is a 1-D dynamic programme, O(n · batch_size), and it is
deterministic (ties keep the stable sort order).
"""

from __future__ import annotations

from typing import Sequence


def plan_batches(lengths: Sequence[int], batch_size: int, overhead_tokens: float) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches (each sorted by length, shortest first)."""
    return _plan(lengths, batch_size, overhead_tokens)[0]


def plan_cost(lengths: Sequence[int], batch_size: int, overhead_tokens: float) -> float:
    """The planner's cost of its best plan: Σ (overhead + rows · longest), in token-equivalents."""
    return _plan(lengths, batch_size, overhead_tokens)[1]


def _plan(lengths: Sequence[int], batch_size: int, overhead_tokens: float) -> tuple[list[list[int]], float]:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n == 0:
        return [], 0.0
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the j shortest
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - batch_size), j):
            cost = best[i] + overhead_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1], best[n]


def overhead_tokens(cfg) -> float:
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
    return 12.0 + 1e6 / cfg.d_model ** 2
