"""One run over many processes, GPUs and nodes: how the processes share its parts.

``torchrun --nproc_per_node N [--nnodes M ...] -m alignment_probe run ... --out DIR`` starts N × M
copies of the same command (``alignment-probe run --procs N`` starts N on this machine itself:
:mod:`alignment_probe.launch`). Each reads its place in the world from the variables torchrun sets
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

When the suite touches a placeholder (concatenating a stage's parts) the pass stops with
:class:`~alignment_probe.tables.PartPending`; :func:`run_passes` waits until the owners have published
those parts and runs the suite again, which now loads them. Any other error propagates at once,
placeholders or not: only a pending part is a reason to run again. A finished part is written atomically
to the run directory by its owner and its bytes are published through torch.distributed's key-value store, so every rank reads exactly
the bytes the owner stored: the final tables are assembled from the same bytes, in the same order,
as a single-process run's, so they are byte-identical (on CPUs: with the same threads per process).
Rank 0 writes the manifest and the final outputs; the others exit after a last barrier.

Nothing can hang: every wait polls the store (:class:`~alignment_probe.world.World`, this process's place
in the run) and stops with :class:`~alignment_probe.world.PeerError` when a rank reports a failure, when a
rank's heartbeat stops (``ALIGNMENT_PROBE_DIST_TIMEOUT`` seconds, default 300), or when the store itself is
gone (rank 0 or the torchrun agent died). torchrun also stops the other workers when one exits. Whatever was finished stays in ``parts/``: running the same command again,
with any number of processes, resumes.
"""

from __future__ import annotations

from typing import Any, Callable

from alignment_probe.errors import EXIT_PEER as EXIT_PEER  # kept importable here

# the part store's placeholder types live with the store (a lower layer); importable here as before
from alignment_probe.tables import PartPending, PartStore
from alignment_probe.tables import PendingPart as PendingPart
from alignment_probe.tables import part_family as part_family
from alignment_probe.world import World


def run_passes(
    run: Callable[[], Any], store: PartStore, world: World, *, log: Callable[[str], None] = lambda s: None
) -> Any:
    """Run ``run()`` (the suite) until a pass completes with every part real.

    A pass that got placeholders for other ranks' parts, or stopped where it used one (:class:`PartPending`),
    waits for those parts and runs again; parts this or earlier passes finished are loaded, not recomputed.
    Every other error propagates from the pass that raised it, whether placeholders were handed out or not.
    """
    if not world.distributed:
        return run()
    while True:
        store.begin_pass()
        try:
            result = run()
        except PartPending:
            if not store.pending:  # a placeholder this pass did not hand out: a bug, not a reason to wait
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
