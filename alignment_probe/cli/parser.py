"""The ``alignment-probe`` parser: the models' and data's flags every command shares, each command's own, and a
flag per option the registered experiments declare (read without them when none is given, so bad input is
refused before torch loads)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

# the program's one-line description in --help (the first line of the package's docstring)
DESCRIPTION = "``alignment-probe`` command line: argument parsing and printing only; the work lives elsewhere."


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
    option in :func:`alignment_probe.cli.commands.cmd_run`; left out, None (the preset's or the option's default)."""
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
    parser = argparse.ArgumentParser(prog="alignment-probe", description=DESCRIPTION)
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
