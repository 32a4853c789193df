"""The fast engine's clean runs: each model once per sequence (prompts shared where that pays), caching only the
hook points the patched runs need and keeping the activations a run's fits ask for (``keep_activations``), with
the clean log-probs and per-token log-probs from the same forwards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from alignment_probe.engine.planning import BatchPlanning, cache_names
from alignment_probe.engine.prefix import PromptState, run_continuations, run_prompts, supports_prefix
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.numerics import check_clean
from alignment_probe.scoring import completion_token_logprobs, score_table, split_by_row, sum_by_row, token_logprobs
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair, make_batch, pair_sequences

if TYPE_CHECKING:
    import pandas as pd

    from alignment_probe.pair import Twins

Key = tuple[int, str]  # (pair_id, side)


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


class CleanRuns(BatchPlanning):
    """Clean runs and what they leave behind: the clean log-probs of every pair run (``clean_logprobs``,
    ``clean_tokens``) and the activations ``keep`` names (``kept``: model → hook → (pair_id, side) → [length, ...])."""

    clean_logprobs: dict[str, dict[Key, float]]
    clean_tokens: dict[str, dict[Key, Tensor]]
    keep: dict[str, set[str]]
    keep_budget_gb: float
    kept: dict[str, dict[str, dict[Key, Tensor]]]

    def _need(self, specs: Sequence[PatchSpec]) -> dict[str, set[str]]:
        """Hook names each model's clean runs cache for ``specs``, and those ``keep`` asks for."""
        need = cache_names(specs)
        for model, names in self.keep.items():
            need[model] |= names
        return need

    # -- clean runs --------------------------------------------------------------------------
    def clean_pass(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec] = ()) -> None:
        """The clean runs :meth:`run` makes of these pairs for ``specs``, without the patched runs: the same
        chunks and batches, hence the same numbers. Fills ``kept`` and the clean log-probs where they are
        missing (e.g. for parts a resumed run loaded instead of computing); runs nothing where they are not."""

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


def batch_logprobs(
    model: Any, final: Float[Tensor, "batch pos d_model"], batch: Any
) -> tuple[list[float], list[Tensor]]:
    """Per row of a right-padded full-sequence batch: log p(completion | prompt) (summed in float64) and the
    per-token log-probs (CPU, float32)."""

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
