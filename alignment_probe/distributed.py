"""One run over many processes, GPUs and nodes, launched by ``torchrun``.

``torchrun --nproc_per_node N [--nnodes M ...] -m alignment_probe run ... --out DIR`` starts N × M
copies of the same command. Each reads its place in the world from the variables torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), loads the pair on its
own device (``cuda:LOCAL_RANK``, or the CPU with the gloo backend) and runs the *same* suite code.
The work is split where it is already cut into parts (:class:`~alignment_probe.tables.PartStore`):

* a **table part** (``store.table(name, fn)``: per group of pairs) belongs to one rank: parts whose
  names differ only in their numeric tail (``stage1-000000-000007``, ``stage1-000008-000015`` …) form
  a family, and the k-th part of a family requested goes to rank ``k % world_size``. Every rank
  requests parts in the same order (same code, same inputs), so ownership is the same everywhere;
  the suite requests its groups of pairs in a snake over the ranks (``suite.pair_groups``), so every
  rank gets as many short prompts as long ones.
  A rank computes its own parts and gets a :class:`PendingPart` placeholder for the others, so the
  parts of a stage run in parallel;
* a **JSON part** (``store.json(name, fn)``: a whole-data result such as the low-rank fit or the
  LASSO) is computed once, by rank 0; the others wait for it where they need it.

When the suite touches a placeholder (concatenating a stage's parts) the pass stops;
:func:`run_passes` waits until the owners have published those parts and runs the suite again,
which now loads them. A finished part is written atomically to the run directory by its owner and
its bytes are published through torch.distributed's key-value store, so every rank reads exactly
the bytes the owner stored: the final tables are assembled from the same bytes, in the same order,
as a single-process run's, so they are byte-identical (on CPUs: with the same threads per process).
Rank 0 writes the manifest and the final outputs; the others exit after a last barrier.

Nothing can hang: every wait polls the store and stops with :class:`PeerError` when a rank reports
a failure, when a rank's heartbeat stops (``ALIGNMENT_PROBE_DIST_TIMEOUT`` seconds, default 300),
or when the store itself is gone (rank 0 or the torchrun agent died). torchrun also stops the other
workers when one exits. Whatever was finished stays in ``parts/``: running the same command again,
with any number of processes, resumes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Callable

from alignment_probe.checkpoint_files import is_local_checkpoint, read_checkpoint_config
from alignment_probe.errors import EXIT_PEER, AlignmentProbeError, ConfigError  # noqa: F401  (EXIT_PEER: kept importable here)

# the part store's placeholder types live with the store (a lower layer); importable here as before
from alignment_probe.tables import PartPending as PartPending  # kept importable here
from alignment_probe.tables import PartStore
from alignment_probe.tables import PendingPart as PendingPart
from alignment_probe.tables import part_family as part_family

DEFAULT_TIMEOUT_S = 300.0
HEARTBEAT_S = 1.0


def _timeout_s() -> float:
    raw = os.environ.get("ALIGNMENT_PROBE_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"ALIGNMENT_PROBE_DIST_TIMEOUT={raw!r}: expected a positive number of seconds, e.g. 300.")
    return value


class PeerError(AlignmentProbeError):
    """Another process of the same distributed run failed, died or cannot be reached.

    The other processes stop within ``ALIGNMENT_PROBE_DIST_TIMEOUT`` seconds (default 300) with exit code 4
    and the failed rank's message. The finished parts are kept.

    What to do: fix what the failed rank's message says, then run the same command again, with any number of
    processes, to resume.
    """

    exit_code = EXIT_PEER


@dataclass
class World:
    """This process's place in a run: rank, world size, local rank, and the shared key-value store."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    backend: str = "gloo"
    store: Any = None  # torch.distributed Store (a PrefixStore private to this run); None when alone
    _beat_store: Any = field(default=None, repr=False)
    _beat_stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _seen: dict[int, tuple[int, float]] = field(default_factory=dict, repr=False)
    _initialised_pg: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.size,
            "backend": self.backend if self.distributed else None,
            "nodes": int(os.environ.get("GROUP_WORLD_SIZE", "1") or 1) if self.distributed else 1,
            "processes_per_node": int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if self.distributed else 1,
        }

    # --- set-up and tear-down ---------------------------------------------------------------
    @classmethod
    def from_env(cls, device: str | None = None) -> "World":
        """The world torchrun describes in the environment, or a world of one (no torchrun)."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return cls()
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: launch with torchrun "
                "(torchrun --nproc_per_node N -m alignment_probe run ...), which sets them all."
            )
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        timeout = _timeout_s()
        cuda = device_for(device, local_rank).startswith("cuda")
        backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        world = cls(rank=rank, size=size, local_rank=local_rank, timeout_s=timeout, backend=backend)
        try:
            if not dist.is_initialized():
                dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
                world._initialised_pg = True
            host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            prefix = (
                f"alignment_probe/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
                f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
            )
            client = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
            world.store = dist.PrefixStore(prefix, client)
            world._beat_store = dist.PrefixStore(prefix, client.clone())  # type: ignore[attr-defined]  # torch's stubs lack Store.clone
        except (RuntimeError, ValueError) as exc:
            raise PeerError(
                f"rank {rank} could not join the run at {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']} ({exc}). Check that every node runs the same torchrun "
                "command with the same --rdzv-endpoint/--master-addr, and that the port is reachable."
            ) from exc
        threading.Thread(target=world._heartbeat, name="alignment-probe-heartbeat", daemon=True).start()
        return world

    def _heartbeat(self) -> None:
        while not self._beat_stop.wait(HEARTBEAT_S):
            try:
                self._beat_store.add(f"hb/{self.rank}", 1)
            except Exception:  # the store is gone: the main thread notices at its next wait
                return

    def fail(self, message: str) -> None:
        """Tell the other ranks that this one stopped (best effort: the store may be gone already)."""
        if self.store is None:
            return
        try:
            self.store.set(f"failed/{self.rank}", message.encode("utf-8", "replace")[:4000])
            self.store.add("failures", 1)
        except Exception:
            pass

    def finish(self) -> None:
        """The last barrier: every rank is done (rank 0 has written the outputs); then rank 0, which may
        host the store, waits until every other rank has left it before it exits."""
        if not self.distributed:
            return
        self.barrier("finished")
        self.store.add("left", 1)
        if self.is_main:
            deadline = time.monotonic() + min(self.timeout_s, 60.0)
            while time.monotonic() < deadline:
                try:
                    if self.store.add("left", 0) >= self.size:
                        return
                except Exception:
                    return
                time.sleep(0.02)

    def close(self) -> None:
        self._beat_stop.set()
        if self._initialised_pg:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:
                pass
            self._initialised_pg = False

    def __enter__(self) -> "World":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, PeerError):
            self.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self.close()

    # --- waiting without hanging ---------------------------------------------------------------
    def _check_alive(self, waiting_for: str) -> None:
        store = self.store
        try:
            failures = store.add("failures", 0)
            if failures:
                for r in range(self.size):
                    if r != self.rank and store.check([f"failed/{r}"]):
                        message = store.get(f"failed/{r}").decode("utf-8", "replace")
                        raise PeerError(
                            f"rank {r} of this run stopped ({message}), so rank {self.rank} stops too. "
                            "The finished parts are kept: run the same command again to resume."
                        )
            now = time.monotonic()
            for r in range(self.size):
                if r == self.rank:
                    continue
                beats = store.add(f"hb/{r}", 0)
                last = self._seen.get(r)
                if last is None or last[0] != beats:
                    self._seen[r] = (beats, now)
                elif now - last[1] > self.timeout_s:
                    raise PeerError(
                        f"rank {r} of this run has shown no sign of life for {self.timeout_s:.0f} s "
                        f"while rank {self.rank} waited for {waiting_for}: it was killed or its machine "
                        "is gone. The finished parts are kept: run the same command again to resume (set "
                        "ALIGNMENT_PROBE_DIST_TIMEOUT to wait longer)."
                    )
        except PeerError:
            raise
        except Exception as exc:  # the store (rank 0 or the torchrun agent) is unreachable
            raise PeerError(
                f"rank {self.rank} lost contact with the run's coordinator at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} while waiting for "
                f"{waiting_for} ({type(exc).__name__}: {exc}): rank 0 or the torchrun agent stopped. The "
                "finished parts are kept: run the same command again to resume."
            ) from exc

    def wait_for(self, keys: list[str], what: str) -> None:
        """Block until every key is in the store, checking that the other ranks are alive."""
        delay = 0.01
        while True:
            self._check_alive(what)
            try:
                if not keys or self.store.check(keys):
                    return
            except Exception:
                self._check_alive(what)
                raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def barrier(self, name: str) -> None:
        """Every rank reaches ``name`` (a name used once per run) before any goes on."""
        if not self.distributed:
            return
        key = f"barrier/{name}"
        self.store.add(key, 1)
        delay = 0.01
        while True:
            self._check_alive(f"every rank to reach '{name}'")
            if self.store.add(key, 0) >= self.size:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # --- part bytes --------------------------------------------------------------------------
    def publish(self, name: str, data: bytes) -> None:
        self.store.set(f"part/{name}", data)

    def published(self, name: str) -> bytes | None:
        key = f"part/{name}"
        return self.store.get(key) if self.store.check([key]) else None

    def receive(self, names: list[str], owners: list[int]) -> dict[str, bytes]:
        what = ", ".join(f"{n} (rank {o})" for n, o in zip(names, owners))
        self.wait_for([f"part/{n}" for n in names], f"part(s) {what}")
        return {n: self.store.get(f"part/{n}") for n in names}


def device_for(device: str | None, local_rank: int, n_devices: int = 1) -> str:
    """The device this rank loads the pair on: ``cuda``/None with a GPU → ``cuda:LOCAL_RANK``; with a
    pair spread over ``n_devices`` GPUs per rank (TransformerLens ``n_devices``), the first of this
    rank's block of GPUs, ``cuda:LOCAL_RANK × n_devices`` (TransformerLens counts on from there)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank * n_devices}"
    return device


