"""One ``alignment-probe run`` from start to finish, in this process's share of the world: the inputs checked and
tokenised (prepare.py), the run directory checked for a resume (rundir.py), the twins loaded, the suite run over
the parts (distributed.py shares them between ranks), and the outputs and the manifest written by rank 0.

The layout of a run directory and when it resumes: :mod:`alignment_probe.rundir`. Starting the ranks:
:mod:`alignment_probe.launch` (``run --procs N``) or torchrun (:mod:`alignment_probe.world`).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from alignment_probe.distributed import run_passes
from alignment_probe.engine import make_engine
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.lasso import LASSO_CV_FOLDS
from alignment_probe.experiments.suite import SuiteResult, run_suite
from alignment_probe.manifest import build_manifest, file_fingerprint, now, write_json_atomic
from alignment_probe.pair import load_twins, open_checkpoints
from alignment_probe.prepare import InputsRead, prepare_pairs, read_inputs
from alignment_probe.processes import CpuThreads, make_deterministic
from alignment_probe.progress import Stages
from alignment_probe.request import RunRequest as RunRequest  # the run's request: importable here, where it runs
from alignment_probe.rundir import check_run_dir, check_same_inputs, discard_results, write_run
from alignment_probe.tables import PartStore
from alignment_probe.world import World, device_for


def execute(
    req: RunRequest,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    loaded: InputsRead | None = None,
    auto_threads: bool = False,
) -> SuiteResult:
    """Validate everything cheap first, then load, run (resuming from parts) and write the run directory.
    ``loaded``: :func:`~alignment_probe.prepare.read_inputs` of ``req.inputs()`` when the caller already read
    them (the CLI does, before importing anything heavy).

    Launched by torchrun, every process runs this: each loads the pair on its own device and
    computes its share of the parts (see :mod:`alignment_probe.distributed`); rank 0 alone logs,
    writes the manifest and the outputs. Alone, it is the plain single-process run. ``auto_threads`` (the
    command line): :class:`CpuThreads` chooses the CPU thread count for the run.
    """
    world = World.from_env(req.device)
    threads = CpuThreads(auto_threads)
    try:
        with world:
            result = run_in_world(
                req,
                world,
                progress=progress and world.is_main,
                log=log if world.is_main else (lambda s: None),
                loaded=loaded,
                threads=threads,
            )
            world.finish()
    finally:
        threads.restore()
    return result


def run_in_world(
    req: RunRequest,
    world: World,
    *,
    progress: bool,
    log: Callable[[str], None],
    loaded: InputsRead | None = None,
    threads: CpuThreads | None = None,
) -> SuiteResult:
    """:func:`execute` in a given world (of one process, or this rank's share of a torchrun run)."""
    req.validate()
    old_manifest = check_run_dir(req)
    # The data and the checkpoints' files are read and checked before any model loads (prepare.py).
    if loaded is not None and loaded.spec != req.inputs():
        raise ValueError(f"loaded= read {loaded.spec}, not this request's inputs {req.inputs()}")  # a caller's bug
    read = loaded if loaded is not None else read_inputs(req.inputs())
    transfer = None
    if req.suite.transfer_data is not None:  # E11's transfer pairs: another data source, checked before any model loads
        transfer = read_inputs(req.transfer_inputs())
    # Tokenizers and the model's shape come before the weights: tokenisation, sampling and layer checks
    # refuse bad input before any weights load.
    checkpoints = open_checkpoints(req.base, req.tuned, backend=req.backend)
    req.suite.validate(checkpoints.n_layers)
    prepared = prepare_pairs(
        read, checkpoints.tokenizer, tuned_tokenizer=checkpoints.tuned_tokenizer, n_ctx=checkpoints.n_ctx, log=log
    )
    tokenized = prepared.pairs
    extra_pairs = None
    if transfer is not None:
        moved = prepare_pairs(transfer, checkpoints.tokenizer, like=prepared, log=log, label="transfer data")
        extra_pairs = {"transfer": moved.pairs}
    if "lasso" in req.suite.experiments and len(tokenized) < LASSO_CV_FOLDS:
        raise ConfigError(
            f"The LASSO experiment cross-validates over {LASSO_CV_FOLDS} folds, so it needs at least "
            f"{LASSO_CV_FOLDS} pairs; this run has {len(tokenized)}. Pass --n-pairs {LASSO_CV_FOLDS} or "
            "more, or leave lasso out of --experiments."
        )
    device = device_for(req.device, world.local_rank) if world.distributed else req.device  # cuda → cuda:LOCAL_RANK
    make_deterministic(device)
    pair = load_twins(
        req.base,
        req.tuned,
        device=device,
        dtype=req.dtype,
        checkpoints=checkpoints,
        backend=req.backend,
        device_map=req.device_map,
    )
    if threads is not None:
        threads.choose(pair.backends()["base"].device, pair.d_model, log)
    manifest = build_manifest(
        "run",
        req.config(),
        models=pair.describe(),
        argv=req.argv,
        device=device,
        data=prepared.data_record(),
    )
    if transfer is not None:
        assert req.suite.transfer_data is not None and extra_pairs is not None  # both set where transfer is
        manifest["transfer_data"] = {
            "source": req.suite.transfer_data,
            **file_fingerprint(req.suite.transfer_data),
            "skips": transfer.report.to_dict(),
            "pair_ids": [t.pair_id for t in extra_pairs["transfer"]],
        }
    # Not part of the config (a run directory resumes with any number of processes): how it ran.
    manifest["distributed"] = world.describe()
    resume = old_manifest is not None and check_same_inputs(req, old_manifest, manifest)
    if world.is_main:  # the run directory is set up by rank 0 alone; the others wait at the barrier below
        req.out.mkdir(parents=True, exist_ok=True)
        for stale in req.out.glob("*.tmp"):  # a kill in the middle of writing an output leaves its temporary file
            stale.unlink()
        if resume:
            assert old_manifest is not None
            manifest["created"] = old_manifest.get("created", manifest["created"])
            manifest["resumed"] = [*old_manifest.get("resumed", []), now()]
            history = old_manifest.get("world_sizes", [old_manifest.get("distributed", {}).get("world_size", 1)])
            manifest["world_sizes"] = [*history, world.size]
        else:
            discard_results(req.out)
            manifest["world_sizes"] = [world.size]
        manifest["status"] = "running"
        write_json_atomic(req.out / "manifest.json", manifest)
        store = PartStore(req.out / "parts", world=world)
    world.barrier("run-directory-ready")
    if not world.is_main:
        store = PartStore(req.out / "parts", world=world)
    if resume:
        done = sorted(p.name for p in store.root.iterdir()) if store.root else []
        log(
            f"resuming the run in {req.out}: {len(done)} part(s) already done"
            if done
            else f"restarting the run in {req.out}: no part was finished"
        )
    engine = make_engine(req.engine, batch_size=req.batch_size) if req.engine == "fast" else make_engine(req.engine)
    if world.distributed:
        log(f"distributed: {world.size} processes ({world.backend}); each computes its share of every stage's parts")
    # one progress display per stage and a line when it is done, however many passes the ranks need
    stages = Stages(progress, log, existing=store.names())
    try:
        result = run_passes(
            lambda: run_suite(
                pair,
                tokenized,
                engine,
                req.suite,
                progress=stages,
                log=log,
                store=store,
                pairs_per_part=req.pairs_per_part,
                extra_pairs=extra_pairs,
            ),
            store,
            world,
            log=stages.write,
        )
    finally:
        stages.close()
    result.summary["run"] = {
        "seed": req.suite.seed,
        "engine": req.engine,
        "base_fingerprint": pair.base_fingerprint,
        "tuned_fingerprint": pair.tuned_fingerprint,
    }
    result.extra["parts_loaded"] = list(store.loaded)
    result.extra["parts_computed"] = list(store.computed)
    result.extra["parts_received"] = list(store.received)
    result.extra["rank"], result.extra["world_size"] = world.rank, world.size
    work = engine_work(engine)
    if work is not None and world.distributed and not world.is_main:
        world.publish(f"engine-work/{world.rank}", json.dumps(work).encode("utf-8"))
    if world.is_main:
        write_run(req, result, manifest)
        manifest["status"] = "complete"
        manifest["finished"] = now()
        if work is not None:  # how it ran: the block-token work computed and its floor (fast.py), of every rank
            by_rank = [work]
            if world.distributed:
                others = list(range(1, world.size))
                got = world.receive([f"engine-work/{r}" for r in others], others)
                by_rank += [json.loads(got[f"engine-work/{r}"].decode("utf-8")) for r in others]
                manifest["engine_work_by_rank"] = by_rank
            manifest["engine_work"] = {
                stage: {k: sum(w[stage][k] for w in by_rank) for k in work[stage]} for stage in work
            }
        write_json_atomic(req.out / "manifest.json", manifest)
    return result


def engine_work(engine: Any) -> dict[str, dict[str, int]] | None:
    """The fast engine's block-token work in this process, per stage: computed, floor and forwards (None for an
    engine that does not count it)."""
    work = getattr(engine, "work_by_stage", None)
    if work is None:
        return None
    return {stage: {"computed": w.computed, "floor": w.floor, "forwards": w.forwards} for stage, w in work.items()}
