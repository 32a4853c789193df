"""This process's place in a run of several (``torchrun``, or ``run --procs``): rank, world size, local rank, the
shared key-value store, and waits that cannot hang.

torchrun (and :func:`alignment_probe.launch.spawn`, which sets the same variables) describes the world in the
environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. Each rank loads the pair on
its own device (:func:`device_for`). Every wait polls the store and stops with :class:`PeerError` when a rank
reports a failure, when a rank's heartbeat stops (``ALIGNMENT_PROBE_DIST_TIMEOUT`` seconds, default 300), or when
the store itself is gone (rank 0 or the torchrun agent died). How the ranks share a run's parts is
:mod:`alignment_probe.distributed`'s.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from alignment_probe.errors import EXIT_PEER, AlignmentProbeError, ConfigError

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
