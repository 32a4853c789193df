"""The one input pipeline: the options that choose a command's pairs (data source, ``--pair-ids``, ``--n-pairs``,
``--max-length``, ``--seed``, ``--chat-template``) turned into tokenised pairs, the same way for
``alignment-probe score``, ``run`` and ``generate``, ``ap.load_pairs`` and ``ap.run_suite``.

Two steps, so that bad input is refused before anything heavy loads:

* :func:`read_inputs` (no torch, no tokenizer): the data read and checked (file, line, field), restricted to the
  ``--pair-ids`` file, and ``--n-pairs`` / ``--max-length`` checked against the pairs read;
  :func:`precheck_inputs` adds the checkpoints' cheap checks, for the command line before it imports torch;
* :func:`prepare_pairs` (the tokenizer's step): the chat template, ``max_length`` capped at the model's context,
  the seeded sample tokenised under the truncation policy (tokens.py), and what was skipped or cut said once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from alignment_probe.chat import ChatFormat, resolve_chat_template
from alignment_probe.chat import describe as describe_chat
from alignment_probe.checkpoint_files import precheck_pair
from alignment_probe.data import (
    PreferencePair,
    SkipReport,
    check_sampling_options,
    is_hub_dataset,
    load_pairs,
    read_pair_ids,
    restrict_pairs,
)
from alignment_probe.manifest import file_fingerprint

if TYPE_CHECKING:  # tokens.py imports torch: the tokenising step imports it, reading the data does not
    from alignment_probe.tokens import TokenizedPair


@dataclass(frozen=True)
class InputSpec:
    """Which pairs, and how they become tokens: the options every command that reads pairs shares."""

    data: str  # a JSONL(.gz) file or a dataset-hub name
    data_dir: str | None = None  # a hub dataset's data_dir, e.g. harmless-base
    split: str = "test"  # a hub dataset's split
    pair_ids: str | None = None  # a file of pair ids to draw from; None: every usable pair
    n_pairs: int | None = None  # the seeded sample's size; None: every usable pair
    max_length: int | None = 512  # tokens per sequence (prompts are cut from the left); None: the model's context
    seed: int = 0
    chat_template: str | None = "none"  # none (raw text), auto (the tokenizer's) or a template file


@dataclass
class InputsRead:
    """The pairs :func:`read_inputs` read (restricted to the pair-id file) and what it skipped, with the id file's
    record for the manifest (empty without one)."""

    spec: InputSpec
    pairs: list[PreferencePair]
    report: SkipReport
    id_source: dict[str, Any] = field(default_factory=dict)


def read_inputs(spec: InputSpec) -> InputsRead:
    """The data and pair-id file read and checked, and the sampling options checked against them: everything about
    the input that needs no tokenizer (and no torch; a hub dataset imports ``datasets`` to read)."""
    pairs, report = load_pairs(spec.data, data_dir=spec.data_dir, split=spec.split)
    id_source: dict[str, Any] = {}
    if spec.pair_ids is not None:
        pairs = restrict_pairs(pairs, read_pair_ids(spec.pair_ids), source=spec.data, ids_source=spec.pair_ids)
        id_source = {
            "pair_ids_file": spec.pair_ids,
            "pair_ids_file_sha256": file_fingerprint(spec.pair_ids)["sha256"],
            "n_pairs_in_id_file": len(pairs),
        }
    check_sampling_options(spec.n_pairs, spec.max_length, len(pairs), spec.data, report)
    return InputsRead(spec, pairs, report, id_source)


def precheck_inputs(spec: InputSpec, base: str | os.PathLike[str], tuned: str | os.PathLike[str]) -> InputsRead | None:
    """The command line's checks before it imports torch, so bad input is refused in under a second: the data
    read (returned, so it is read once; a hub dataset is read when the run loads it, then None), the pair-id file,
    the sampling options, and the checkpoint folders, adapter folder or hub names (checkpoint_files.py)."""
    read = None
    if is_hub_dataset(spec.data):
        if spec.pair_ids is not None:
            read_pair_ids(spec.pair_ids)
    else:
        read = read_inputs(spec)
    precheck_pair(base, tuned)
    return read


@dataclass
class PreparedPairs:
    """The tokenised pairs of :func:`prepare_pairs`, with how they were made (for logs and the manifest)."""

    pairs: list[TokenizedPair]
    read: InputsRead
    max_length: int | None  # as used: capped at the model's context
    chat: ChatFormat | None

    def data_record(self) -> dict[str, Any]:
        """The manifest's ``data`` entry: the source and its sha256, what was skipped, the truncation, the pair-id
        file, the pairs drawn and the chat template."""
        from alignment_probe.tokens import truncation_stats

        spec = self.read.spec
        return {
            "source": str(spec.data),
            **file_fingerprint(spec.data),
            "skips": self.read.report.to_dict(),
            "max_length_used": self.max_length,
            **truncation_stats(self.pairs),
            **self.read.id_source,
            "pair_ids": [t.pair_id for t in self.pairs],
            "chat_template": describe_chat(self.chat, spec.chat_template),
        }


def prepare_pairs(
    read: InputsRead,
    tokenizer: Any,
    *,
    tuned_tokenizer: Any = None,
    n_ctx: int | None = None,
    n_pairs: int | None = None,
    like: PreparedPairs | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "data",
    verb: str = "using",
) -> PreparedPairs:
    """The seeded sample of ``read``'s pairs, tokenised with ``tokenizer``: in the chat template asked for (the base
    tokenizer's, else the tuned one's, for ``auto``), at ``max_length`` capped at the model's context ``n_ctx``.
    ``n_pairs``: a larger draw than the spec's (``generate`` draws its steering pairs with its prompts); ``like``:
    the chat template and length of an earlier call (a run's transfer data is tokenised as its data). ``log``
    hears the cap, the data read (``"<label>: …; <verb> N pairs"``) and what the truncation policy did."""
    from alignment_probe.tokens import cap_to_context, describe_truncation, sample_and_tokenize

    say = log if log is not None else (lambda s: None)
    spec, report = read.spec, read.report
    n = spec.n_pairs if n_pairs is None else n_pairs
    if n_pairs is not None:
        check_sampling_options(n, spec.max_length, len(read.pairs), spec.data, report)
    if like is not None:
        chat, max_length = like.chat, like.max_length
    else:
        chat = resolve_chat_template(spec.chat_template, tokenizer, tuned_tokenizer)
        max_length, note = cap_to_context(spec.max_length, n_ctx)
        if note:
            say(f"note: {note}")
    pairs = sample_and_tokenize(
        read.pairs, tokenizer, n_pairs=n, seed=spec.seed, max_length=max_length, report=report, chat=chat
    )
    say(f"{label}: {report.summary()}; {verb} {len(pairs)} pairs")
    if report.n_skipped > report.n_read / 2:
        say(f"warning: more than half the pairs were skipped; check that the {label} has the format you expect.")
    truncation = describe_truncation(pairs, max_length, report)
    if truncation:
        say(truncation)
    return PreparedPairs(pairs, read, max_length, chat)