def run_passes(
    run: Callable[[], Any], store: PartStore, world: World, *, log: Callable[[str], None] = lambda s: None
) -> Any:
    """Run ``run()`` (the suite) until a pass completes with every part real.

    A pass that got placeholders for other ranks' parts (or stopped where it used one) waits for
    those parts and runs again; parts this or earlier passes finished are loaded, not recomputed.
    A pass that failed with no placeholder handed out failed for real: its error propagates.
    """
    if not world.distributed:
        return run()
    n = 0
    while True:
        n += 1
        store.begin_pass()
        try:
            result = run()
        except PeerError:
            raise
        except Exception:  # (Ctrl-C, SIGTERM and exits are BaseExceptions: they always stop the run)
            if not store.pending:
                raise
        else:
            if not store.pending:
                return result
        pending = dict(store.pending)
        if world.is_main:
            owners = sorted(set(pending.values()))
            log(
                f"waiting for {len(pending)} part(s) from rank{'s' if len(owners) > 1 else ''} "
                f"{', '.join(map(str, owners))}"
            )
        store.receive_pending()


# --- the command line's own processes (run --procs) ---------------------------------------------------
# Models narrower than this gain nothing from a second CPU thread: their matrix products are too small to share.
# The command line runs them on one thread per process, and one process per core. Measured side by side on the
# bundled default (d_model 128, 2-core machine, bench/README.md): 1 thread 129 s, torch's 2 threads 293 s; one
# process 87 s, two processes 53-61 s, byte-identical.
ONE_THREAD_BELOW_D_MODEL = 512
# Each process gets at least this many parts of a stage, so a small run is not split for nothing.
MIN_PARTS_PER_PROCESS = 2
ERROR_FILE = "ALIGNMENT_PROBE_ERROR_FILE"  # where a spawned rank's command line puts its error, for the parent
SPAWNED = "ALIGNMENT_PROBE_SPAWNED"  # set in the ranks run --procs starts: they run, and start nothing more


