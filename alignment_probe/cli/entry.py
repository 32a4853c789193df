"""The entry point, :func:`main`: parse, run the command, and turn what it raised into a message and an exit code
(the codes in the package's docstring); SIGTERM and SIGHUP unwind like Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import NoReturn, Sequence

from alignment_probe.cli.commands import cmd_generate, cmd_run, cmd_score
from alignment_probe.cli.organism import cmd_organism
from alignment_probe.cli.parser import parse_args
from alignment_probe.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AlignmentProbeError


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwind like Ctrl-C, so the run stops between two atomic writes."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated(signum)


COMMANDS = {"score": cmd_score, "run": cmd_run, "generate": cmd_generate, "organism": cmd_organism}


def main(argv: Sequence[str] | None = None) -> int:
    as_program = argv is None  # the command line itself (not a caller in Python): the process ends after this
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = ["alignment-probe", *argv]
    args.debug = getattr(args, "debug", False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads its OpenMP runtime: threads that wait for work sleep instead of spinning. On a machine
    # whose cores other jobs share, a spinning thread holds a core while its partner waits to be scheduled:
    # measured on the shared 2-core machine, 2 threads ran the bundled default's patching 3-30x slower than
    # 1 thread (default waiting) and as fast as 1 thread (PASSIVE). The thread count, hence every number, is
    # unchanged; set OMP_WAIT_POLICY to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                handlers[sig] = signal.signal(sig, _raise_terminated)
    try:
        if args.command != "run" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            from alignment_probe.errors import ConfigError

            raise ConfigError(
                f"only `run` is shared between processes; launch `{args.command}` without torchrun "
                "(alignment-probe " + args.command + " ...)."
            )
        return COMMANDS[args.command](args)
    except AlignmentProbeError as exc:
        if args.debug:
            traceback.print_exc()
        from alignment_probe.launch import report_error

        if not report_error(exc):  # a rank of run --procs leaves its error to the process that started it
            print(f"alignment-probe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        code = 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED
        if args.debug:
            traceback.print_exc()
        hint = (
            f" Results finished so far are kept in {args.out}; run the same command again to resume."
            if args.command == "run"
            else ""
        )
        print(f"alignment-probe: interrupted.{hint}", file=sys.stderr)
        return code
    except Exception:  # an internal error: a bug, not bad input
        traceback.print_exc()
        print("alignment-probe: internal error (a bug); please report it with the traceback above.", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if as_program:
            # Python's shutdown would sweep every object of torch, TransformerLens and transformers once more (1-2.5 s
            # measured, for each process of a run); frozen objects are left to the exit
            import gc

            gc.freeze()
