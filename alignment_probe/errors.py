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
    """Base class: a problem the user can fix; the message says how."""

    exit_code = EXIT_BAD_INPUT


class DataError(AlignmentProbeError):
    """The preference data cannot be read or has no usable pairs."""


class CheckpointError(AlignmentProbeError):
    """A model checkpoint is missing, incomplete or of an unsupported architecture."""


class IncompatiblePairError(AlignmentProbeError):
    """Base and tuned models differ in architecture, size or tokenizer."""


class ConfigError(AlignmentProbeError):
    """An option value is invalid, or it conflicts with an existing run directory."""


class NumericalError(AlignmentProbeError):
    """A forward pass produced NaN or inf (a broken checkpoint, an overflowing dtype, an extreme patch)."""

    exit_code = EXIT_NUMERICAL


class ArchitectureNotSupportedError(CheckpointError):
    """The checkpoint's architecture is one TransformerLens cannot convert."""


class HubModelUnknownError(CheckpointError):
    """A hub name that TransformerLens has no official entry for (and that is no local folder)."""


class HubModelNotCachedError(CheckpointError):
    """A hub model that is not in the Hugging Face cache while the hub cannot be reached."""


class HubAccessError(CheckpointError):
    """A gated or private hub model this account has no access to."""


class AdapterError(CheckpointError):
    """A peft adapter that does not belong to the base model or does not fit its shapes."""