def auto_processes(
    *, device: str | None, base: str, n_pairs: int, pairs_per_part: int, cores: int | None = None, environ: Any = None
) -> tuple[int, str]:
    """How many processes ``run --procs auto`` starts, and why: one per CPU core (up to one per
    :data:`MIN_PARTS_PER_PROCESS` parts) for a narrow model (d_model < :data:`ONE_THREAD_BELOW_D_MODEL`, read from
    the local base checkpoint's config.json) on the CPU; 1 under torchrun (or in a rank of ``--procs``), with
    ``OMP_NUM_THREADS`` set (the user chose threads), on a GPU, for a hub model or a wide one. Decided before
    torch is imported."""
    import math
    from pathlib import Path

    env = os.environ if environ is None else environ
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 or "OMP_NUM_THREADS" in env:
        return 1, "torchrun or OMP_NUM_THREADS chose"
    if device is not None and not str(device).startswith("cpu"):
        return 1, f"device {device}"
    if device is None and any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")):
        return 1, "a GPU is present"
    if not is_local_checkpoint(base):  # a hub name: a real model, not worth a process per core
        return 1, "the base is a hub model"
    config = read_checkpoint_config(Path(base).expanduser())  # the command line checked the folder before
    d_model = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if not isinstance(d_model, int) or d_model >= ONE_THREAD_BELOW_D_MODEL:
        return 1, f"d_model {d_model}"
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parts = math.ceil(n_pairs / pairs_per_part)
    why = f"{cores} CPU cores, d_model {d_model}, {parts} parts per stage"
    return max(1, min(cores, parts // MIN_PARTS_PER_PROCESS)), why


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_cli(argv: list[str], nproc: int, *, threads: int = 1, log: Callable[[str], None] = print) -> None:
    """``alignment-probe <argv>`` as ``nproc`` processes on this machine, as torchrun would start them (the same
    environment variables, so the same :class:`World`) without torchrun's agent, each on ``threads`` CPU threads.
    This process imports nothing heavy and only waits. Rank 0's output shows (its progress and its report of the
    run); the other ranks' goes to a file, shown if they fail. A refusal or failure is raised here once, as the
    rank that caused it said it (its message and exit code: bad input stays exit 2)."""
    import json
    import signal
    import subprocess
    import sys
    import tempfile

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
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "alignment_probe", *argv], env=env, stdout=logs[-1], stderr=logs[-1]
                )
            )
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
    """In a rank :func:`spawn_cli` started: put the error where the parent reads it (it reports it once) and
    say so; elsewhere False (the caller prints it)."""
    import json

    path = os.environ.get(ERROR_FILE)
    if not path:
        return False
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"code": exc.exit_code, "message": str(exc)}, handle)
    return True
