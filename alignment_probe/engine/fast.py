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

**Where the code is**: the clean runs and the activations they keep in clean.py, the planning (which hook points
are cached, patched runs as items, the batch planner's cost model) in planning.py, the counters in work.py; this
module plans and runs the patched runs. Every forward goes through the backend seam (``alignment_probe.backends``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

# The engine's parts, importable from here as before the split: clean runs (clean.py), planning (planning.py), work
# accounting (work.py).
from alignment_probe.engine.clean import (  # noqa: F401
    ChunkCache,
    CleanRuns,
    Key,
    batch_logprobs,
    continuation_logprobs,
)
from alignment_probe.engine.hybrid import PartComparison, transplanted
from alignment_probe.engine.outputs import ExactEngine, Run
from alignment_probe.engine.planning import Item, _Repeats, _Shared, cache_names  # noqa: F401
from alignment_probe.engine.prefix import (
    PromptState,
    pad_stack,
    run_continuations,
    run_prompts,
    supports_prefix,
    writing,
)
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.engine.work import WorkCounter  # noqa: F401
from alignment_probe.interventions import SequenceContext, apply_in_scope, same_on_both_prompts, scope_mask
from alignment_probe.numerics import check_clean, check_patched
from alignment_probe.tokens import SIDES, TokenizedPair, make_batch

if TYPE_CHECKING:
    from alignment_probe.pair import Twins

RunKey = tuple[int, int, str]  # (spec index, pair_id, side)
Scored = tuple[float, Tensor]  # log p(completion | prompt) and its per-token log-probs [n] (CPU, float32)
Swap = tuple[str, int, int] | None  # a transplant's (source model, first block, last block + 1); None: no swap


def start_of(spec: PatchSpec) -> tuple[int, str | None]:
    """(block to start the patched run at, hook name that must be overwritten there or None): a site that is the
    residual entering a block (the site table's ``enters_block``; a transplant's window too) starts there."""
    enters = spec.site.enters_block
    if enters is not None:
        return spec.key.layer + enters, None
    return spec.key.layer, spec.name


def swap_of(spec: PatchSpec) -> Swap:
    window = spec.window
    return None if window is None else (spec.key.source, window.start, window.stop)


class FastEngine(CleanRuns, ExactEngine):
    """``FastEngine(batch_size, memory_budget_gb, share_prompts="auto", overhead_tokens=None,
    keep_budget_gb=0.5, attention_tokens=None)``.

    ``share_prompts``: ``"auto"`` (default) shares prompts where the batch planner's cost model
    (batching.py: padded tokens, a per-forward cost of ``overhead_tokens`` and the attention over padded
    keys priced by ``attention_tokens``, both by default from the model's width) says the
    prompt-then-continuation forwards are cheaper than full sequences — on a tiny model the extra
    forwards can cost more than the prompt tokens they save; ``True`` always shares where the prompts
    are the same; ``False`` runs every sequence in full. All three give the same numbers to float
    precision. ``keep_budget_gb``: the most clean activations a suite run may ask it to keep for its
    fits and whole-data computations (``keep_activations``). Every forward is the backend's (TransformerLens's own
    modules and key/value cache); the engine chooses which forwards to run, not how a block computes."""

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
        self._start_counting()
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
        if spec.site.enters_block is not None:  # the patched residual is the run's input
            return Item(spec_index, seq, patched, unchanged, clean_prompt)
        # Other hook points: start from the target's own resid_pre; a hook writes the patched value.
        start = cc.acts[k.target][hook_name(k.layer, "resid_pre")][(pair_id, side)]
        if not spec.site.residual:  # other axes (heads, MLP neurons): its own shape beside the residual
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
        # Sites with other axes than [pos, d_model] (heads, MLP neurons: the site table) run full sequences.
        full_only = any(not specs[i].site.residual for i in spec_ids)
        shares = self._shares(model) and not full_only
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
                    self._shareable(specs[i], *changed) if len(changed) == 2 and not full_only else (False, False)
                )
                clean_prompt = bool(changed) and not full_only and all(it.clean_prompt for it in changed)
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
