"""A run directory: everything one ``alignment-probe run`` produced, and what is needed to repeat it.

::

    <out>/
      manifest.json   config, seed, versions, command line, model sources and fingerprints, the data
                      file's sha256, skips and truncation, pair ids, status and timestamps
      parts/          results as they complete (one file per stage and group of pairs); a restart
                      with the same command loads them and computes only what is missing
      scores.parquet  one row per pair: both models' log-probs, Δlogp, gain (see scoring.py)
      effects.parquet the tidy effects table of every experiment (see effects.py)
      token_effects.parquet  per completion token, for the per-token experiments (token_map; effects.py)
      lasso.parquet   per-layer LASSO coefficients, selection frequencies, probe R² (if run)
      summary.json    headline numbers and per-experiment results (see the README for the format)
      report.html     a self-contained report with every figure and the comparison with the paper

Every file is written atomically (a flushed temporary file, then a rename), so a run killed at any
moment leaves complete files only. **Resuming**: ``manifest.json`` is written before any compute; a
later run into the same directory with the same configuration, data file and checkpoints continues
from the parts (the final tables are assembled from the parts in a fixed order, so they are
byte-identical to an uninterrupted run's). A different configuration — or a changed data file or
checkpoint — is refused unless ``--force``, which discards the old results and starts over.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from alignment_probe.chat import describe as describe_chat
from alignment_probe.chat import resolve_chat_template
from alignment_probe.data import load_pairs, read_pair_ids, restrict_pairs

# Models narrower than this run on one CPU thread when the command line chooses (auto_threads), and as one process
# per core (run --procs auto, distributed.auto_processes): measured in bench/README.md.
from alignment_probe.distributed import ONE_THREAD_BELOW_D_MODEL
from alignment_probe.engine import make_engine
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.lasso import LASSO_CV_FOLDS
from alignment_probe.experiments.suite import DEFAULT_PAIRS_PER_PART, SuiteConfig, SuiteResult, run_suite
from alignment_probe.manifest import build_manifest, file_fingerprint, now, write_json_atomic
from alignment_probe.pair import load_twins, open_checkpoints
from alignment_probe.tables import PartStore, write_table
from alignment_probe.tokens import (
    cap_to_context,
    check_sampling_options,
    describe_truncation,
    sample_and_tokenize,
    truncation_stats,
)

OUTPUTS = (
    "scores.parquet",
    "effects.parquet",
    "token_effects.parquet",
    "lasso.parquet",
    "fits.json",
    "summary.json",
    "report.html",
)


@dataclass
class RunRequest:
    """What the user asked for: models, data, sampling, the suite's config and the engine."""

    base: str
    tuned: str
    data: str
    out: Path
    suite: SuiteConfig
    n_pairs: int | None = 80
    max_length: int = 512
    data_dir: str | None = None
    split: str = "test"
    device: str | None = "cpu"
    dtype: str = "float32"
    engine: str = "fast"
    batch_size: int = 32
    force: bool = False
    pairs_per_part: int = DEFAULT_PAIRS_PER_PART
    pair_ids: str | None = None  # a file of pair ids to draw from (e.g. a held-out half); None: every pair
    argv: Sequence[str] | None = field(default=None, repr=False)  # the command line, for the manifest
    chat_template: str = "none"  # --chat-template: none (raw text), auto or a template file (chat.py)
    backend: str = "auto"  # --backend: auto, hooked or bridge (backends/); the manifest's models record which ran
    device_map: Any = None  # --device-map (bridge only): auto, balanced or a module → device dict

    def config(self) -> dict[str, Any]:
        return {
            "seed": self.suite.seed,
            "base": self.base,
            "tuned": self.tuned,
            "data": self.data,
            "data_dir": self.data_dir,
            "split": self.split,
            "n_pairs": self.n_pairs,
            "max_length": self.max_length,
            "device": self.device,
            "dtype": self.dtype,
            "engine": self.engine,
            "batch_size": self.batch_size,
            "pairs_per_part": self.pairs_per_part,
            "pair_ids": self.pair_ids,
            "suite": self.suite.to_dict(),
            # recorded only when used, so run directories written before the option resume unchanged
            **({"chat_template": self.chat_template} if self.chat_template != "none" else {}),
            **({"device_map": self.device_map} if self.device_map is not None else {}),
        }

    def validate(self) -> None:
        """Option checks that need nothing loaded."""
        self.suite.validate()
        for name, value in (
            ("--batch-size", self.batch_size),
            ("--pairs-per-part", self.pairs_per_part),
            ("--n-boot", self.suite.n_boot),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}.")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; pass a folder for the run directory.")


# Options that change no number: a run directory may be reused across them.
_NEUTRAL = ("engine", "batch_size", "device")


