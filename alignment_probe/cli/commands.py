"""The ``score``, ``run`` and ``generate`` commands, and the option checks they share. Each reads and checks its
input before it imports torch or TransformerLens (the imports inside the functions), so bad input fails in a
second."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alignment_probe.errors import EXIT_OK
from alignment_probe.vocab import parse_layers as _layers

if TYPE_CHECKING:  # the types only: each subcommand imports what it runs
    from alignment_probe.prepare import InputSpec, InputsRead


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill in the bundled organisms and pairs where no model or data was given."""
    if args.base is None or args.tuned is None or args.data is None:
        from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path

        base, tuned = bundled_pair_paths()
        args.base = args.base or str(base)
        args.tuned = args.tuned or str(tuned)
        args.data = args.data or str(bundled_pairs_path())


def _input_spec(args: argparse.Namespace, n_pairs: int | None = None) -> InputSpec:
    """The options that choose the command's pairs, for the input pipeline (prepare.py)."""
    from alignment_probe.prepare import InputSpec

    return InputSpec(
        data=args.data,
        data_dir=args.data_dir,
        split=args.split,
        pair_ids=getattr(args, "pair_ids", None),
        n_pairs=args.n_pairs if n_pairs is None else n_pairs,
        max_length=args.max_length,
        seed=args.seed,
        chat_template=args.chat_template,
    )


def cmd_score(args: argparse.Namespace) -> int:
    from alignment_probe.prepare import read_inputs
    from alignment_probe.tables import check_table_path

    resolve_defaults(args)
    check_backend_args(args)
    out = check_table_path(args.out)
    if args.batch_size < 1:
        from alignment_probe.errors import ConfigError

        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    # Read and validate the data before importing torch or loading any model: bad input fails in a second.
    read = read_inputs(_input_spec(args))

    from alignment_probe.manifest import build_manifest, write_json_atomic
    from alignment_probe.numerics import check_scores
    from alignment_probe.pair import load_twins, open_checkpoints
    from alignment_probe.prepare import prepare_pairs
    from alignment_probe.scoring import score_pairs, summarize_scores
    from alignment_probe.tables import write_table

    checkpoints = open_checkpoints(
        args.base, args.tuned, backend=args.backend
    )  # tokenizers and context first: tokenise before any weights
    prepared = prepare_pairs(
        read,
        checkpoints.tokenizer,
        tuned_tokenizer=checkpoints.tuned_tokenizer,
        n_ctx=checkpoints.n_ctx,
        log=lambda s: print(s, file=sys.stderr),
        verb="scoring",
    )
    tokenized = prepared.pairs
    pair = load_twins(
        args.base,
        args.tuned,
        device=args.device,
        dtype=args.dtype,
        checkpoints=checkpoints,
        backend=args.backend,
        device_map=args.device_map,
    )
    table = score_pairs(pair, tokenized, batch_size=args.batch_size, progress=True)
    check_scores(pair, table, tokenized)
    write_table(table, out)
    config = {k: v for k, v in vars(args).items() if k not in ("debug", "argv")}
    manifest = build_manifest(
        "score", config, models=pair.describe(), argv=args.argv, device=args.device, data=prepared.data_record()
    )
    write_json_atomic(out.with_name(out.name + ".manifest.json"), manifest)
    summary = summarize_scores(table)
    print(
        f"wrote {out} ({summary['n_pairs']} pairs): mean Δlogp base {summary['base_delta_logp_mean']:+.3f}, "
        f"tuned {summary['tuned_delta_logp_mean']:+.3f}, gain {summary['gain_mean']:+.3f}"
    )
    return EXIT_OK


def _list(text: str | None, cast: Callable[[str], Any] = str, option: str = "") -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        from alignment_probe.errors import ConfigError

        raise ConfigError(
            f"{option} {text!r}: expected a comma-separated list of {cast.__name__}s, e.g. 4,8,12."
        ) from None


def check_backend_args(args: argparse.Namespace) -> None:
    """``--backend`` and ``--device-map`` checked (and parsed) before anything heavy loads: the backend installed,
    the device map well-formed and on a backend that can split a model."""
    from alignment_probe.backends import check_device_map, parse_device_map, resolve_backend

    args.backend = resolve_backend(args.backend)
    args.device_map = parse_device_map(args.device_map)
    check_device_map(args.backend, args.device_map)


