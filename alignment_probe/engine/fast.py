"""The fast engine: the same numbers as the reference engine, with the least work we know how to do.

What it avoids, and how:

* **Clean runs once.** Each model runs once per sequence (``run_with_cache`` on a chunk of pairs,
  caching only the hook points the conditions need); the clean log-probs come from that same run.
* **No recomputation below the patch.** A patch at block ℓ cannot change anything before it, so a
  patched run starts at ℓ from the target's cached residual (``start_at_layer``). A patch of
  ``resid_post`` at ℓ *is* a new ``resid_pre`` of ℓ+1, so it starts one block later still.
* **Many patched runs per forward.** Every (condition, sequence) with the same start block and hook
  point goes into one right-padded batch, whatever the layer sweep, control, α or pair.
* **Completion-only unembedding.** Only completion positions are normed, unembedded and
  log-softmaxed (see scoring.py).
* **No run that cannot change anything.** A patch that leaves the target's activation bit-for-bit
  as it was (the identity control, α = 0) reuses the clean log-prob: downstream of an unchanged
  activation the computation *is* the clean run. This also makes those controls exactly zero however
  a batched forward happens to round (multi-threaded CPU kernels round differently per batch shape,
  by ~1e-5 nats). The reference engine still recomputes them.
* **Bounded memory.** Pairs stream through in chunks whose caches fit a memory budget; only the
  patched runs of one batch are materialised at a time.

Right padding needs no attention mask for real tokens, also with ``start_at_layer``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from alignment_probe.effects import make_row, to_frame
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.interventions import SequenceContext, apply_in_scope
from alignment_probe.numerics import check_clean, check_patched
from alignment_probe.pair import Twins
from alignment_probe.scoring import completion_token_logprobs, sum_by_row
from alignment_probe.tokens import SIDES, ScoredSequence, SequenceBatch, TokenizedPair, make_batch, pair_sequences


def start_of(spec: PatchSpec) -> tuple[int, str | None]:
    """(block to start the patched run at, hook name that must be overwritten there or None)."""
    if spec.key.hook == "resid_pre":
        return spec.key.layer, None
    if spec.key.hook == "resid_post":
        return spec.key.layer + 1, None
    return spec.key.layer, spec.name


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
    value: torch.Tensor  # [pos, d_model]: the start residual, or the activation a hook writes
    unchanged: bool = False  # the patch leaves the target's activation bit-for-bit as it was


@dataclass
class ChunkCache:
    """Clean activations and log-probs of one chunk of pairs."""

    acts: dict[str, dict[str, torch.Tensor]]  # model -> hook name -> [seq, pos, d_model]
    clean: dict[str, dict[tuple[int, str], float]]  # model -> (pair_id, side) -> logp
    row_of: dict[tuple[int, str], int]
    seqs: dict[tuple[int, str], ScoredSequence]


@dataclass
class WorkCounter:
    """Block-token products: what the engine computed (padding included) and the floor, the same
    forwards on unpadded sequences. Their ratio is the engine's overhead over the minimal work."""

    computed: int = 0
    floor: int = 0
    forwards: int = 0

    def add(self, n_blocks: int, batch: "SequenceBatch") -> None:
        self.computed += n_blocks * batch.tokens.numel()
        self.floor += n_blocks * int(batch.lengths.sum())
        self.forwards += 1


