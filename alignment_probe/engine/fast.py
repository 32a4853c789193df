"""The fast engine: the same numbers as the reference engine, with the least work we know how to do.

What it avoids, and how:

* **Clean runs once.** Each model runs once per sequence (caching only the hook points the
  conditions need); the clean log-probs come from that same run (:meth:`FastEngine.clean_scores`
  hands them out, so scoring needs no forward of its own).
* **Shared prompts.** A pair's two sequences share BOS + prompt, and by causality the prompt
  positions see only the prompt: in the clean runs, and in every patched run whose patch writes the
  same values on both prompts (scopes ``all``, ``prompt``, ``last_prompt``, ``all_but_bos`` of a
  side-independent intervention, any scope that leaves the prompt alone). The prompt then runs once
  per pair and condition, and both completions continue from its keys and values (prefix.py). Runs
  whose two prompts differ (a one-sided patch, noise seeded per side) run as full sequences. A patch that
  leaves the prompt as it was (scope ``completion``: E5's vectors) continues the clean run's prompt: its
  prompt does not run again.
* **No recomputation below the patch.** A patch at block ℓ cannot change anything before it, so a
  patched run starts at ℓ from the target's cached residual (``start_at_layer``). A patch of
  ``resid_post`` at ℓ *is* a new ``resid_pre`` of ℓ+1, so it starts one block later still.
* **Many patched runs per forward.** Every (condition, sequence) with the same start block and hook
  point can share a forward, whatever the layer sweep, control, α or pair; batches are cut from
  the length-sorted runs where padding would cost more than another forward (batching.py).
* **Completion-only unembedding.** Only completion positions are normed, unembedded and
  log-softmaxed (see scoring.py).
* **No run that cannot change anything.** A patch that leaves the target's activation bit-for-bit
  as it was (the identity control, α = 0) reuses the clean log-prob: downstream of an unchanged
  activation the computation *is* the clean run. This also makes those controls exactly zero however
  a batched forward happens to round (multi-threaded CPU kernels round differently per batch shape,
  by ~1e-5 nats). The reference engine still recomputes them.
* **No run twice.** Patched runs of different conditions whose inputs are bit-for-bit the same
  (``resid_pre`` at ℓ + 1 and ``resid_post`` at ℓ; a one-sided patch and the same side of the
  two-sided one) run once and share the log-prob, so such rows also agree exactly.
* **Weight transplants (E8) are patched runs too.** A window of the source's blocks inside the target
  starts at its first block from the target's cached residual (the source's embedding when the window
  starts at block 0), with the window's modules swapped in for that forward (hybrid.py), batched and
  prompt-shared like any other run (its prompt runs again: the window's blocks change its keys and values).
  A hybrid whose weights are the target's (or the source's) reuses that model's clean log-prob, as the
  identity control does.
* **Per-token log-probs come with every run.** :meth:`FastEngine.runs` yields each sequence's log-prob and
  its completion tokens' log-probs from the same forwards (``run_tokens``: the long table of E9, effects.py);
  the sums are the per-pair table's, bit for bit.
* **Bounded memory.** Pairs stream through in chunks whose caches fit a memory budget; the patched
  runs of one start block are materialised a wave at a time.

Right padding needs no attention mask for real tokens, also with ``start_at_layer``; continuations
pass the mask of their padded prompt keys (prefix.py).

**Work accounting** (:class:`WorkCounter`, per stage in ``FastEngine.work_by_stage``): ``computed``
is Σ over forwards of blocks run × tokens in the padded batch; ``floor`` is the least block-token
work of the same task: each needed run from its start block (a repeat of another's inputs is not
needed), no padding, each shareable prompt counted once per pair and condition and a prompt the patch
left as it was not at all (the clean runs computed it), whether or not ``share_prompts`` is on.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from alignment_probe.engine.batching import attention_tokens, overhead_tokens, plan_batches, plan_cost
from alignment_probe.engine.hybrid import PartComparison, transplanted
from alignment_probe.engine.outputs import ExactEngine, Run
from alignment_probe.engine.prefix import (
    PromptState,
    pad_stack,
    run_continuations,
    run_prompts,
    supports_prefix,
    writing,
)
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.interventions import (
    AddVector,
    GaussianNoise,
    Interpolate,
    Intervention,
    Project,
    RandomDirection,
    Replace,
    SequenceContext,
    apply_in_scope,
    scope_mask,
)
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair, make_batch, pair_sequences
from alignment_probe.vocab import HEAD_HOOKS

if TYPE_CHECKING:
    import pandas as pd

    from alignment_probe.pair import Twins

Key = tuple[int, str]  # (pair_id, side)
RunKey = tuple[int, int, str]  # (spec index, pair_id, side)
Scored = tuple[float, Tensor]  # log p(completion | prompt) and its per-token log-probs [n] (CPU, float32)
Swap = tuple[str, int, int] | None  # a transplant's (source model, first block, last block + 1); None: no swap

# Whether an intervention writes the same values on the prompt positions of a pair's two runs when
# their inputs there are the same. Replace/Interpolate/Project are functions of the activations at
# each position; AddVector adds one vector per pair (v+, v− or v± are the pair's, not the side's).
# The random controls draw from a generator seeded per side, so their prompt values differ.
# An intervention class can declare this itself with a ``same_on_both_prompts`` attribute; an
# undeclared one is shared only when its two prompt values are found equal.
SAME_ON_BOTH_PROMPTS: dict[type, bool] = {
    Replace: True,
    Interpolate: True,
    AddVector: True,
    Project: True,
    GaussianNoise: False,
    RandomDirection: False,
}


def same_on_both_prompts(intervention: Intervention) -> bool | None:
    declared = getattr(intervention, "same_on_both_prompts", None)
    if declared is not None:
        return bool(declared)
    return SAME_ON_BOTH_PROMPTS.get(type(intervention))


def start_of(spec: PatchSpec) -> tuple[int, str | None]:
    """(block to start the patched run at, hook name that must be overwritten there or None)."""
    if spec.key.hook in ("resid_pre", "blocks"):  # a transplant starts from the residual entering its window
        return spec.key.layer, None
    if spec.key.hook == "resid_post":
        return spec.key.layer + 1, None
    return spec.key.layer, spec.name


def swap_of(spec: PatchSpec) -> Swap:
    window = spec.window
    return None if window is None else (spec.key.source, window.start, window.stop)


def cache_names(specs: Sequence[PatchSpec]) -> dict[str, set[str]]:
    """Hook names each model must cache: the patched hook (target and source) and the start input."""
    need: dict[str, set[str]] = defaultdict(set)
    for s in specs:
        need[s.key.source].add(s.name)
        need[s.key.target].add(s.name)
        if s.key.hook not in ("resid_pre", "resid_post"):
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


@dataclass
class ChunkCache:
    """Clean activations and log-probs of one chunk of pairs."""

    acts: dict[str, dict[str, dict[Key, Tensor]]]  # model -> hook name -> (pair_id, side) -> [length, d_model]
    clean: dict[str, dict[Key, float]]  # model -> (pair_id, side) -> logp
    seqs: dict[Key, ScoredSequence]
    tokens: dict[str, dict[Key, Tensor]]  # model -> (pair_id, side) -> per completion token logp [n]
    # model -> pair_id -> the clean prompt's keys and values (when the clean runs shared prompts): a patched run
    # that leaves the prompt as it was continues from them, its prompt not run again
    prompts: dict[str, dict[int, PromptState]] = field(default_factory=dict)


@dataclass
class WorkCounter:
    """Block-token products: what the engine computed (padding included) and the floor, the least
    work of the same task (no padding, shareable prompts once). Their ratio is the overhead."""

    computed: int = 0
    floor: int = 0
    forwards: int = 0

    def add_computed(self, n_blocks: int, tokens: int) -> None:
        self.computed += n_blocks * tokens
        self.forwards += 1

    def add_floor(self, n_blocks: int, tokens: int) -> None:
        self.floor += n_blocks * tokens

    @property
    def ratio(self) -> float | None:
        return self.computed / self.floor if self.floor else None


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


class FastEngine(ExactEngine):
    """``FastEngine(batch_size, memory_budget_gb, share_prompts="auto", overhead_tokens=None,
    keep_budget_gb=0.5, attention_tokens=None)``.

    ``share_prompts``: ``"auto"`` (default) shares prompts where the batch planner's cost model
    (batching.py: padded tokens, a per-forward cost of ``overhead_tokens`` and the attention over padded
    keys priced by ``attention_tokens``, both by default from the model's width) says the
    prompt-then-continuation forwards are cheaper than full sequences — on a tiny model the extra
    forwards can cost more than the prompt tokens they save; ``True`` always shares where the prompts
    are the same; ``False`` runs every sequence in full. All three give the same numbers to float
    precision. ``keep_budget_gb``: the most clean activations a suite run may ask it to keep for its
    fits and whole-data computations (``keep``). Every forward is TransformerLens's own (its modules,
    its key/value cache); the engine chooses which forwards to run, not how a block computes."""

    name = "fast"

    def __init__(
        self,
        batch_size: int = 32,
        memory_budget_gb: float = 2.0,
        share_prompts: bool | str = "auto",
        overhead_tokens: float | None = None,
        keep_budget_gb: float = 0.5,
        attention_tokens: float | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.memory_budget_gb = memory_budget_gb
        if share_prompts not in (True, False, "auto"):
            raise ValueError(f"share_prompts must be True, False or 'auto', got {share_prompts!r}")
        self.share_prompts = share_prompts
        self.overhead = overhead_tokens
        self.attention = attention_tokens
        self.work = WorkCounter()
        self.work_by_stage = {"clean": WorkCounter(), "patched": WorkCounter()}
        # model -> (pair_id, side) -> clean logp, for every pair this engine has run (see clean_scores)
        self.clean_logprobs: dict[str, dict[Key, float]] = defaultdict(dict)
        self.clean_tokens: dict[str, dict[Key, Tensor]] = defaultdict(dict)  # ... and per completion token
        self._comparisons: dict[tuple[int, int], PartComparison] = {}  # which parts of two models are equal
        # Clean activations kept across calls: the hook names ``keep`` gives per model are captured by every clean
        # pass and kept in ``kept`` (model -> hook -> (pair_id, side) -> [length, ...]), so a later stage or a
        # whole-data computation of the same run reads them instead of running the models again (the suite sets
        # ``keep`` when they fit its memory budget; see clean_pass).
        self.keep: dict[str, set[str]] = {}
        self.keep_budget_gb = keep_budget_gb
        self.kept: dict[str, dict[str, dict[Key, Tensor]]] = defaultdict(lambda: defaultdict(dict))

    # -- bookkeeping -------------------------------------------------------------------------
    def _computed(self, stage: str, n_blocks: int, tokens: int) -> None:
        self.work.add_computed(n_blocks, tokens)
        self.work_by_stage[stage].add_computed(n_blocks, tokens)

    def _floor(self, stage: str, n_blocks: int, tokens: int) -> None:
        self.work.add_floor(n_blocks, tokens)
        self.work_by_stage[stage].add_floor(n_blocks, tokens)

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
        shared = plan_cost(prompts, self.batch_size, **c) + plan_cost(
            completions, self.batch_size, context=context, **c
        )
        return shared < plan_cost(full, self.batch_size, **c)

    def pairs_per_chunk(self, pair: Twins, tokenized: Sequence[TokenizedPair], n_cached: int) -> int:
        """How many pairs' caches fit the memory budget (at least one)."""
        width = max(max(len(t.prompt_ids) + len(t.completion_ids(s)) for s in SIDES) for t in tokenized)
        bytes_per_pair = 2 * max(n_cached, 1) * width * pair.d_model * pair.backends()["base"].dtype.itemsize
        return max(1, int(self.memory_budget_gb * 2**30 // bytes_per_pair))

    # -- clean runs --------------------------------------------------------------------------
    def _need(self, specs: Sequence[PatchSpec]) -> dict[str, set[str]]:
        """Hook names each model's clean runs cache for ``specs``, and those ``keep`` asks for."""
        need = cache_names(specs)
        for model, names in self.keep.items():
            need[model] |= names
        return need

    def _chunks(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], need: dict[str, set[str]]
    ) -> list[Sequence[TokenizedPair]]:
        per_chunk = self.pairs_per_chunk(pair, tokenized, sum(len(v) for v in need.values()))
        return [tokenized[lo : lo + per_chunk] for lo in range(0, len(tokenized), per_chunk)]

    def clean_pass(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec] = ()) -> None:
        """The clean runs :meth:`run` makes of these pairs for ``specs``, without the patched runs: the same
        chunks and batches, hence the same numbers. Fills ``kept`` and the clean log-probs where they are
        missing (e.g. for parts a resumed run loaded instead of computing); runs nothing where they are not."""
        from alignment_probe.numerics import check_clean

        need = self._need(specs)
        for chunk in self._chunks(pair, tokenized, need):
            check_clean(pair, self.clean_chunk(pair, chunk, need).clean, chunk)

    # -- the clean activations a run keeps for its fits (the suite's one clean pass) ---------------
    def keep_activations(self, names: dict[str, set[str]]) -> None:
        """From now on every clean pass also keeps the activations at these hook names (model → names), for the
        whole data: :meth:`clean_activations` hands them out."""
        self.keep = {m: set(v) for m, v in names.items()}

    def clean_activations(
        self, pair: Twins, groups: Sequence[Sequence[TokenizedPair]], specs: Sequence[PatchSpec] = ()
    ) -> dict[str, dict[str, dict[Key, Tensor]]]:
        """The kept activations of every pair of ``groups`` (model → hook name → (pair_id, side) → [length, ...]):
        a group whose activations were kept already (its patched runs ran here) is not run again; any other runs
        its clean pass for ``specs`` exactly as :meth:`run` would (same chunks and batches, so the same numbers
        as an uninterrupted run: a resumed run loaded those groups' effects instead of computing them)."""
        for group in groups:
            if not self._holds(group):
                self.clean_pass(pair, group, specs)
        return self.kept

    def release_activations(self) -> None:
        """Stop keeping activations and free those kept."""
        self.keep = {}
        self.kept.clear()

    def _holds(self, group: Sequence[TokenizedPair]) -> bool:
        kept = self.kept
        return all(
            (t.pair_id, side) in kept.get(model, {}).get(name, {})
            for t in group
            for side in SIDES
            for model, names in self.keep.items()
            for name in names
        )

    def _from_kept(self, pair: Twins, chunk: Sequence[TokenizedPair], need: dict[str, set[str]]) -> ChunkCache | None:
        """The chunk's clean runs read from ``kept``, when it holds every activation and log-prob ``need`` asks for."""
        seqs = pair_sequences(chunk)
        keys = [(s.pair_id, s.side) for s in seqs]
        models = [m for m in pair.backends() if m in need]
        held = self.kept
        if not models or not all(
            k in self.clean_logprobs[m] and all(n in held[m] and k in held[m][n] for n in need[m])
            for m in models
            for k in keys
        ):
            return None
        return ChunkCache(
            {m: {n: {k: held[m][n][k] for k in keys} for n in need[m]} for m in models},
            {m: {k: self.clean_logprobs[m][k] for k in keys} for m in models},
            dict(zip(keys, seqs)),
            {m: {k: self.clean_tokens[m][k] for k in keys} for m in models},
        )

    @torch.inference_mode()
    def clean_chunk(self, pair: Twins, chunk: Sequence[TokenizedPair], need: dict[str, set[str]]) -> ChunkCache:
        """Clean runs of every model in ``need``, caching the hook points it names (read from ``kept`` when it
        holds them all: the runs were made before, by this engine, on the same chunk)."""
        held = self._from_kept(pair, chunk, need)
        if held is not None:
            return held
        seqs = pair_sequences(chunk)
        acts, clean, tokens, prompts = {}, {}, {}, {}
        for name, model in pair.backends().items():
            if name not in need:  # neither patched nor a source: its clean run is not needed
                continue
            names = set(need[name])
            capture = (lambda n, names=names: n in names) if names else None
            n_blocks = model.n_layers
            if supports_prefix(model):
                self._floor(
                    "clean", n_blocks, sum(len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in chunk)
                )
            else:
                self._floor("clean", n_blocks, sum(s.length for s in seqs))
            if self._shares(model) and self._worth_sharing(
                model,
                [s.length for s in seqs],
                [len(t.prompt_ids) for t in chunk],
                [len(s.completion_ids) for s in seqs],
                [s.completion_start for s in seqs],
            ):
                clean[name], tokens[name], acts[name], prompts[name] = self._clean_shared(model, chunk, names, capture)
            else:
                clean[name], tokens[name], acts[name] = self._clean_full(model, seqs, names, capture)
            self.clean_logprobs[name].update(clean[name])
            self.clean_tokens[name].update(tokens[name])
            for n in self.keep.get(name, ()):
                for key, t in acts[name].get(n, {}).items():
                    self.kept[name][n][key] = t.clone()  # not a view that would hold its padded batch
        return ChunkCache(acts, clean, {(s.pair_id, s.side): s for s in seqs}, tokens, prompts)

    def _clean_full(
        self, model: Any, seqs: list[ScoredSequence], names: set[str], capture: Any
    ) -> tuple[dict[Key, float], dict[Key, Tensor], dict[str, dict[Key, Tensor]]]:
        clean: dict[Key, float] = {}
        tokens: dict[Key, Tensor] = {}
        acts: dict[str, dict[Key, Tensor]] = {n: {} for n in names}
        for rows in self._plan(model, [s.length for s in seqs]):
            group = [seqs[r] for r in rows]
            batch = make_batch(group)
            resid, cache = model.run(batch.tokens, stop_at_layer=model.n_layers, capture=capture)
            self._computed("clean", model.n_layers, batch.tokens.numel())
            for s, v, per_token in zip(group, *batch_logprobs(model, resid, batch)):
                clean[(s.pair_id, s.side)], tokens[(s.pair_id, s.side)] = v, per_token
            for n in names:
                for b, s in enumerate(group):
                    acts[n][(s.pair_id, s.side)] = cache[n][b, : s.length]
        return clean, tokens, acts

    def _clean_shared(
        self, model: Any, chunk: Sequence[TokenizedPair], names: set[str], capture: Any
    ) -> tuple[dict[Key, float], dict[Key, Tensor], dict[str, dict[Key, Tensor]], dict[int, PromptState]]:
        n_blocks = model.n_layers
        states: dict[int, PromptState] = {}
        prompt_acts: dict[str, dict[int, Tensor]] = {n: {} for n in names}
        for rows in self._plan(model, [len(t.prompt_ids) for t in chunk]):
            group = [chunk[r] for r in rows]
            inputs = [torch.tensor(t.prompt_ids, dtype=torch.long) for t in group]
            st, a, _ = run_prompts(model, None, inputs, capture=capture)
            self._computed("clean", n_blocks, len(group) * max(len(t.prompt_ids) for t in group))
            for b, t in enumerate(group):
                states[t.pair_id] = st[b]
                for n in names:
                    prompt_acts[n][t.pair_id] = a[n][b, : len(t.prompt_ids)]
        seqs = pair_sequences(chunk)
        clean: dict[Key, float] = {}
        tokens: dict[Key, Tensor] = {}
        acts: dict[str, dict[Key, Tensor]] = {n: {} for n in names}
        for rows in self._plan(model, [len(s.completion_ids) for s in seqs], [s.completion_start for s in seqs]):
            group = [seqs[r] for r in rows]
            inputs = [torch.tensor(s.completion_ids, dtype=torch.long) for s in group]
            prompts = [states[s.pair_id] for s in group]
            out, a = run_continuations(model, None, prompts, inputs, capture=capture)
            self._computed("clean", n_blocks, len(group) * max(len(s.completion_ids) for s in group))
            for s, v, per_token in zip(group, *continuation_logprobs(model, prompts, out, group)):
                clean[(s.pair_id, s.side)], tokens[(s.pair_id, s.side)] = v, per_token
            for n in names:
                for b, s in enumerate(group):
                    acts[n][(s.pair_id, s.side)] = torch.cat(
                        [prompt_acts[n][s.pair_id], a[n][b, : len(s.completion_ids)]]
                    )
        return clean, tokens, acts, states

    def clean_scores(self, pair: Twins, tokenized: Sequence[TokenizedPair]) -> pd.DataFrame:
        """The scores table of ``tokenized`` (the columns of :func:`alignment_probe.scoring.score_pairs`)
        from this engine's clean runs: free after :meth:`run` on the same pairs, else one clean pass."""
        from alignment_probe.numerics import check_clean
        from alignment_probe.scoring import score_table

        models = pair.backends()
        keys = [(t.pair_id, s) for t in tokenized for s in SIDES]
        missing = [
            t for t in tokenized if any((t.pair_id, s) not in self.clean_logprobs[m] for m in models for s in SIDES)
        ]
        if missing:
            need = {m: set(self.keep.get(m, ())) for m in models}  # capture what is kept: one clean pass
            for chunk in self._chunks(pair, missing, need):
                cc = self.clean_chunk(pair, chunk, need)
                check_clean(pair, cc.clean, chunk)
        return score_table(tokenized, {m: {k: self.clean_logprobs[m][k] for k in keys} for m in models})

    # -- patched runs ------------------------------------------------------------------------
    def _parts(self, pair: Twins, target: str, source: str) -> PartComparison:
        models = pair.backends()
        key = (id(models[target]), id(models[source]))
        if key not in self._comparisons:
            self._comparisons[key] = PartComparison(models[target], models[source])
        return self._comparisons[key]

    @contextlib.contextmanager
    def _hybrid(self, pair: Twins, target: str, swap: Swap) -> Iterator[Any]:
        """The target model, with a transplant's window of source blocks swapped in (hybrid.py) if ``swap``."""
        model = pair.backends()[target]
        if swap is None:
            yield model
            return
        source, lo, hi = swap
        with transplanted(model, pair.backends()[source], range(lo, hi)):
            yield model

    def item(self, pair: Twins, spec_index: int, spec: PatchSpec, pair_id: int, side: str, cc: ChunkCache) -> Item:
        """One patched run, with the value it starts from (computed only when its wave runs)."""
        k = spec.key
        src = {s: cc.acts[k.source][spec.name][(pair_id, s)] for s in SIDES}
        seq = cc.seqs[(pair_id, side)]
        ctx = SequenceContext(
            pair_id=pair_id,
            side=side,
            layer=k.layer,
            target=cc.acts[k.target][spec.name][(pair_id, side)],
            source=src[side],
            prompt_len=seq.completion_start,
            length=seq.length,
            source_by_side=src,
            prompt_len_by_side={s: cc.seqs[(pair_id, s)].completion_start for s in SIDES},
            length_by_side={s: cc.seqs[(pair_id, s)].length for s in SIDES},
        )
        patched = apply_in_scope(spec.intervention, ctx, k.scope)
        unchanged = torch.equal(patched, ctx.target)
        if spec.window is not None:  # a transplant: which model, if any, the hybrid's weights are
            same = self._parts(pair, k.target, k.source).hybrid_equals(spec.window)
            # Its prompt is never the clean one unless the hybrid is the target: the window's blocks differ.
            return Item(
                spec_index, seq, patched, unchanged and same == "target", same_as=k.source if same == "source" else None
            )
        p = seq.completion_start
        clean_prompt = unchanged or torch.equal(patched[:p], ctx.target[:p])
        if k.hook in ("resid_pre", "resid_post"):
            return Item(spec_index, seq, patched, unchanged, clean_prompt)
        # Other hook points: start from the target's own resid_pre; a hook writes the patched value.
        start = cc.acts[k.target][hook_name(k.layer, "resid_pre")][(pair_id, side)]
        if k.hook in HEAD_HOOKS:  # a per-head activation [pos, heads, d_head]: its own shape beside the residual
            return Item(spec_index, seq, (start, patched), unchanged)
        return Item(spec_index, seq, torch.stack([start, patched]), unchanged, clean_prompt)

    @torch.inference_mode()
    def run_batch(
        self, pair: Twins, target: str, start: int, hook: str | None, items: list[Item], swap: Swap = None
    ) -> list[Scored]:
        """Full-sequence patched runs of ``items`` in one right-padded forward from block ``start``: each
        one's log p(completion | prompt) and its per-token log-probs."""
        with self._hybrid(pair, target, swap) as model:
            return self._run_batch(model, start, hook, items)

    def _run_batch(self, model: Any, start: int, hook: str | None, items: list[Item]) -> list[Scored]:
        batch = make_batch([it.seq for it in items])
        width = batch.tokens.shape[1]
        written = None
        if hook is None:
            resid = pad_stack([it.value for it in items], width)
        else:
            resid = pad_stack([it.value[0] for it in items], width)
            written = pad_stack([it.value[1] for it in items], width)
        final, _ = model.run(resid, start_at_layer=start, stop_at_layer=model.n_layers, hooks=writing(hook, written))
        self._computed("patched", model.n_layers - start, batch.tokens.numel())
        return list(zip(*batch_logprobs(model, final, batch)))

    @torch.inference_mode()
    def run_shared(
        self, pair: Twins, target: str, start: int, hook: str | None, units: list[_Shared], swap: Swap = None
    ) -> dict[RunKey, Scored]:
        """Each unit's prompt once (none for a clean prompt: its state is the clean run's), then both
        completions continued from it."""
        with self._hybrid(pair, target, swap) as model:
            return self._run_shared(model, start, hook, units)

    def _run_shared(self, model: Any, start: int, hook: str | None, units: list[_Shared]) -> dict[RunKey, Scored]:
        n_blocks = model.n_layers - start
        states: list[PromptState | None] = [u.state for u in units]
        to_run = [i for i, u in enumerate(units) if u.state is None]
        for plan_rows in self._plan(model, [units[i].items[0].seq.completion_start for i in to_run]):
            rows = [to_run[r] for r in plan_rows]
            group = [units[r] for r in rows]
            if hook is None:
                st, _, _ = run_prompts(model, start, [u.prompt for u in group])
            else:
                st, _, _ = run_prompts(
                    model, start, [u.prompt[0] for u in group], hook=hook, written=[u.prompt[1] for u in group]
                )
            self._computed("patched", n_blocks, len(group) * max(u.items[0].seq.completion_start for u in group))
            for r, s in zip(rows, st):
                states[r] = s
        conts = [(states[u_i], it) for u_i, u in enumerate(units) for it in u.items]
        out: dict[RunKey, Scored] = {}
        for rows in self._plan(
            model, [len(it.seq.completion_ids) for _, it in conts], [it.seq.completion_start for _, it in conts]
        ):
            group = [conts[r] for r in rows]
            prompts = [s for s, _ in group]
            seqs = [it.seq for _, it in group]
            if hook is None:
                res, _ = run_continuations(
                    model, start, prompts, [it.value[it.seq.completion_start :] for _, it in group]
                )
            else:
                res, _ = run_continuations(
                    model,
                    start,
                    prompts,
                    [it.value[0, it.seq.completion_start :] for _, it in group],
                    hook=hook,
                    written=[it.value[1, it.seq.completion_start :] for _, it in group],
                )
            self._computed("patched", n_blocks, len(group) * max(len(s.completion_ids) for s in seqs))
            for (_, it), v, per_token in zip(group, *continuation_logprobs(model, prompts, res, seqs)):
                out[(it.spec_index, it.seq.pair_id, it.seq.side)] = (v, per_token)
        return out

    def _shareable(self, spec: PatchSpec, a: Item, b: Item) -> tuple[bool, bool]:
        """(shareable in principle, shareable here): the floor counts the first, the run uses the second."""
        declared = same_on_both_prompts(spec.intervention)
        p = a.seq.completion_start
        prompt_untouched = not bool(scope_mask(spec.key.scope, p, a.seq.length, a.seq.length)[:p].any())
        principle = bool(declared) or prompt_untouched
        if not self.share_prompts or (declared is False and not prompt_untouched):
            return principle, False
        equal = torch.equal(a.value[..., :p, :], b.value[..., :p, :])
        return principle or equal, equal

    def run_group(
        self,
        pair: Twins,
        target: str,
        start: int,
        hook: str | None,
        specs: Sequence[PatchSpec],
        spec_ids: Sequence[int],
        chunk: Sequence[TokenizedPair],
        cc: ChunkCache,
        swap: Swap = None,
    ) -> dict[RunKey, Scored]:
        """Every patched run of the conditions ``spec_ids`` (same target, start block, hook and transplanted
        window) on a chunk: log p(completion | prompt) and its per-token log-probs."""
        model = pair.backends()[target]
        n_blocks = model.n_layers - start
        # Per-head hooks run full sequences (their written activations are not [pos, d_model] residuals).
        per_head = any(specs[i].key.hook in HEAD_HOOKS for i in spec_ids)
        shares = self._shares(model) and not per_head
        units = [(i, t) for i in spec_ids for t in chunk if specs[i].applies_to(t.pair_id)]
        units.sort(key=lambda u: len(u[1].prompt_ids))
        # A wave of (condition, pair) units at a time: their patched values and prompt caches fit the budget.
        width = max(len(t.prompt_ids) + max(len(t.chosen_ids), len(t.rejected_ids)) for t in chunk)
        per_unit = 8 * width * pair.d_model * model.dtype.itemsize * (1 + n_blocks)
        wave = max(self.batch_size, int(self.memory_budget_gb * 2**30 // per_unit))
        patched: dict[RunKey, Scored] = {}
        repeats = _Repeats()
        for lo in range(0, len(units), wave):
            full: list[Item] = []
            shared: list[_Shared] = []
            for i, t in units[lo : lo + wave]:
                sides = [s for s in SIDES if specs[i].patches(s)]
                changed = []
                for side in sides:
                    it = self.item(pair, i, specs[i], t.pair_id, side, cc)
                    same = target if it.unchanged else it.same_as
                    if same is not None:
                        # The target's activation is exactly its own (or a transplant's hybrid has exactly one
                        # model's weights), so the patched run *is* that model's clean run: reuse its log-probs
                        # (this makes the identity control, α = 0 and a transplant of base into base exactly
                        # zero, independent of how a batched forward rounds).
                        patched[(i, t.pair_id, side)] = (
                            cc.clean[same][(t.pair_id, side)],
                            cc.tokens[same][(t.pair_id, side)],
                        )
                    elif not repeats.seen(it):  # a repeat takes its first run's log-prob below
                        changed.append(it)
                principle, here = (
                    self._shareable(specs[i], *changed) if len(changed) == 2 and not per_head else (False, False)
                )
                clean_prompt = bool(changed) and not per_head and all(it.clean_prompt for it in changed)
                if clean_prompt and supports_prefix(model):  # the clean runs computed this prompt already
                    self._floor("patched", n_blocks, sum(len(it.seq.completion_ids) for it in changed))
                elif principle and supports_prefix(model):
                    self._floor("patched", n_blocks, len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids))
                else:
                    self._floor("patched", n_blocks, sum(it.seq.length for it in changed))
                full.extend(changed)
                state = cc.prompts.get(target, {}).get(t.pair_id) if clean_prompt else None
                if shares and state is not None:  # both sides continue the clean prompt's keys and values
                    shared.append(_Shared(None, changed, state))
                elif shares:
                    # Every run continues from a prompt run: its pair's other side's too when both prompts
                    # are the same, else its own (one code path, so one-sided runs add up exactly).
                    p = len(t.prompt_ids)
                    for group in [changed] if here else [[it] for it in changed]:
                        shared.append(_Shared(group[0].value[..., :p, :], group))
            if shared and self._worth_sharing(
                model,
                [it.seq.length for it in full],
                [u.items[0].seq.completion_start for u in shared if u.state is None],
                [len(it.seq.completion_ids) for u in shared for it in u.items],
                [it.seq.completion_start for u in shared for it in u.items],
            ):
                full = []
            else:
                shared = []
            for rows in self._plan(model, [it.seq.length for it in full]):
                batch = [full[r] for r in rows]
                for it, v in zip(batch, self.run_batch(pair, target, start, hook, batch, swap)):
                    patched[(it.spec_index, it.seq.pair_id, it.seq.side)] = v
            if shared:
                patched.update(self.run_shared(pair, target, start, hook, shared, swap))
            repeats.first.clear()  # a wave's values are released with it
        for key, first in repeats.alias.items():
            patched[key] = patched[first]
        return patched

    def runs(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *, progress: bool = False
    ) -> Iterator[Run]:
        """Per (condition, pair): each side's clean and patched (log-prob, per-token log-probs); ``run`` and
        ``run_tokens`` (outputs.py) turn them into the effects table and the long per-token table."""
        from tqdm.auto import tqdm

        from alignment_probe.numerics import check_clean, check_patched

        need = self._need(specs)
        # Conditions that start at the same block with the same hook (and the same transplanted window) share batches.
        groups: dict[tuple[str, int, str | None, Swap], list[int]] = defaultdict(list)
        for i, s in enumerate(specs):
            groups[(s.key.target, *start_of(s), swap_of(s))].append(i)
        order = sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] or "", g[0][3] or ()))
        bar = tqdm(total=len(tokenized), desc=f"patching ({len(specs)} conditions)", disable=not progress, unit="pair")
        for chunk in self._chunks(pair, tokenized, need):
            cc = self.clean_chunk(pair, chunk, need)
            check_clean(pair, cc.clean, chunk)  # NaN/inf check (numerics.py): names pair, model, layer
            patched: dict[RunKey, Scored] = {}
            for (target, start, hook, swap), spec_ids in order:
                patched.update(self.run_group(pair, target, start, hook, specs, spec_ids, chunk, cc, swap))
            check_patched({k: v[0] for k, v in patched.items()}, specs)  # NaN/inf: names pair and condition
            for i, spec in enumerate(specs):
                k = spec.key
                for t in chunk:
                    if not spec.applies_to(t.pair_id):
                        continue
                    clean = tuple(
                        (cc.clean[k.target][(t.pair_id, s)], cc.tokens[k.target][(t.pair_id, s)]) for s in SIDES
                    )
                    after = tuple(patched.get((i, t.pair_id, s), c) for s, c in zip(SIDES, clean))
                    yield spec, t.pair_id, clean, after
            bar.update(len(chunk))
        bar.close()


