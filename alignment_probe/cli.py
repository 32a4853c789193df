"""``alignment-probe`` command line: argument parsing and printing only; the work lives elsewhere.

Exit codes: 0 success; 1 internal error (a bug: the traceback is printed); 2 bad input (data,
checkpoints, options, run directory: one paragraph says what to fix, ``--debug`` adds the
traceback); 3 a model produced NaN/inf (the message names pair, model and layer); 130 / 143
interrupted by Ctrl-C / SIGTERM (a ``run`` keeps what it finished: rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from alignment_probe.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, AlignmentProbeError
from alignment_probe.vocab import parse_layers as _layers

if TYPE_CHECKING:  # the types only: each subcommand imports what it runs
    from alignment_probe.prepare import InputSpec, InputsRead


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwind like Ctrl-C, so the run stops between two atomic writes."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated(signum)


def _add_model_data_args(p: argparse.ArgumentParser, n_pairs_default: str = "all") -> None:
    p.add_argument("--base", help="base model: hub name or local HF checkpoint directory (default: bundled organism)")
    p.add_argument("--tuned", help="tuned model: hub name or local HF checkpoint directory (default: bundled organism)")
    p.add_argument("--data", help="preference pairs: JSONL(.gz) file or dataset-hub name (default: bundled pairs)")
    p.add_argument("--data-dir", default=None, help="data_dir for a hub dataset, e.g. harmless-base")
    p.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    p.add_argument(
        "--n-pairs", type=int, default=None, help=f"number of pairs, sampled with --seed (default: {n_pairs_default})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and statistics (default: 0)")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per sequence; prompts are cut from the left")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "hooked", "bridge"],
        help="the TransformerLens line that runs the models: hooked (HookedTransformer, transformer-lens 3.x), "
        "bridge (TransformerBridge, 4.x) or auto (the installed one, the default)",
    )
    p.add_argument(
        "--device-map",
        default=None,
        metavar="auto|balanced|JSON|FILE",
        help="split each model over devices (bridge backend only): auto or balanced (accelerate places the blocks), "
        "a JSON object of module name to device, or a file holding one",
    )
    p.add_argument(
        "--chat-template",
        default="none",
        metavar="auto|none|FILE",
        help="render each dialogue in a chat template and score only the assistant reply's tokens: auto "
        "(the tokenizer's template, raw text if it has none), none (raw text, the default) or a Jinja "
        "template file",
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _add_experiment_options(run: argparse.ArgumentParser) -> None:
    """A flag per option the registered experiments declare (registry.Option): given, its text is parsed by the
    option in :func:`cmd_run`; left out, None (the preset's or the option's default)."""
    from alignment_probe.experiments import registry

    for option in registry.options().values():
        shown = ",".join(map(str, option.default)) if isinstance(option.default, tuple) else option.default
        about = (
            option.help if "default" in option.help or option.default is None else f"{option.help} (default: {shown})"
        )
        kwargs: dict[str, Any] = {"dest": option.name, "default": None, "help": about}
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind in ("int", "layer"):
            kwargs["type"] = int
        elif option.kind == "float":
            kwargs["type"] = float
        if option.kind != "bool":  # the flag's name, as argparse writes it for a flag whose dest is its own
            kwargs["metavar"] = option.metavar or option.cli_flag.lstrip("-").replace("-", "_").upper()
        run.add_argument(option.cli_flag, **kwargs)


def build_parser(*, experiment_options: bool = True) -> argparse.ArgumentParser:
    """The command line. ``experiment_options=False`` leaves out the experiments' own flags, whose registry
    imports every experiment (and torch): :func:`parse_args` reads a command that uses none without it."""
    parser = argparse.ArgumentParser(prog="alignment-probe", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score preference pairs with base and tuned: Δlogp and gain per pair")
    _add_model_data_args(score)
    score.add_argument("--out", required=True, help="output table, .csv or .parquet")

    from alignment_probe.experiments.presets import DEFAULT_PRESET, PRESETS  # plain data: nothing heavy

    run = sub.add_parser("run", help="run the paper's experiment suite and write a run directory with a report")
    _add_model_data_args(
        run, n_pairs_default="the --suite preset's: " + ", ".join(f"{p.n_pairs} for {p.name}" for p in PRESETS.values())
    )
    run.set_defaults(n_pairs=None, batch_size=32)
    run.add_argument(
        "--suite",
        choices=list(PRESETS),
        default=DEFAULT_PRESET,
        help="the default suite as a preset: "
        + "; ".join(f"{p.name}: {p.about}" for p in PRESETS.values())
        + f" (default: {DEFAULT_PRESET}). The options you give win; named --experiments run whole",
    )
    run.add_argument(
        "--experiments",
        default="all",
        help="comma-separated experiment names (default: all, the default suite; opt-in ones such as "
        "steer only when named, e.g. all,steer); see the README for the names",
    )
    run.add_argument("--hook", default="resid_post", help="hook point the experiments patch (default: resid_post)")
    run.add_argument("--scope", default="all", help="positions patched: all, prompt, completion, last_prompt")
    run.add_argument(
        "--extra-hooks",
        default="attn_out,mlp_out",
        help="E1 also at these hook points (default: attn_out,mlp_out, the components of E7; '' for none)",
    )
    run.add_argument("--extra-scopes", default="", help="E1 also with these scopes, e.g. last_prompt,completion")
    run.add_argument(
        "--layers",
        default=None,
        help="layers the per-layer experiments sweep, e.g. 0,4,8 or 0:30:3 (start:stop:step); default: all",
    )
    run.add_argument(
        "--pair-ids",
        default=None,
        help="file of pair ids to draw from (a JSON list, or ids separated by spaces/newlines), e.g. the "
        "held-out half a tuned model was not trained on",
    )
    if experiment_options:  # each experiment's own (Experiment.options), read from the registry
        _add_experiment_options(run)
    run.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for every CI")
    run.add_argument(
        "--engine",
        choices=["fast", "reference"],
        default="fast",
        help="fast (default) or reference (one run_with_hooks per pair, layer and sequence)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="discard the results in --out of a different configuration (or changed data or checkpoints) "
        "and start over; without it such a directory is refused. A run of the same configuration "
        "is always resumed",
    )
    run.add_argument(
        "--pairs-per-part",
        type=int,
        default=8,
        help="advanced: pairs per saved part; an interrupted run redoes at most one part per stage (default: 8)",
    )
    run.add_argument(
        "--procs",
        default="auto",
        help="processes on this machine, each on one CPU thread, sharing the run's parts: a number, or "
        "auto (default): one per CPU core for a narrow model (d_model < 512) on the CPU when each "
        "gets two parts of a stage, else 1. The numbers are the same whatever the count "
        "(torchrun does the same across machines: README, 'Many GPUs and nodes')",
    )
    run.add_argument("--out", required=True, help="run directory to write")

    gen = sub.add_parser(
        "generate",
        help="E12: decode prompts from base, tuned and base under interventions, "
        "side by side (generations.jsonl, generations.html)",
    )
    _add_model_data_args(gen)
    gen.add_argument(
        "--conditions",
        default="base,tuned",
        help="comma-separated: base, tuned, patch:HOOK@LAYER (tuned's activation on the same prefix, "
        "decoded in lockstep), window@START[:WIDTH] (a transplant of tuned blocks), "
        "steer@LAYER[:SCALE] (E11's per-class shift, fitted on --steer-pairs other pairs) "
        "(default: base,tuned)",
    )
    gen.add_argument(
        "--steer-pairs",
        type=int,
        default=32,
        help="steer@ conditions: pairs (other than the prompts) to fit the shift on (default: 32)",
    )
    gen.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default: 32)")
    gen.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: greedy (default); > 0: sampling seeded by --seed, the same draws for every condition",
    )
    gen.add_argument("--out", required=True, help="output folder: generations.jsonl, generations.html, manifest.json")

    organism = sub.add_parser("organism", help="the bundled model organisms")
    org_sub = organism.add_subparsers(dest="organism_command", required=True)
    build = org_sub.add_parser("build", help="rebuild the organisms deterministically from a seed")
    build.add_argument("--out", default="data", help="output folder (default: data)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--size", choices=["full", "small"], default="full", help="small: a seconds-long CI build")
    return parser


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


def cmd_organism(args: argparse.Namespace) -> int:
    # The build is a tool outside the runtime (pyproject's "build tools are leaves" contract): run it as its own
    # program, `python -m alignment_probe.organisms.build`, and read back the metrics file it writes.
    import json
    import subprocess

    out = Path(args.out)
    cmd = [sys.executable, "-m", "alignment_probe.organisms.build", "--out", str(out), "--seed", str(args.seed)]
    code = subprocess.call([*cmd, "--size", args.size], stdout=subprocess.DEVNULL)  # its progress log is on stderr
    if code != 0:
        print(
            f"alignment-probe: error: the organisms build exited with code {code} (its messages are above)",
            file=sys.stderr,
        )
        return code
    result = json.loads((out / "organisms" / "metrics.json").read_text(encoding="utf-8"))
    t = result["tuned"]
    print(
        f"built organisms in {args.out} (seed {args.seed}, {args.size}): held-out loss of base "
        f"{result['heldout_loss']['base_per_token_nats']:.3f} nats/token; tuned gain {t['mean_gain']:+.2f} "
        f"[{t['gain_ci95'][0]:+.2f}, {t['gain_ci95'][1]:+.2f}]; metrics in {Path(args.out) / 'organisms' / 'metrics.json'}"
    )
    return EXIT_OK


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments. A command that gives no experiment flag (and asks no help) is read without
    them, so it starts, and refuses bad input, before any experiment module (or torch) is imported; otherwise the
    full parser reads it, with a flag per option the experiments declare."""
    argv = list(argv)
    if "-h" not in argv and "--help" not in argv:
        args, unknown = build_parser(experiment_options=False).parse_known_args(argv)
        if not unknown:
            return args
    return build_parser().parse_args(argv)


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


if __name__ == "__main__":
    sys.exit(main())