def _procs(args: argparse.Namespace, loaded: InputsRead | None) -> int:
    """``--procs``: the number given, or auto's choice (processes.auto_processes), said on stderr when more than
    one; 1 in a rank that ``--procs`` started."""
    from alignment_probe.errors import ConfigError
    from alignment_probe.launch import SPAWNED
    from alignment_probe.processes import auto_processes

    if os.environ.get(SPAWNED):
        return 1
    if args.procs != "auto":
        try:
            procs = int(args.procs)
        except ValueError:
            procs = 0
        if procs < 1:
            raise ConfigError(f"--procs {args.procs!r}: give a whole number ≥ 1, or auto.")
        if procs > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise ConfigError(
                "--procs starts processes itself; under torchrun leave it out (torchrun's --nproc_per_node chooses)."
            )
        return procs
    available = len(loaded.pairs) if loaded is not None else args.n_pairs
    n_pairs = min(args.n_pairs, available) if args.n_pairs else available
    procs, why = auto_processes(
        device=args.device, base=args.base, n_pairs=n_pairs, pairs_per_part=max(1, args.pairs_per_part)
    )
    if procs > 1:
        print(f"note: {procs} processes of 1 CPU thread each ({why}; --procs 1 for one process)", file=sys.stderr)
    return procs


def cmd_run(args: argparse.Namespace) -> int:
    from alignment_probe.experiments.presets import PRESETS

    resolve_defaults(args)
    if args.n_pairs is None:  # the preset's (the process count below depends on it)
        args.n_pairs = PRESETS[args.suite].n_pairs
    from alignment_probe.prepare import precheck_inputs

    # the cheap checks, before torch or TransformerLens is imported, so bad input is refused in under a second
    check_backend_args(args)
    loaded = precheck_inputs(_input_spec(args), args.base, args.tuned)
    procs = _procs(args, loaded)
    if procs > 1:  # the same command, as that many ranks; this process imports nothing heavy and waits
        from alignment_probe.launch import spawn_cli

        spawn_cli(args.argv[1:], procs, threads=1, log=lambda s: print(s, file=sys.stderr))
        return EXIT_OK  # rank 0 has reported the run

    from alignment_probe.experiments import registry
    from alignment_probe.experiments.suite import preset_config
    from alignment_probe.run import RunRequest, execute

    experiments = _list(args.experiments) or ()  # SuiteConfig expands "all" to the default suite
    options: dict[str, Any] = {}
    for name, option in registry.options().items():
        value = getattr(args, name, None)  # absent: parsed without the experiments' flags, so none was given
        if value is None:
            continue
        options[name] = option.parse(value) if isinstance(value, str) and option.kind != "str" else value
        # e.g. --confirm K (E10): AtP's top K conditions confirmed by exact patching, so atp and atp_confirm run
        experiments = (*experiments, *(e for e in option.implies if e not in experiments))
    suite = preset_config(
        args.suite,
        experiments=experiments,
        hook=args.hook,
        scope=args.scope,
        extra_hooks=_list(args.extra_hooks) or (),
        extra_scopes=_list(args.extra_scopes) or (),
        layers=_layers(args.layers, "--layers"),
        seed=args.seed,
        n_boot=args.n_boot,
        **options,
    )
    req = RunRequest(
        base=args.base,
        tuned=args.tuned,
        data=args.data,
        out=Path(args.out),
        suite=suite,
        n_pairs=args.n_pairs,
        max_length=args.max_length,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        dtype=args.dtype,
        engine=args.engine,
        batch_size=args.batch_size,
        force=args.force,
        pairs_per_part=args.pairs_per_part,
        pair_ids=args.pair_ids,
        argv=args.argv,
        chat_template=args.chat_template,
        backend=args.backend,
        device_map=args.device_map,
    )
    result = execute(req, progress=True, log=lambda s: print(s, file=sys.stderr), loaded=loaded, auto_threads=True)
    if result.extra.get("rank", 0) != 0:  # one of several torchrun processes: rank 0 reports the run
        return EXIT_OK
    s = result.summary
    print(
        f"wrote {args.out}/ ({s['n_pairs']} pairs, {s['n_layers']} layers): gain {s['gain_mean']:+.3f} "
        f"[{s['gain_ci'][0]:+.3f}, {s['gain_ci'][1]:+.3f}]"
    )
    e1 = s["experiments"].get("patch_tuned_to_base")
    if e1:
        from alignment_probe.formatting import fmt_layers

        swept = e1.get("layers_swept")
        peak_set = (
            f"peak set layers {fmt_layers(e1['peak_set'])} ({len(e1['peak_set'])} of {swept} swept), "
            if e1.get("peak_set") is not None
            else ""
        )
        print(
            f"tuned→base patching: {peak_set}argmax layer {e1['peak_layer']} {e1['peak_layer_ci']}, "
            f"onset layer {e1['onset_layer']} {e1['onset_layer_ci']}"
        )
    tally = [v["verdict"] for v in s.get("verdicts") or []]
    if tally:
        print(
            "verdicts vs the paper: "
            + ", ".join(f"{tally.count(v)} {v}" for v in ("agrees", "differs", "inconclusive") if tally.count(v))
        )
    print(f"report: {Path(args.out) / 'report.html'}")
    return EXIT_OK


