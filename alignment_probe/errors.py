"""The errors alignment-probe raises on purpose, and the exit codes the CLI maps them to.

Every error here is about the *user's input* (a file, a checkpoint, an option) or about numbers
the user's models produced, and its message names the problem and the fix. Anything else that
escapes is an internal error (a bug).

=========  ====================================================================================
exit code  meaning
=========  ====================================================================================
0          success
1          internal error (a bug): the traceback is printed; please report it
2          bad input: data, checkpoints, options or the run directory (the message says what to fix)
3          numerical failure: a model produced NaN or inf (the message names pair, model and layer)
130, 143   interrupted (Ctrl-C / SIGTERM): results so far are kept; rerun the same command to resume
=========  ====================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_NUMERICAL = 3
EXIT_PEER = 4  # another rank of the same torchrun run stopped (distributed.PeerError); rerun to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 128 + 15 = 143


class AlignmentProbeError(Exception):
    """Base class: a problem the user can fix; the message says how.

    Every error below derives from it, so ``except ap.errors.AlignmentProbeError`` (or exit code 2 from the
    command line) catches every refusal. ``exit_code`` is what the command line exits with.

    What to do: read the message; it names the file, line, field or option and the fix. Anything else that
    escapes (exit code 1, with a traceback) is a bug: please report it with the command line.
    """

    exit_code = EXIT_BAD_INPUT


class DataError(AlignmentProbeError):
    """The preference data cannot be read or has no usable pairs.

    Raised while reading ``--data`` before any model loads: a missing file, malformed JSON, a line that is not
    an object, missing or misspelled keys, non-string values, text that is not UTF-8/UTF-16, a truncated
    ``.gz``, a hub dataset that cannot be loaded, or no usable pair left after the skips. Up to 10 bad lines
    are listed at once, each with its line number.

    What to do: fix the lines the message lists (the keys are ``chosen``/``rejected`` for HH-RLHF dialogues,
    or ``prompt``/``chosen``/``rejected``), or point ``--data`` at the right file. Pairs that are merely
    unusable (identical sides, an empty completion, too long) are skipped and reported, not refused.
    """


class CheckpointError(AlignmentProbeError):
    """A model checkpoint is missing, incomplete or of an unsupported architecture.

    Raised while resolving ``--base``/``--tuned`` before weights load: a missing folder, no ``config.json``,
    missing weights, shards or tokenizer files, NaN/inf in the weights.

    What to do: pass a complete Hugging Face checkpoint folder (``config.json``, ``*.safetensors`` or
    ``pytorch_model.bin``, the tokenizer files), or a hub name TransformerLens knows. The subclasses below
    name narrower causes.
    """


class IncompatiblePairError(AlignmentProbeError):
    """Base and tuned models differ in architecture, size or tokenizer.

    Cross-model patching needs one residual basis: the pair is refused before any compute when the family,
    layer count, widths, head counts, vocabulary, BOS id or the tokenisation of a probe string differ.

    What to do: pass the tuned twin *of this base* (the same architecture and tokenizer, fine-tuned). A LoRA
    adapter folder may be passed as ``--tuned``; it is merged onto ``--base``.
    """


class ConfigError(AlignmentProbeError):
    """An option value is invalid, or it conflicts with an existing run directory.

    Raised for bad option values (``--n-pairs`` larger than the usable pairs, layers the model does not
    have, an unknown experiment name, a malformed list) and for an ``--out`` folder that holds a run with a
    different configuration, data file or checkpoint.

    What to do: correct the option as the message says. For a run directory of another configuration,
    choose another ``--out``, or pass ``--force`` to discard its results and start over.
    """


class NumericalError(AlignmentProbeError):
    """A forward pass produced NaN or inf (a broken checkpoint, an overflowing dtype, an extreme patch).

    The message names the pair (``pair_id``, the 0-based line of the data file), the model and the first
    hook point whose activation is not finite, or the patched condition that made it so. Exit code 3.

    What to do: check the named model's weights (a clean forward that breaks points at the checkpoint), try
    ``--dtype float32`` if the run used bfloat16, or leave out the condition (for example a large ``--alphas``
    value or ``--steer-c``) that drives activations out of range.
    """

    exit_code = EXIT_NUMERICAL


class ArchitectureNotSupportedError(CheckpointError):
    """The checkpoint's architecture is one TransformerLens cannot convert.

    Raised from ``config.json``'s ``architectures`` before any weights load; the message lists the families
    that work (GPT-2, GPT-Neo, GPT-NeoX/Pythia, OPT, Llama, Mistral, Qwen2/3, Phi-3, Gemma 1–3, OLMo-2).

    What to do: use a model of a supported family. Adding a family means teaching ``families.py`` to build
    its TransformerLens config and adding its tiny twin to ``tests/integration/test_families.py``.
    """


class HubModelUnknownError(CheckpointError):
    """A hub name that TransformerLens has no official entry for (and that is no local folder).

    What to do: download the model to a folder (``hf download NAME --local-dir DIR``) and pass the folder;
    every supported family loads from a folder whatever its name. Check the spelling if you meant a folder.
    """


class HubModelNotCachedError(CheckpointError):
    """A hub model that is not in the Hugging Face cache while the hub cannot be reached.

    What to do: download it once where the hub is reachable (it lands in ``HF_HUB_CACHE``), or pass a local
    checkpoint folder; ``HF_HUB_OFFLINE=1`` then loads it from the cache.
    """


class HubAccessError(CheckpointError):
    """A gated or private hub model this account has no access to.

    What to do: accept the model's licence on its hub page and log in (``hf auth login``), or pass a local
    copy of the checkpoint.
    """


class AdapterError(CheckpointError):
    """A peft adapter that does not belong to the base model or does not fit its shapes.

    Raised when ``--tuned`` is an adapter folder whose ``base_model_name_or_path`` names another model, or
    whose matrices do not fit the base's modules.

    What to do: pass the base the adapter was trained on as ``--base``, or the adapter of this base.
    """
