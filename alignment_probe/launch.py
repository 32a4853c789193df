"""Start a run as several processes on this machine: the one launcher, for ``alignment-probe run --procs N`` and
for a :class:`~alignment_probe.request.RunRequest` built in Python (the findings driver's ``--nproc``).

:func:`spawn` starts the ranks with the variables torchrun would set (so each joins the same
:class:`~alignment_probe.world.World`) and waits; a rank's refusal or failure is raised here once, with that
rank's own message and exit code (:class:`LaunchedError`), or as a :class:`~alignment_probe.world.PeerError` when a
rank crashed without one. Nothing a rank raises is lost: the parent either returns (every rank exited 0) or raises.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from alignment_probe.errors import EXIT_OK, EXIT_PEER, AlignmentProbeError, ConfigError
from alignment_probe.world import PeerError

if TYPE_CHECKING:  # the request imports the suite (torch): a rank imports it, the launching process never does
    from alignment_probe.request import RunRequest

ERROR_FILE = "ALIGNMENT_PROBE_ERROR_FILE"  # where a spawned rank puts its error, for the parent
SPAWNED = "ALIGNMENT_PROBE_SPAWNED"  # set in the ranks run --procs starts: they run, and start nothing more


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(command: Sequence[str], nproc: int, *, threads: int = 1, log: Callable[[str], None] = print) -> None:
    """``python <command>`` as ``nproc`` processes on this machine, as torchrun would start them (the same
    environment variables, so the same :class:`~alignment_probe.world.World`) without torchrun's agent, each on
    ``threads`` CPU threads.
    This process imports nothing heavy and only waits. Rank 0's output shows (its progress and its report of the
    run); the other ranks' goes to a file, shown if they fail. A refusal or failure is raised here once, as the
    rank that caused it said it (its message and exit code: bad input stays exit 2)."""
    import signal
    import subprocess

    if nproc < 1:
        raise ConfigError(f"the number of processes must be at least 1, got {nproc}.")
    with tempfile.TemporaryDirectory(prefix="alignment-probe-procs-") as tmp:
        port = _free_port()
        procs, logs = [], []
        for rank in range(nproc):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc),
                GROUP_WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads),
                **{SPAWNED: "1", ERROR_FILE: os.path.join(tmp, f"error-{rank}.json")},
            )
            logs.append(None if rank == 0 else open(os.path.join(tmp, f"rank-{rank}.log"), "wb"))
            procs.append(subprocess.Popen([sys.executable, *command], env=env, stdout=logs[-1], stderr=logs[-1]))
        try:
            codes = [p.wait() for p in procs]
        except BaseException:  # Ctrl-C or SIGTERM: stop the ranks; finished parts stay on disk
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
        finally:
            for handle in logs:
                if handle is not None:
                    handle.close()
        if not any(codes):
            return
        errors = []
        for rank, code in enumerate(codes):
            file, text = os.path.join(tmp, f"error-{rank}.json"), os.path.join(tmp, f"rank-{rank}.log")
            if os.path.exists(file):
                with open(file, encoding="utf-8") as report:
                    errors.append((rank, json.load(report)))
            elif code and os.path.exists(text):  # not a refusal (a crash, a traceback): show what it printed
                with open(text, encoding="utf-8", errors="replace") as output:
                    log(
                        f"--- rank {rank} (exit code {code}), the last lines of its output:\n"
                        + "".join(output.readlines()[-30:])
                    )
    own = [(r, e) for r, e in errors if e["code"] != EXIT_PEER] or errors  # the cause, not the peers it stopped
    if own:
        rank, e = own[0]
        raise LaunchedError(e["message"] if rank == 0 else f"(rank {rank} of {nproc}) {e['message']}", e["code"])
    failed = next(r for r, c in enumerate(codes) if c)
    raise PeerError(
        f"rank {failed} of the {nproc} processes stopped (exit code {codes[failed]}; its output is "
        "above). The finished parts are kept: run the same command again to resume, with --procs 1 to "
        "see one process's output."
    )


class LaunchedError(AlignmentProbeError):
    """A rank of :func:`spawn_cli` refused or failed: its message and exit code, raised once by the parent.

    ``run --procs N`` starts the processes itself; a refusal in one of them reaches the parent here and is
    reported once, with that rank's own message and exit code.

    What to do: what the repeated message says. ``--procs 1`` runs in one process and shows its output.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def report_error(exc: AlignmentProbeError) -> bool:
    """In a rank :func:`spawn` started: put the error where the parent reads it (it reports it once) and
    say so; elsewhere False (the caller prints it)."""
    path = os.environ.get(ERROR_FILE)
    if not path:
        return False
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"code": exc.exit_code, "message": str(exc)}, handle)
    return True


def spawn_cli(argv: Sequence[str], nproc: int, *, threads: int = 1, log: Callable[[str], None] = print) -> None:
    """``alignment-probe <argv>`` as ``nproc`` ranks (``run --procs N``): :func:`spawn` of the command line."""
    spawn(["-m", "alignment_probe", *argv], nproc, threads=threads, log=log)


def spawn_request(req: RunRequest, nproc: int, *, threads: int = 1, log: Callable[[str], None] = print) -> None:
    """The run ``req`` as ``nproc`` ranks: :func:`spawn` of this module, each rank reading the request from one
    JSON file (:meth:`~alignment_probe.request.RunRequest.to_json`) and running
    :func:`~alignment_probe.run.execute`. The run directory and its numbers are a single process's."""
    with tempfile.TemporaryDirectory(prefix="alignment-probe-request-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(req.to_json(), encoding="utf-8")
        log(f"launching {nproc} processes of {threads} CPU thread{'s' if threads > 1 else ''} each into {req.out}")
        spawn(["-m", "alignment_probe.launch", str(path)], nproc, threads=threads, log=log)


def _rank_main(path: str) -> int:
    """One rank of :func:`spawn_request`: the request in ``path``, executed in this rank's share of the run. A
    refusal goes to the parent (:func:`report_error`); any other error is a traceback in this rank's output."""
    from alignment_probe.request import RunRequest
    from alignment_probe.run import execute

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    req = RunRequest.from_json(Path(path).read_text(encoding="utf-8"))
    try:
        execute(req, progress=True, log=lambda s: print(s, file=sys.stderr))
    except AlignmentProbeError as exc:
        if not report_error(exc):
            print(f"alignment-probe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
