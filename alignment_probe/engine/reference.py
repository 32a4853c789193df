"""The reference engine: one pair, one condition, one sequence, one ``run_with_hooks`` at a time.

This is the paper's procedure written as plainly as possible, so it can be trusted by reading it:
cache the source model's activation with ``run_with_cache``, run the whole target model with a
hook that overwrites that activation, take the full logits and score the completion. It is slow
by design and exists to check the fast engine against (``alignment-probe run --engine reference``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from alignment_probe.effects import make_row, to_frame
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.interventions import SequenceContext, apply_in_scope
from alignment_probe.numerics import check_clean, check_patched
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair

if TYPE_CHECKING:
    import pandas as pd

    from alignment_probe.pair import Twins


def full_logprob(logits: Float[Tensor, "1 pos d_vocab"], seq: ScoredSequence) -> float:
    """Sum of log p(completion token | prefix) from full logits [1, pos, vocab]."""
    logp = logits[0].float().log_softmax(-1)
    total = 0.0
    for p in range(seq.completion_start, seq.length):
        total += logp[p - 1, seq.completion_ids[p - seq.completion_start]].item()
    return total


def _tokens(seq: ScoredSequence, device: str) -> Int[Tensor, "1 pos"]:
    return torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)], device=device)


class ReferenceEngine:
    name = "reference"

    @torch.inference_mode()
    def run(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *,
            progress: bool = False) -> pd.DataFrame:
        from tqdm.auto import tqdm

        models = pair.models()
        rows = []
        for t in tqdm(tokenized, desc="patching (reference)", disable=not progress, unit="pair"):
            seqs = {side: t.sequence(side) for side in SIDES}
            clean = {name: {side: full_logprob(m(_tokens(seqs[side], m.cfg.device)), seqs[side]) for side in SIDES}
                     for name, m in models.items()}
            check_clean(pair, {name: {(t.pair_id, side): v for side, v in c.items()} for name, c in clean.items()},
                        [t])  # NaN/inf check (numerics.py)
            for spec in specs:
                if not spec.applies_to(t.pair_id):
                    continue
                target, source = models[spec.key.target], models[spec.key.source]
                # The source's activation at the hook point, on each sequence of the pair.
                src = {}
                for side in SIDES:
                    _, cache = source.run_with_cache(_tokens(seqs[side], source.cfg.device), names_filter=spec.name)
                    src[side] = cache[spec.name][0]
                patched = {}
                for side in SIDES:
                    if not spec.patches(side):
                        patched[side] = clean[spec.key.target][side]
                        continue
                    seq = seqs[side]

                    def overwrite(act: torch.Tensor, hook, side: str = side, seq: ScoredSequence = seq) -> torch.Tensor:
                        ctx = SequenceContext(
                            pair_id=t.pair_id, side=side, layer=spec.key.layer, target=act[0], source=src[side],
                            prompt_len=seq.completion_start, length=seq.length, source_by_side=src,
                            prompt_len_by_side={s: seqs[s].completion_start for s in SIDES},
                            length_by_side={s: seqs[s].length for s in SIDES},
                        )
                        return apply_in_scope(spec.intervention, ctx, spec.key.scope)[None]

                    logits = target.run_with_hooks(_tokens(seq, target.cfg.device), fwd_hooks=[(spec.name, overwrite)])
                    patched[side] = full_logprob(logits, seq)
                check_patched({(0, t.pair_id, side): v for side, v in patched.items()}, [spec])
                rows.append(make_row(spec.key, t.pair_id,
                                     (clean[spec.key.target]["chosen"], clean[spec.key.target]["rejected"]),
                                     (patched["chosen"], patched["rejected"])))
        return to_frame(rows)