class FastEngine:
    name = "fast"

    def __init__(self, batch_size: int = 32, memory_budget_gb: float = 2.0):
        self.batch_size = batch_size
        self.memory_budget_gb = memory_budget_gb
        self.work = WorkCounter()

    def pairs_per_chunk(self, pair: Twins, tokenized: Sequence[TokenizedPair], n_cached: int) -> int:
        """How many pairs' caches fit the memory budget (at least one)."""
        width = max(max(len(t.prompt_ids) + len(t.completion_ids(s)) for s in SIDES) for t in tokenized)
        bytes_per_pair = 2 * max(n_cached, 1) * width * pair.d_model * pair.base.cfg.dtype.itemsize
        return max(1, int(self.memory_budget_gb * 2**30 // bytes_per_pair))

    @torch.inference_mode()
    def clean_chunk(self, pair: Twins, chunk: Sequence[TokenizedPair], need: dict[str, set[str]]) -> ChunkCache:
        seqs = pair_sequences(chunk)
        batch = make_batch(seqs)
        acts, clean = {}, {}
        for name, model in pair.models().items():
            if name not in need:  # neither patched nor a source: its clean run is not needed
                continue
            names = need[name]
            resid, cache = model.run_with_cache(batch.tokens.to(model.cfg.device), names_filter=lambda n: n in names,
                                                stop_at_layer=model.cfg.n_layers)
            self.work.add(model.cfg.n_layers, batch)
            acts[name] = {n: cache[n] for n in names}
            lp, rows = completion_token_logprobs(model, resid, batch)
            sums = sum_by_row(lp, rows, batch.size).tolist()
            clean[name] = {(s.pair_id, s.side): v for s, v in zip(seqs, sums)}
        row_of = {(s.pair_id, s.side): i for i, s in enumerate(seqs)}
        return ChunkCache(acts, clean, row_of, {(s.pair_id, s.side): s for s in seqs})

    def item(self, spec_index: int, spec: PatchSpec, pair_id: int, side: str, cc: ChunkCache) -> Item:
        """One patched run, with the value it starts from (computed only when its batch runs)."""
        k = spec.key
        src = {s: cc.acts[k.source][spec.name][cc.row_of[(pair_id, s)]] for s in SIDES}
        seq = cc.seqs[(pair_id, side)]
        row = cc.row_of[(pair_id, side)]
        ctx = SequenceContext(
            pair_id=pair_id, side=side, layer=k.layer, target=cc.acts[k.target][spec.name][row],
            source=src[side], prompt_len=seq.completion_start, length=seq.length, source_by_side=src,
            prompt_len_by_side={s: cc.seqs[(pair_id, s)].completion_start for s in SIDES},
            length_by_side={s: cc.seqs[(pair_id, s)].length for s in SIDES},
        )
        patched = apply_in_scope(spec.intervention, ctx, k.scope)
        unchanged = torch.equal(patched, ctx.target)
        if k.hook in ("resid_pre", "resid_post"):
            return Item(spec_index, seq, patched, unchanged)
        # Other hook points: start from the target's own resid_pre; a hook writes the patched value.
        start = cc.acts[k.target][hook_name(k.layer, "resid_pre")][row]
        return Item(spec_index, seq, torch.stack([start, patched]), unchanged)

    @torch.inference_mode()
    def run_batch(self, pair: Twins, target: str, start: int, hook: str | None, items: list[Item]) -> list[float]:
        model = pair.models()[target]
        batch = make_batch([it.seq for it in items])
        width = batch.tokens.shape[1]
        if hook is None:
            resid = torch.stack([it.value[:width] for it in items])
            fwd_hooks = []
        else:
            resid = torch.stack([it.value[0, :width] for it in items])
            written = torch.stack([it.value[1, :width] for it in items])
            fwd_hooks = [(hook, lambda act, hook: written.to(act.dtype))]
        with model.hooks(fwd_hooks=fwd_hooks):
            final = model(resid, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
        self.work.add(model.cfg.n_layers - start, batch)
        lp, rows = completion_token_logprobs(model, final, batch)
        return sum_by_row(lp, rows, batch.size).tolist()

    def run(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *,
            progress: bool = False) -> pd.DataFrame:
        need = cache_names(specs)
        per_chunk = self.pairs_per_chunk(pair, tokenized, sum(len(v) for v in need.values()))
        # Conditions that start at the same block with the same hook share batches.
        groups: dict[tuple[str, int, str | None], list[int]] = defaultdict(list)
        for i, s in enumerate(specs):
            groups[(s.key.target, *start_of(s))].append(i)
        rows = []
        bar = tqdm(total=len(tokenized), desc=f"patching ({len(specs)} conditions)", disable=not progress, unit="pair")
        for lo in range(0, len(tokenized), per_chunk):
            chunk = tokenized[lo: lo + per_chunk]
            cc = self.clean_chunk(pair, chunk, need)
            check_clean(pair, cc.clean, chunk)  # NaN/inf check (numerics.py): names pair, model, layer
            patched: dict[tuple[int, int, str], float] = {}
            for (target, start, hook), spec_ids in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] or "")):
                # Every patched run of this group on this chunk, shortest first, so batches pad little.
                runs = [(i, t.pair_id, side) for i in spec_ids for t in chunk if specs[i].applies_to(t.pair_id)
                        for side in SIDES if specs[i].patches(side)]
                runs.sort(key=lambda r: cc.seqs[(r[1], r[2])].length)
                pending: list[Item] = []
                for n, (i, pid, side) in enumerate(runs):
                    it = self.item(i, specs[i], pid, side, cc)
                    if it.unchanged:
                        # The target's activation is exactly its own, so everything downstream is the
                        # clean run: reuse its log-prob (this is what makes the identity control and
                        # α = 0 exactly zero, independent of how a batched forward rounds).
                        patched[(i, pid, side)] = cc.clean[target][(pid, side)]
                    else:
                        pending.append(it)
                    if pending and (len(pending) == self.batch_size or n == len(runs) - 1):
                        for p_it, v in zip(pending, self.run_batch(pair, target, start, hook, pending)):
                            patched[(p_it.spec_index, p_it.seq.pair_id, p_it.seq.side)] = v
                        pending = []
            check_patched(patched, specs)  # NaN/inf check: names pair and patched condition
            for i, spec in enumerate(specs):
                k = spec.key
                for t in chunk:
                    if not spec.applies_to(t.pair_id):
                        continue
                    clean = tuple(cc.clean[k.target][(t.pair_id, s)] for s in SIDES)
                    after = tuple(patched.get((i, t.pair_id, s), cc.clean[k.target][(t.pair_id, s)]) for s in SIDES)
                    rows.append(make_row(k, t.pair_id, clean, after))  # type: ignore[arg-type]
            bar.update(len(chunk))
        bar.close()
        return to_frame(rows)