def _old_manifest(out: Path) -> dict[str, Any] | None:
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConfigError(
            f"{path} is not valid JSON, so the run in {out} cannot be resumed; pass --force to start "
            "over there, or use a new --out directory."
        ) from None


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """The suite's options at the top level (they are options too), so a message names the option."""
    out = {k: v for k, v in config.items() if k != "suite"}
    out.update(config.get("suite") or {})
    return out


def check_run_dir(req: RunRequest) -> dict[str, Any] | None:
    """Refuse to mix results of different configurations in one directory (unless --force).

    Returns the existing manifest when the run can be resumed, else None (a new run).
    """
    old_manifest = _old_manifest(req.out)
    if old_manifest is None:
        return None
    # a suite option the old manifest lacks is newer than its run, which ran as the option's default does
    defaults = json.loads(json.dumps(SuiteConfig(experiments=req.suite.experiments).to_dict()))
    old = _flat(old_manifest.get("config", {}))
    old.update({k: v for k, v in defaults.items() if k not in old})
    new = _flat(json.loads(json.dumps(req.config())))
    changed = sorted(k for k in set(old) | set(new) if k not in _NEUTRAL and old.get(k) != new.get(k))
    if changed:
        if req.force:
            return None
        # a run of the other preset (or made before presets, as full) resumes with its --suite
        hint = f" (it is a --suite {old['preset']} run)" if "preset" in changed else ""
        raise ConfigError(
            f"{req.out} already holds a run with a different configuration ({', '.join(changed)} "
            f"changed){hint}. Use a new --out directory, rerun with the original options to resume it, "
            "or pass --force to discard its results and start over."
        )
    return old_manifest


