"""The reference engine: one pair, one condition, one sequence, one hooked full forward at a time.

This is the paper's procedure written as plainly as possible, so it can be trusted by reading it:
capture the source model's activation, run the whole target model with a hook that overwrites
that activation (full forwards through the backend seam: ``Backend.run``), take the full logits and score the completion. A weight
transplant (E8) runs the whole hybrid model (hybrid.py) on the tokens. It is slow
by design and exists to check the fast engine against (``alignment-probe run --engine reference``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from alignment_probe.engine.hybrid import transplanted
from alignment_probe.engine.outputs import ExactEngine, Run
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.interventions import SequenceContext, apply_in_scope
from alignment_probe.numerics import check_clean, check_patched
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair

if TYPE_CHECKING:
    from alignment_probe.pair import Twins


def full_token_logprobs(logits: Float[Tensor, "1 pos d_vocab"], seq: ScoredSequence) -> list[float]:
    """log p(completion token | prefix) of every completion token, from full logits [1, pos, vocab]."""
    logp = logits[0].float().log_softmax(-1)
    return [
        logp[p - 1, seq.completion_ids[p - seq.completion_start]].item()
        for p in range(seq.completion_start, seq.length)
    ]


def _scored(logits: Float[Tensor, "1 pos d_vocab"], seq: ScoredSequence) -> tuple[float, list[float]]:
    per_token = full_token_logprobs(logits, seq)
    return sum(per_token), per_token  # left to right, as the loop this replaced


def full_logprob(logits: Float[Tensor, "1 pos d_vocab"], seq: ScoredSequence) -> float:
    """Sum of log p(completion token | prefix) from full logits [1, pos, vocab]."""
    return _scored(logits, seq)[0]


def _tokens(seq: ScoredSequence, device: Any) -> Int[Tensor, "1 pos"]:
    return torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)], device=device)


class ReferenceEngine(ExactEngine):
    name = "reference"

    @torch.inference_mode()
    def runs(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *, progress: bool = False
    ) -> Iterator[Run]:
        from tqdm.auto import tqdm

        models = pair.backends()
        for t in tqdm(tokenized, desc="patching (reference)", disable=not progress, unit="pair"):
            seqs = {side: t.sequence(side) for side in SIDES}
            clean = {
                name: {side: _scored(m.run(_tokens(seqs[side], m.device))[0], seqs[side]) for side in SIDES}
                for name, m in models.items()
            }
            check_clean(
                pair, {name: {(t.pair_id, side): v[0] for side, v in c.items()} for name, c in clean.items()}, [t]
            )  # NaN/inf check (numerics.py)
            for spec in specs:
                if not spec.applies_to(t.pair_id):
                    continue
                target, source = models[spec.key.target], models[spec.key.source]
                src = (
                    None
                    if spec.window is not None
                    else {  # the source's activation at the hook, each side
                        s: source.run(_tokens(seqs[s], source.device), capture=[spec.name])[1][spec.name][0]
                        for s in SIDES
                    }
                )
                patched = {}
                for side in SIDES:
                    if not spec.patches(side):
                        patched[side] = clean[spec.key.target][side]
                    elif spec.window is not None:
                        # A weight transplant: the target with the window's modules (and the embedding or the
                        # head, at the ends) taken from the source, run on the tokens as one model.
                        with transplanted(target, source, spec.window):
                            patched[side] = _scored(target.run(_tokens(seqs[side], target.device))[0], seqs[side])
                    else:
                        patched[side] = self._patched(t, spec, target, src, seqs, side)
                check_patched({(0, t.pair_id, side): v[0] for side, v in patched.items()}, [spec])
                yield (
                    spec,
                    t.pair_id,
                    tuple(clean[spec.key.target][s] for s in SIDES),
                    tuple(patched[s] for s in SIDES),
                )

    @staticmethod
    def _patched(
        t: TokenizedPair,
        spec: PatchSpec,
        target: Any,
        src: dict[str, Tensor],
        seqs: dict[str, ScoredSequence],
        side: str,
    ) -> tuple[float, list[float]]:
        """The target run on one sequence with a hook that overwrites the activation at ``spec.name`` (``src``:
        the source's activation there on each side of the pair)."""
        seq = seqs[side]

        def overwrite(act: torch.Tensor, hook: Any) -> torch.Tensor:
            ctx = SequenceContext(
                pair_id=t.pair_id,
                side=side,
                layer=spec.key.layer,
                target=act[0],
                source=src[side],
                prompt_len=seq.completion_start,
                length=seq.length,
                source_by_side=src,
                prompt_len_by_side={s: seqs[s].completion_start for s in SIDES},
                length_by_side={s: seqs[s].length for s in SIDES},
            )
            return apply_in_scope(spec.intervention, ctx, spec.key.scope)[None]

        logits, _ = target.run(_tokens(seq, target.device), hooks=[(spec.name, overwrite)])
        return _scored(logits, seq)
