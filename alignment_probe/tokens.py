"""Token ids for preference pairs, seeded sampling, and padded batches of sequences.

A pair becomes two sequences that share a prompt::

    [BOS] + prompt_ids + chosen_ids        (the "chosen" run)
    [BOS] + prompt_ids + rejected_ids      (the "rejected" run)

Prompt and completion are tokenised *separately* so the boundary between them is exact: the model
is scored on exactly the completion tokens, never on a token that straddles the boundary.

**Truncation policy.** With ``max_length`` L, a sequence may hold at most L tokens. Completions are
never cut (they are what is scored). If the longer of the two sequences exceeds L, prompt tokens
are dropped *from the left* (the oldest turns go first) until it fits, and the number dropped is
recorded per pair. If even the completion alone does not fit, the pair is skipped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from alignment_probe.data import PreferencePair, SkipReport
from alignment_probe.data import check_sampling_options as check_sampling_options  # (re-exported: it needs no torch)
from alignment_probe.errors import CheckpointError, ConfigError, DataError
from alignment_probe.vocab import SIDES as SIDES  # (re-exported: the two runs of a pair, defined once)

TOO_LONG = "completion longer than max_length"  # the skip reason tokenize_pair's ValueError carries


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair. ``prompt_ids`` starts with exactly one BOS (:func:`bos_ids`)."""

    pair_id: int
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    n_prompt_tokens_cut: int = 0

    def completion_ids(self, side: str) -> tuple[int, ...]:
        return self.chosen_ids if side == "chosen" else self.rejected_ids

    def sequence(self, side: str) -> "ScoredSequence":
        return ScoredSequence(self.pair_id, side, self.prompt_ids, self.completion_ids(side))


@dataclass(frozen=True)
class ScoredSequence:
    """One sequence to run: prompt ids (with BOS) followed by the completion ids that are scored."""

    pair_id: int
    side: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    @property
    def completion_start(self) -> int:
        return len(self.prompt_ids)