def check_same_inputs(req: RunRequest, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Same configuration: are the data file, the checkpoints and the pairs also the same? True to
    resume; False to start over (--force); otherwise refuse."""
    changed = []
    if old.get("data", {}).get("sha256") != new["data"].get("sha256"):
        changed.append(f"the data file {req.data} (sha256)")
    if (old.get("transfer_data") or {}).get("sha256") != (new.get("transfer_data") or {}).get("sha256"):
        changed.append(f"the transfer data {req.suite.transfer_data} (sha256)")
    for role in ("base", "tuned"):
        if old.get("models", {}).get(role, {}).get("fingerprint") != new["models"][role]["fingerprint"]:
            changed.append(f"the {role} checkpoint {getattr(req, role)} (weights fingerprint)")
    if not changed and old.get("data", {}).get("pair_ids") != new["data"]["pair_ids"]:
        changed.append("the sampled pairs")
    if not changed:
        return True
    if req.force:
        return False
    raise ConfigError(
        f"{req.out} holds a run of the same configuration, but {' and '.join(changed)} changed since it "
        "started, so its results cannot be continued. Use a new --out directory, or pass --force to "
        "discard them and start over."
    )


def discard_results(out: Path) -> None:
    """--force: remove what an earlier run left (parts and outputs); nothing else in the folder."""
    shutil.rmtree(out / "parts", ignore_errors=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)


def write_run(req: RunRequest, result: SuiteResult, manifest: dict[str, Any]) -> None:
    write_table(result.scores, req.out / "scores.parquet")
    write_table(result.effects, req.out / "effects.parquet")
    if len(result.tokens):
        write_table(result.tokens, req.out / "token_effects.parquet")
    write_json_atomic(req.out / "fits.json", result.fits)  # what experiments fitted: the summary reads it
    if result.lasso is not None:
        from alignment_probe.experiments.lasso import lasso_table

        write_table(lasso_table(result.lasso), req.out / "lasso.parquet")
    write_json_atomic(req.out / "summary.json", result.summary)
    # the report as the run directory reads back (its per-token section decodes tokens with the manifest's
    # tokenizer), so ap.load_run(dir).regenerate() rewrites the same bytes
    from alignment_probe.rundir import load_run
    from alignment_probe.tables import write_bytes_atomic

    write_bytes_atomic(req.out / "report.html", load_run(req.out).report_html(result.summary).encode("utf-8"))


def make_deterministic(device: str | None) -> None:
    """On a GPU: deterministic cuBLAS workspaces and kernels (set before the first CUDA call).
    CPU kernels are deterministic for a fixed number of threads (recorded in the manifest)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class CpuThreads:
    """The command line's CPU thread count: one thread for a narrow model unless the user chose
    (``OMP_NUM_THREADS`` set, as torchrun does), otherwise torch's own; put back when the run ends, so a
    library caller's process keeps its setting."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and "OMP_NUM_THREADS" not in os.environ
        self.before: int | None = None

    def choose(self, device: Any, d_model: int, log: Callable[[str], None]) -> None:
        if not self.enabled or not str(device).startswith("cpu") or d_model >= ONE_THREAD_BELOW_D_MODEL:
            return
        import torch

        if torch.get_num_threads() > 1:
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)
            log(
                f"note: 1 CPU thread (d_model {d_model} is too narrow to gain from {self.before}; "
                "set OMP_NUM_THREADS to choose, or run more processes with --procs or torchrun)"
            )

    def restore(self) -> None:
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)
            self.before = None


def execute(
    req: RunRequest,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    loaded: tuple[Any, Any] | None = None,
    auto_threads: bool = False,
) -> SuiteResult:
    """Validate everything cheap first, then load, run (resuming from parts) and write the run directory.
    ``loaded``: the ``(pairs, report)`` of ``load_pairs(req.data, …)`` when the caller already read them
    (the CLI does, before importing anything heavy).

    Launched by torchrun, every process runs this: each loads the pair on its own device and
    computes its share of the parts (see :mod:`alignment_probe.distributed`); rank 0 alone logs,
    writes the manifest and the outputs. Alone, it is the plain single-process run. ``auto_threads`` (the
    command line): :class:`CpuThreads` chooses the CPU thread count for the run.
    """
    from alignment_probe.distributed import World

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
    world: Any,
    *,
    progress: bool,
    log: Callable[[str], None],
    loaded: tuple[Any, Any] | None = None,
    threads: CpuThreads | None = None,
) -> SuiteResult:
    """:func:`execute` in a given world (of one process, or this rank's share of a torchrun run)."""
    from alignment_probe.distributed import device_for, run_passes
    from alignment_probe.progress import Stages

    req.validate()
    old_manifest = check_run_dir(req)
    # The data and the checkpoints' files are read and checked before any model loads.
    pairs, report = loaded if loaded is not None else load_pairs(req.data, data_dir=req.data_dir, split=req.split)
    id_source: dict[str, Any] = {}
    if req.pair_ids is not None:
        pairs = restrict_pairs(pairs, read_pair_ids(req.pair_ids), source=req.data, ids_source=req.pair_ids)
        id_source = {
            "pair_ids_file": req.pair_ids,
            "pair_ids_file_sha256": file_fingerprint(req.pair_ids)["sha256"],
            "n_pairs_in_id_file": len(pairs),
        }
    check_sampling_options(req.n_pairs, req.max_length, len(pairs), req.data, report)
    transfer = None
    if req.suite.transfer_data is not None:  # E11's transfer pairs: another data source, checked before any model loads
        transfer = load_pairs(req.suite.transfer_data, split=req.split)
        check_sampling_options(req.n_pairs, req.max_length, len(transfer[0]), req.suite.transfer_data, transfer[1])
    # Tokenizers and the model's shape come before the weights: tokenisation, sampling and layer checks
    # refuse bad input before any weights load.
    checkpoints = open_checkpoints(req.base, req.tuned, backend=req.backend)
    req.suite.validate(checkpoints.n_layers)
    chat = resolve_chat_template(req.chat_template, checkpoints.tokenizer, checkpoints.tuned_tokenizer)
    max_length, note = cap_to_context(req.max_length, checkpoints.n_ctx)
    if note:
        log(f"note: {note}")
    tokenized = sample_and_tokenize(
        pairs,
        checkpoints.tokenizer,
        n_pairs=req.n_pairs,
        seed=req.suite.seed,
        max_length=max_length,
        report=report,
        chat=chat,
    )
    log(f"data: {report.summary()}; using {len(tokenized)} pairs")
    extra_pairs = None
    if transfer is not None:
        transfer_tokenized = sample_and_tokenize(
            transfer[0],
            checkpoints.tokenizer,
            n_pairs=req.n_pairs,
            seed=req.suite.seed,
            max_length=max_length,
            report=transfer[1],
            chat=chat,
        )
        log(f"transfer data: {transfer[1].summary()}; using {len(transfer_tokenized)} pairs")
        extra_pairs = {"transfer": transfer_tokenized}
    if "lasso" in req.suite.experiments and len(tokenized) < LASSO_CV_FOLDS:
        raise ConfigError(
            f"The LASSO experiment cross-validates over {LASSO_CV_FOLDS} folds, so it needs at least "
            f"{LASSO_CV_FOLDS} pairs; this run has {len(tokenized)}. Pass --n-pairs {LASSO_CV_FOLDS} or "
            "more, or leave lasso out of --experiments."
        )
    if report.n_skipped > report.n_read / 2:
        log("warning: more than half the pairs were skipped; check that the data has the format you expect.")
    truncation = describe_truncation(tokenized, max_length, report)
    if truncation:
        log(truncation)
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
        data={
            "source": req.data,
            **file_fingerprint(req.data),
            "skips": report.to_dict(),
            "max_length_used": max_length,
            **truncation_stats(tokenized),
            **id_source,
            "pair_ids": [t.pair_id for t in tokenized],
            "chat_template": describe_chat(chat, req.chat_template),
        },
    )
    if transfer is not None:
        assert req.suite.transfer_data is not None and extra_pairs is not None  # both set where transfer is
        manifest["transfer_data"] = {
            "source": req.suite.transfer_data,
            **file_fingerprint(req.suite.transfer_data),
            "skips": transfer[1].to_dict(),
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
