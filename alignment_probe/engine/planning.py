"""Planning the fast engine's forwards: which hook points the clean runs cache, the patched runs as items (a repeat
of another's inputs runs once), prompts run once for the completions that continue them, and the batch planner's
cost model that cuts batches and chunks and decides whether sharing prompts pays (batching.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from alignment_probe.engine.batching import attention_tokens, overhead_tokens, plan_batches, plan_cost
from alignment_probe.engine.prefix import PromptState, supports_prefix
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.engine.work import WorkAccounting
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair

if TYPE_CHECKING:
    from alignment_probe.pair import Twins


def cache_names(specs: Sequence[PatchSpec]) -> dict[str, set[str]]:
    """Hook names each model must cache: the patched hook (target and source) and the start input."""
    need: dict[str, set[str]] = defaultdict(set)
    for s in specs:
        need[s.key.source].add(s.name)
        need[s.key.target].add(s.name)
        if s.site.enters_block is None:  # written inside the block: the run starts from its resid_pre
            need[s.key.target].add(hook_name(s.key.layer, "resid_pre"))
    return need


@dataclass
class Item:
    """One patched run of one sequence."""

    spec_index: int
    seq: ScoredSequence
    # [pos, d_model]: the start residual; or [2, pos, d_model]: start residual, written activation; for a per-head
    # hook (z, k, v) the pair (start residual [pos, d_model], written activation [pos, heads, d_head])
    value: Tensor | tuple[Tensor, Tensor]
    unchanged: bool = False  # the patch leaves the target's activation bit-for-bit as it was
    clean_prompt: bool = False  # ... on the prompt positions at least (the run's prompt is the clean prompt)
    # a transplant whose hybrid has exactly one model's weights: that model's clean run is the patched run
    same_as: str | None = None


class _Repeats:
    """Patched runs of one target, start block and hook whose inputs are bit-for-bit the same run once: E8's
    ``resid_pre`` at ℓ + 1 is E1's ``resid_post`` at ℓ, a one-sided source patch is one side of E1's run."""

    def __init__(self) -> None:
        self.first: dict[tuple[Any, ...], list[Item]] = defaultdict(list)
        self.alias: dict[tuple[int, int, str], tuple[int, int, str]] = {}

    def seen(self, it: Item) -> bool:
        """Whether an earlier item runs ``it``'s inputs (then ``it`` takes that run's log-prob)."""
        parts = it.value if isinstance(it.value, tuple) else (it.value,)
        key = (it.seq.pair_id, it.seq.side, *(float(v.sum()) for v in parts))  # a cheap filter; torch.equal decides
        for other in self.first[key]:
            others = other.value if isinstance(other.value, tuple) else (other.value,)
            if all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(parts, others)):
                self.alias[(it.spec_index, it.seq.pair_id, it.seq.side)] = (
                    other.spec_index,
                    it.seq.pair_id,
                    it.seq.side,
                )
                return True
        self.first[key].append(it)
        return False


@dataclass
class _Shared:
    """A patched prompt run once for the completions that continue it (both sides of a pair, or one)."""

    prompt: Tensor | None  # [P, d_model] or [2, P, d_model]; None: ``state`` is the clean prompt's
    items: list[Item] = field(default_factory=list)  # their value holds the whole sequence
    state: PromptState | None = None


class BatchPlanning(WorkAccounting):
    """The batch planner's view of an engine: its batch size, memory budget and cost model."""

    batch_size: int
    memory_budget_gb: float
    share_prompts: bool | str
    overhead: float | None
    attention: float | None

    def _overhead(self, model: Any) -> float:
        return self.overhead if self.overhead is not None else overhead_tokens(model)

    def _costs(self, model: Any) -> dict[str, float]:
        """The planner's cost model for this model: its per-forward and attention terms (batching.py)."""
        return {
            "overhead_tokens": self._overhead(model),
            "attention_tokens": self.attention if self.attention is not None else attention_tokens(model),
        }

    def _plan(self, model: Any, lengths: Sequence[int], context: Sequence[int] | None = None) -> list[list[int]]:
        return plan_batches(lengths, self.batch_size, context=context, **self._costs(model))

    def _shares(self, model: Any) -> bool:
        return bool(self.share_prompts) and supports_prefix(model)

    def _worth_sharing(
        self,
        model: Any,
        full: Sequence[int],
        prompts: Sequence[int],
        completions: Sequence[int],
        context: Sequence[int],
    ) -> bool:
        """Whether prompt + continuation forwards (``context``: each continuation's prompt length) beat full
        sequences (always, unless "auto")."""
        if self.share_prompts != "auto":
            return True
        c = self._costs(model)
        per_forward, attention = c["overhead_tokens"], c["attention_tokens"]
        shared = plan_cost(prompts, self.batch_size, per_forward, attention_tokens=attention) + plan_cost(
            completions, self.batch_size, per_forward, context=context, attention_tokens=attention
        )
        return shared < plan_cost(full, self.batch_size, per_forward, attention_tokens=attention)

    def pairs_per_chunk(self, pair: Twins, tokenized: Sequence[TokenizedPair], n_cached: int) -> int:
        """How many pairs' caches fit the memory budget (at least one)."""
        width = max(max(len(t.prompt_ids) + len(t.completion_ids(s)) for s in SIDES) for t in tokenized)
        bytes_per_pair = 2 * max(n_cached, 1) * width * pair.d_model * pair.backends()["base"].dtype.itemsize
        return max(1, int(self.memory_budget_gb * 2**30 // bytes_per_pair))

    def _chunks(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], need: dict[str, set[str]]
    ) -> list[Sequence[TokenizedPair]]:
        per_chunk = self.pairs_per_chunk(pair, tokenized, sum(len(v) for v in need.values()))
        return [tokenized[lo : lo + per_chunk] for lo in range(0, len(tokenized), per_chunk)]