GENERATE_DEFAULT_PAIRS = 4


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from alignment_probe.experiments.steering import fit_steer_shifts
    from alignment_probe.generation import Generations, generate, parse_conditions
    from alignment_probe.manifest import build_manifest, write_json_atomic
    from alignment_probe.pair import load_twins, open_checkpoints
    from alignment_probe.prepare import prepare_pairs, read_inputs

    resolve_defaults(args)
    check_backend_args(args)
    from alignment_probe.errors import ConfigError

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be ≥ 0 (0: greedy), got {args.temperature}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for generations.jsonl and generations.html.")
    n_pairs = GENERATE_DEFAULT_PAIRS if args.n_pairs is None else args.n_pairs
    # data, checkpoints and the conditions (against the model's depth) are checked before any weights load
    read = read_inputs(_input_spec(args, n_pairs))
    checkpoints = open_checkpoints(args.base, args.tuned, backend=args.backend)
    conditions = [c.text for c in parse_conditions(args.conditions, checkpoints.n_layers)]
    steering = any(c.startswith("steer@") for c in conditions)
    if steering and args.steer_pairs < 2:
        raise ConfigError(f"--steer-pairs must be at least 2 to fit a shift, got {args.steer_pairs}.")
    want = n_pairs + (args.steer_pairs if steering else 0)  # the shift is fitted on pairs that are not prompts
    prepared = prepare_pairs(
        read,
        checkpoints.tokenizer,
        tuned_tokenizer=checkpoints.tuned_tokenizer,
        n_ctx=checkpoints.n_ctx,
        n_pairs=want,
        log=lambda s: print(s, file=sys.stderr),
        verb="drawing",
    )
    drawn = prepared.pairs
    order = np.random.default_rng(args.seed).permutation(len(drawn))
    tokenized = sorted((drawn[i] for i in order[:n_pairs]), key=lambda t: t.pair_id)
    fit_pairs = sorted((drawn[i] for i in order[n_pairs:]), key=lambda t: t.pair_id)
    twins = load_twins(
        args.base,
        args.tuned,
        device=args.device,
        dtype=args.dtype,
        checkpoints=checkpoints,
        backend=args.backend,
        device_map=args.device_map,
    )
    shifts = fit_steer_shifts(twins, conditions, fit_pairs) if steering else None
    rows = Generations(
        generate(
            twins,
            tokenized,
            conditions,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            shifts=shifts,
            progress=True,
        ),
        twins.tokenizer,
    )
    files = rows.write(out, title=f"Generations: {twins.base_source} vs {twins.tuned_source}")
    config = {k: v for k, v in vars(args).items() if k not in ("debug", "argv")}
    manifest = build_manifest(
        "generate",
        {**config, "n_pairs": n_pairs, "conditions": conditions},
        models=twins.describe(),
        argv=args.argv,
        device=args.device,
        data={
            **prepared.data_record(),
            "pair_ids": [t.pair_id for t in tokenized],
            "steer_fit_pair_ids": [t.pair_id for t in fit_pairs],
        },
    )
    write_json_atomic(out / "manifest.json", manifest)
    print(f"wrote {files['jsonl']} and {files['html']} ({len(tokenized)} prompts × {len(conditions)} conditions)")
    return EXIT_OK