def bos_ids(tokenizer: Any) -> list[int]:
    """The one token every scored sequence starts with, whatever the tokenizer would do by itself.

    * the tokenizer's BOS (Llama, Gemma, SmolLM2; GPT-2's BOS *is* its ``<|endoftext|>`` EOS token);
    * a tokenizer without BOS (Qwen2/2.5/3, some OLMo and Pythia exports) gets its EOS: the document
      separator these models saw before every training document, so the first real token has a
      predictor and position 0 is the attention sink it always was;
    * a tokenizer with neither is refused, since a sequence without a start token would score its
      first prompt token differently from every other model's.

    Prompts and completions are encoded with ``add_special_tokens=False``, so a tokenizer that adds
    BOS itself (Gemma) does not add a second one (:func:`tokenize_pair` also drops a leading BOS that
    slips through)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    if bos is None:
        raise CheckpointError(
            f"The tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) defines neither a BOS "
            "nor an EOS token, so scored sequences have no start token. Set one and save it with the checkpoint: "
            "tokenizer.bos_token = '<the model's start token>'; tokenizer.save_pretrained(dir)."
        )
    return [bos]


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenize_pair(
    pair: PreferencePair, tokenizer: Any, max_length: int | None = None, chat: Any = None
) -> TokenizedPair:
    """Tokenise one pair, applying the left-truncation policy. Raises ``ValueError`` if the
    completion alone exceeds ``max_length`` (callers turn that into a reported skip). ``chat``: a
    :class:`alignment_probe.chat.ChatFormat` to render the dialogue in (only the assistant reply is scored)."""
    bos = bos_ids(tokenizer)
    prompt_text, chosen_text, rejected_text = pair.prompt, pair.chosen, pair.rejected
    if chat is not None:
        prompt_text, chosen_text = chat.render(tokenizer, pair.prompt, pair.chosen)
        _, rejected_text = chat.render(tokenizer, pair.prompt, pair.rejected)
        bos_text = getattr(tokenizer, "bos_token", None)
        if bos_text and prompt_text.startswith(bos_text):  # the template writes BOS; the one BOS is prepended below
            prompt_text = prompt_text[len(bos_text) :]
    prompt = encode(tokenizer, prompt_text)
    while prompt[:1] == bos:  # a tokenizer that adds BOS regardless, or a prompt that starts with it: one BOS only
        prompt = prompt[1:]
    chosen = encode(tokenizer, chosen_text)
    rejected = encode(tokenizer, rejected_text)
    if not chosen or not rejected:
        raise ValueError("empty completion after tokenisation")
    cut = 0
    if max_length is not None:
        room = max_length - len(bos) - max(len(chosen), len(rejected))
        if room < 1:  # keep at least one prompt token so the first completion token has a predictor
            raise ValueError(TOO_LONG)
        if len(prompt) > room:
            cut = len(prompt) - room
            prompt = prompt[cut:]
    return TokenizedPair(pair.pair_id, tuple(bos + prompt), tuple(chosen), tuple(rejected), cut)


def sample_and_tokenize(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    *,
    n_pairs: int | None = None,
    seed: int = 0,
    max_length: int | None = None,
    report: SkipReport | None = None,
    chat: Any = None,
) -> list[TokenizedPair]:
    """Deterministically sample ``n_pairs`` usable pairs and tokenise them.

    Pairs are visited in a seeded random order (``numpy.random.default_rng(seed).permutation``);
    a pair that cannot be tokenised within ``max_length`` is reported and the next one is taken, so
    exactly ``n_pairs`` usable pairs come back when the data has them. The result is sorted by
    ``pair_id``, so the same data, seed and N always give the same list.
    """
    check_sampling_options(n_pairs, max_length, len(pairs), "the data", report)
    order = np.random.default_rng(seed).permutation(len(pairs)) if n_pairs is not None else range(len(pairs))
    want = len(pairs) if n_pairs is None else n_pairs
    out: list[TokenizedPair] = []
    for idx in order:
        if len(out) == want:
            break
        pair = pairs[int(idx)]
        try:
            out.append(tokenize_pair(pair, tokenizer, max_length, chat))
        except ValueError as exc:
            if report is not None:
                report.add(str(exc), pair.pair_id)
    if n_pairs is None and out:  # all pairs asked for: the ones that do not fit are skipped and reported
        return sorted(out, key=lambda t: t.pair_id)
    if len(out) < want:
        raise DataError(
            f"Only {len(out)} of the requested {want} pairs fit in {max_length} tokens (--max-length, "
            "capped at the model's context); the others have a completion longer than that. Raise "
            "--max-length (if the model's context allows)"
            + (f" or pass --n-pairs {len(out)} or fewer." if out else ".")
        )  # --n-pairs 0 is refused
    return sorted(out, key=lambda t: t.pair_id)


def cap_to_context(max_length: int | None, n_ctx: int | None) -> tuple[int | None, str | None]:
    """``max_length`` capped at the model's context ``n_ctx`` (a model cannot run longer sequences),
    and a note saying so when it was lowered."""
    if n_ctx is None or n_ctx <= 0:
        return max_length, None
    if max_length is None or max_length > n_ctx:
        asked = "no --max-length" if max_length is None else f"--max-length {max_length}"
        return n_ctx, (
            f"{asked} exceeds the model's context of {n_ctx} tokens; using {n_ctx} (longer prompts are "
            "cut from the left, pairs whose completion alone is longer are skipped)"
        )
    return max_length, None


def truncation_stats(tokenized: Sequence[TokenizedPair]) -> dict[str, int]:
    cut = [t.n_prompt_tokens_cut for t in tokenized]
    return {"pairs_truncated": sum(c > 0 for c in cut), "prompt_tokens_cut": int(sum(cut))}


def describe_truncation(
    tokenized: Sequence[TokenizedPair], max_length: int | None, report: SkipReport | None = None
) -> str | None:
    """One line on what the truncation policy did, or None when it did nothing."""
    st = truncation_stats(tokenized)
    n_long = len(report.skipped.get(TOO_LONG, [])) if report is not None else 0
    parts = []
    if st["pairs_truncated"]:
        parts.append(
            f"{st['pairs_truncated']} of {len(tokenized)} pairs had their prompt cut from the left "
            f"({st['prompt_tokens_cut']} tokens in all)"
        )
    if n_long:
        parts.append(f"{n_long} pairs were skipped because a completion alone does not fit")
    if not parts:
        return None
    return f"truncation to {max_length} tokens: " + "; ".join(parts)


@dataclass
class SequenceBatch:
    """Right-padded token ids of several sequences, with where each completion sits.

    Right padding keeps every real token at the same position it has unpadded, and a causal
    model never lets a real token attend to the padding after it, so no attention mask is needed
    for real positions (TransformerLens only builds masks for left padding).
    """

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    completion_start: Int[Tensor, " batch"]
    sequences: list[ScoredSequence]

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    def completion_index(self) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
        """Flattened (row, predictor position, target token) for every completion token.

        The log-probability of the token at position p comes from the logits at position p - 1,
        so the predictor positions are ``completion_start - 1 ... length - 2``.
        """
        rows: list[int] = []
        pos: list[int] = []
        for i, seq in enumerate(self.sequences):
            start = seq.completion_start
            rows.extend([i] * len(seq.completion_ids))
            pos.extend(range(start - 1, seq.length - 1))
        rows_t = torch.tensor(rows, dtype=torch.long)
        pos_t = torch.tensor(pos, dtype=torch.long)
        targets = self.tokens[rows_t, pos_t + 1]
        return rows_t, pos_t, targets


def make_batch(sequences: Sequence[ScoredSequence], pad_id: int = 0) -> SequenceBatch:
    """Stack sequences into one right-padded batch."""
    width = max(s.length for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : s.length] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
    return SequenceBatch(
        tokens=tokens,
        lengths=torch.tensor([s.length for s in sequences], dtype=torch.long),
        completion_start=torch.tensor([s.completion_start for s in sequences], dtype=torch.long),
        sequences=list(sequences),
    )


def pair_sequences(tokenized: Sequence[TokenizedPair]) -> list[ScoredSequence]:
    """Both sequences of every pair, chosen then rejected, in pair order."""
    return [t.sequence(side) for t in tokenized for side in SIDES]


def batches_by_length(sequences: Sequence[ScoredSequence], batch_size: int) -> list[list[ScoredSequence]]:
    """Group sequences of similar length (less padding); deterministic (stable sort)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    ordered = sorted(sequences, key=lambda s: s.length)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
