"""``alignment-probe`` command line: argument parsing and printing only; the work lives elsewhere.

Exit codes: 0 success; 1 internal error (a bug: the traceback is printed); 2 bad input (data,
checkpoints, options, run directory: one paragraph says what to fix, ``--debug`` adds the
traceback); 3 a model produced NaN/inf (the message names pair, model and layer); 130 / 143
interrupted by Ctrl-C / SIGTERM (a ``run`` keeps what it finished: rerun the same command to resume).

The package, by responsibility: ``parser`` (the flags, and reading them before torch loads), ``commands`` (score,
run, generate), ``organism`` (the organisms' build) and ``entry`` (:func:`main`: the command chosen, errors,
interrupts and exit codes). The names below are the ones callers import from ``alignment_probe.cli``.
"""

from alignment_probe.cli.commands import (
    GENERATE_DEFAULT_PAIRS,
    _input_spec,
    _list,
    _procs,
    check_backend_args,
    cmd_generate,
    cmd_run,
    cmd_score,
    resolve_defaults,
)
from alignment_probe.cli.entry import COMMANDS, Terminated, main
from alignment_probe.cli.organism import cmd_organism
from alignment_probe.cli.parser import DESCRIPTION, build_parser, parse_args
from alignment_probe.vocab import parse_layers as _layers

__all__ = [
    "COMMANDS",
    "DESCRIPTION",
    "GENERATE_DEFAULT_PAIRS",
    "Terminated",
    "_input_spec",
    "_layers",
    "_list",
    "_procs",
    "build_parser",
    "check_backend_args",
    "cmd_generate",
    "cmd_organism",
    "cmd_run",
    "cmd_score",
    "main",
    "parse_args",
    "resolve_defaults",
]
