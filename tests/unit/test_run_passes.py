"""The part protocol's passes (distributed.run_passes) and a run's request carried to other processes as JSON.

A pass of the suite runs again only because a part another rank computes was pending; any other error leaves
the first pass that raised it, even when placeholders were handed out in that pass."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from alignment_probe.distributed import run_passes
from alignment_probe.tables import PartStore, table_bytes


class TwoRanks:
    """Rank 0 of a world of two, whose other rank publishes its parts when asked (what World does with a store)."""

    rank, size, is_main, distributed = 0, 2, True, True

    def __init__(self) -> None:
        self.received: list[str] = []

    def publish(self, name: str, data: bytes) -> None:
        pass

    def published(self, name: str) -> bytes | None:
        return None  # rank 1 has not finished yet: a placeholder is handed out

    def receive(self, names: list[str], owners: list[int]) -> dict[str, bytes]:
        self.received += names
        return {n: table_bytes(pd.DataFrame({"part": [n]})) for n in names}


def _two_parts(store: PartStore) -> list[pd.DataFrame]:
    # a family's k-th part belongs to rank k % 2: the first is this rank's, the second rank 1's
    return [store.table(f"stage1-{i:06d}", lambda i=i: pd.DataFrame({"part": [f"mine {i}"]})) for i in range(2)]


def test_a_pending_part_is_waited_for_and_the_pass_run_again():
    world, passes = TwoRanks(), []
    store = PartStore(world=world)

    def suite() -> pd.DataFrame:
        passes.append(1)
        return pd.concat(_two_parts(store), ignore_index=True)  # touches rank 1's placeholder: PartPending

    result = run_passes(suite, store, world)  # type: ignore[arg-type]  # a stand-in for World
    assert len(passes) == 2 and world.received == ["stage1-000001.parquet"]
    assert list(result["part"]) == ["mine 0", "stage1-000001.parquet"]


def test_an_error_after_a_placeholder_propagates_from_the_first_pass():
    world, passes = TwoRanks(), []
    store = PartStore(world=world)

    def suite() -> None:
        passes.append(1)
        _two_parts(store)  # a placeholder is handed out (store.pending), and not touched
        raise ValueError("a real error in the suite")

    with pytest.raises(ValueError, match="a real error"):
        run_passes(suite, store, world)  # type: ignore[arg-type]
    assert len(passes) == 1 and world.received == []  # not run again, not waited on


def test_a_run_request_survives_json_unchanged():
    from alignment_probe.experiments.suite import preset_config
    from alignment_probe.request import RunRequest

    suite = preset_config(
        "full",
        experiments=("patch_tuned_to_base", "alpha", "lowrank_difference"),
        layers=(0, 2, 3),
        alphas=(0.0, 0.5, 1.5),
        lowrank_ks=(1, 3),
        transfer_data="other.jsonl",
        seed=7,
        n_boot=30,
    )
    req = RunRequest(
        base="b",
        tuned="t",
        data="d.jsonl",
        out=Path("runs/x"),
        suite=suite,
        n_pairs=None,
        pair_ids="ids.json",
        chat_template="auto",
        force=True,
        argv=["findings", "harmless"],
        backend="hooked",
    )
    back = RunRequest.from_json(req.to_json())
    assert back == req and back.config() == req.config()
    assert back.inputs() == req.inputs() and back.transfer_inputs().data == "other.jsonl"
