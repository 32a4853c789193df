"""The errors alignment-probe raises on purpose, and the exit codes the CLI maps them to.

Every error here is about the *user's input* (a file, a checkpoint, an option) and its message
names the problem and the fix. Anything else that escapes is an internal error (a bug).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


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
    """An option value is invalid."""