def batch_logprobs(
    model: Any, final: Float[Tensor, "batch pos d_model"], batch: Any
) -> tuple[list[float], list[Tensor]]:
    """Per row of a right-padded full-sequence batch: log p(completion | prompt) (summed in float64) and the
    per-token log-probs (CPU, float32)."""
    from alignment_probe.scoring import completion_token_logprobs, split_by_row, sum_by_row

    lp, rows = completion_token_logprobs(model, final, batch)
    return sum_by_row(lp, rows, batch.size).tolist(), split_by_row(lp, rows, batch.size)


def continuation_logprobs(
    model: Any,
    prompts: Sequence[PromptState],
    final: Float[Tensor, "batch pos d_model"],
    seqs: Sequence[ScoredSequence],
) -> tuple[list[float], list[Tensor]]:
    """``logp(completion | prompt)`` per row of a continuation batch, and its per-token log-probs: the first
    completion token is predicted by the prompt's last position, the others by the continuation's own positions."""
    from alignment_probe.scoring import split_by_row, sum_by_row, token_logprobs

    xs, targets, rows = [], [], []
    for r, (p, s) in enumerate(zip(prompts, seqs)):
        n = len(s.completion_ids)
        xs += [p.last[None], final[r, : n - 1]]
        targets += list(s.completion_ids)
        rows += [r] * n
    device = final.device
    lp = token_logprobs(model, torch.cat(xs), torch.tensor(targets, device=device))
    index = torch.tensor(rows, device=device)
    return sum_by_row(lp, index, len(seqs)).tolist(), split_by_row(lp, index, len(seqs))
