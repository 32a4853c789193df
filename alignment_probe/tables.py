"""Write tidy tables to .csv or .parquet atomically (:mod:`alignment_probe.files`), and keep a run's partial
results as parts.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Protocol

import pandas as pd

from alignment_probe.errors import ConfigError
from alignment_probe.files import TMP_SUFFIX as TMP_SUFFIX  # kept importable here
from alignment_probe.files import json_bytes as json_bytes
from alignment_probe.files import write_bytes_atomic as write_bytes_atomic

TABLE_SUFFIXES = (".csv", ".parquet")


def check_table_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"--out {path}: the file name must end in .csv or .parquet.")
    if not path.parent.exists():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist; create it first.")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name ending in .csv or .parquet.")
    return path


def table_bytes(table: pd.DataFrame, suffix: str = ".parquet") -> bytes:
    """The exact bytes :func:`write_table` writes (deterministic: no timestamps in either format)."""
    buf = io.BytesIO()
    if suffix == ".csv":
        buf.write(table.to_csv(index=False, float_format="%.9g").encode("utf-8"))
    else:
        table.to_parquet(buf, index=False)
    return buf.getvalue()


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = check_table_path(path)
    return write_bytes_atomic(path, table_bytes(table, path.suffix))


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


class PartPending(Exception):
    """A part computed by another rank was used before it was ready (caught by :func:`run_passes`)."""


class PendingPart:
    """Stands in for a table part another rank is computing; any use raises :class:`PartPending`."""

    __slots__ = ("name", "owner")

    def __init__(self, name: str, owner: int):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "owner", owner)

    def _pending(self, *args: Any, **kwargs: Any) -> Any:
        raise PartPending(
            f"part {object.__getattribute__(self, 'name')} is being computed by rank "
            f"{object.__getattribute__(self, 'owner')}"
        )

    def __getattr__(self, attr: str) -> Any:
        self._pending()

    __len__ = __iter__ = __getitem__ = __setitem__ = __bool__ = __array__ = __eq__ = __ne__ = __lt__ = __gt__ = (
        __add__
    ) = __radd__ = __mul__ = __contains__ = __hash__ = __setattr__ = __float__ = __int__ = _pending

    def __repr__(self) -> str:
        return (
            f"<part {object.__getattribute__(self, 'name')} pending on rank {object.__getattribute__(self, 'owner')}>"
        )


_FAMILY_TAIL = re.compile(r"(-\d+)+$")


def part_family(name: str) -> str:
    """``stage1-000000-000007`` → ``stage1``: parts that differ only in their numeric tail."""
    return _FAMILY_TAIL.sub("", name)


class PartWorld(Protocol):
    """What the part store needs of a world of processes (:class:`alignment_probe.world.World` is one)."""

    rank: int
    size: int

    @property
    def is_main(self) -> bool: ...

    @property
    def distributed(self) -> bool: ...

    def publish(self, name: str, data: bytes) -> None: ...

    def published(self, name: str) -> bytes | None: ...

    def receive(self, names: list[str], owners: list[int]) -> dict[str, bytes]: ...


class PartStore:
    """Named partial results of a run: tables (Parquet) and JSON objects.

    With a folder, each part is a file written atomically, so a run killed at any moment leaves
    only complete parts, and a restarted run loads them instead of recomputing. Without one, parts
    live in memory. Either way :meth:`table` and :meth:`json` hand back what was *read back* from the
    stored bytes, so a result is the same whether it was just computed or loaded after a restart.

    With a ``world`` of several processes (torchrun; see :mod:`alignment_probe.distributed`) the
    store is *sharded*: each table part is computed by one rank (the k-th part of a family, i.e. of
    names that differ only in their numeric tail, by rank ``k % world_size``) and the others get a
    :class:`PendingPart` placeholder until it is published; each JSON
    part (a whole-data result) is computed by rank 0 while the others wait for it. Code that gets
    its work through :meth:`table` and :meth:`json` is thereby sharded without knowing it;
    :func:`~alignment_probe.distributed.run_passes` reruns it until no placeholder is left.
    """

    def __init__(self, root: str | Path | None = None, *, world: PartWorld | None = None):
        self.root = Path(root) if root is not None else None
        self.world: PartWorld | None = world if world is not None and getattr(world, "distributed", False) else None
        self._memory: dict[str, bytes] = {}
        self.loaded: list[str] = []  # parts found already done (for logs and tests)
        self.computed: list[str] = []
        self.received: list[str] = []  # parts another rank computed in this run
        self.pending: dict[str, int] = {}  # this pass's placeholders: part name -> owning rank
        self._families: dict[str, int] = {}
        self._published: set[str] = set()
        self.passes = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            if self.world is None or self.world.is_main:  # others may already be writing theirs
                for stale in self.root.glob(f"*{TMP_SUFFIX}"):  # left by a kill in the middle of a write
                    stale.unlink()

    def _path(self, name: str) -> Path:
        assert self.root is not None
        return self.root / name

    def _read(self, name: str) -> bytes | None:
        if self.root is None:
            return self._memory.get(name)
        path = self._path(name)
        return path.read_bytes() if path.exists() else None

    def _write(self, name: str, data: bytes) -> None:
        if self.root is None:
            self._memory[name] = data
        else:
            write_bytes_atomic(self._path(name), data)

    def has(self, name: str) -> bool:
        return self._read(name) is not None

    def names(self) -> frozenset[str]:
        """The parts stored now (file names, e.g. ``stage1-000000-000007.parquet``)."""
        if self.root is None:
            return frozenset(self._memory)
        return frozenset(p.name for p in self.root.iterdir() if not p.name.endswith(TMP_SUFFIX))

    def table(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """The table stored as ``name`` (``.parquet`` is appended), computing and storing it if absent."""
        return self._get(f"{name}.parquet", compute, table_bytes, lambda b: pd.read_parquet(io.BytesIO(b)), shard=True)

    def json(self, name: str, compute: Callable[[], Any]) -> Any:
        """The JSON object stored as ``name`` (``.json`` is appended), computing and storing it if absent."""
        return self._get(f"{name}.json", compute, json_bytes, lambda b: json.loads(b.decode("utf-8")), shard=False)

    # --- sharding ------------------------------------------------------------------------------
    def begin_pass(self) -> None:
        """A new pass of the same code: ownership is counted again from the first request."""
        self._families.clear()
        self.pending = {}
        self.passes += 1

    @property
    def ranks(self) -> int:
        """How many processes share the parts (1 without a distributed world)."""
        return self.world.size if self.world is not None else 1

    def owner(self, name: str, *, shard: bool) -> int:
        """The rank that computes part ``name`` (called once per request, in request order)."""
        if self.world is None:
            return 0
        if not shard:
            return 0
        family = part_family(name.rsplit(".", 1)[0])
        k = self._families.get(family, 0)
        self._families[family] = k + 1
        return k % self.world.size

    def _publish(self, name: str, data: bytes) -> None:
        if self.world is not None and name not in self._published:
            self.world.publish(name, data)
            self._published.add(name)

    def _accept(self, name: str, data: bytes) -> None:
        """Bytes another rank computed: rank 0 keeps a copy in its run directory (if not there already),
        so the directory it writes the outputs to holds every part even without a shared file system."""
        if name not in self.received:
            self.received.append(name)
        if self.world is not None and self.world.is_main and not self.has(name):
            self._write(name, data)

    def receive_pending(self) -> None:
        """Wait until every placeholder of this pass has been published by its owner."""
        if not self.pending:
            return
        names = list(self.pending)
        assert self.world is not None  # placeholders exist only in a distributed world
        for name, data in self.world.receive(names, [self.pending[n] for n in names]).items():
            self._accept(name, data)
        self.pending = {}

    def _get(
        self,
        name: str,
        compute: Callable[[], Any],
        dump: Callable[[Any], bytes],
        load: Callable[[bytes], Any],
        *,
        shard: bool = True,
    ) -> Any:
        owner = self.owner(name, shard=shard)
        mine = self.world is None or owner == self.world.rank
        data = self._read(name)
        if data is not None:
            try:
                value = load(data)
            except Exception:  # not written by us (we never leave half a file): recompute it
                data = None
            else:
                if name not in self.loaded:
                    self.loaded.append(name)
                if mine:
                    self._publish(name, data)  # a rank without this file (another node) may need it
                return value
        if not mine:
            assert self.world is not None  # another rank's part: a distributed world
            data = self.world.published(name)
            if data is None and not shard:  # a whole-data result: needed at once, so wait for it here
                data = self.world.receive([name], [owner])[name]
            if data is None:
                self.pending[name] = owner
                return PendingPart(name, owner)
            self._accept(name, data)
            return load(data)
        data = dump(compute())
        self._write(name, data)
        self._publish(name, data)
        self.computed.append(name)
        return load(data)

    def clear(self) -> None:
        """Forget every part (``--force`` on a run directory of another configuration)."""
        self._memory.clear()
        if self.root is not None:
            for path in self.root.iterdir():
                if path.is_file():
                    path.unlink()
